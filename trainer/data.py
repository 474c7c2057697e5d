"""IMDB reviews: the three sources, the subsets and splits, and the tf.data pipeline.

One batch's journey::

    load()         raw reviews + labels from aclImdb (folder or .tar.gz), tfds or imdb.npz,
                   cut to a class-balanced subset, validation held out of train
    make_vectorizer()  TextVectorization adapted on the training reviews only
    encode()       review -> token ids (truncated to max_len), once, then cache()
    batches()      per epoch: seeded shuffle, pad to max_len or bucket by length, batch
                   (global size), prefetch
"""

from __future__ import annotations

import dataclasses
import os
import re
import string
import tarfile
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf

from trainer.config import Config
from trainer.errors import UserError

# Token ids shared by every source: 0 pads, 1 is out-of-vocabulary (TextVectorization's
# convention). The Keras imdb.npz source keeps its own (1 start, 2 OOV), as the article does.
PAD_ID = 0
_NPZ_START_ID, _NPZ_OOV_ID, _NPZ_INDEX_FROM = 1, 2, 3

_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg)/([^/]+\.txt)$")
_LABELS = {"neg": 0, "pos": 1}
_LAYOUT_HINT = ("expected the aclImdb layout: aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt "
                "(the official aclImdb_v1.tar.gz or the labeled part of it)")
_ENCODE_BATCH = 1024  # Reviews vectorized per TextVectorization call while filling the cache.


@dataclasses.dataclass(frozen=True)
class Split:
    """Reviews of one split and their labels (1 = positive).

    Attributes:
      reviews: object array of review strings, or of int32 token-id arrays for a
        pre-tokenized source (keras_npz).
      labels: int32 array of 0 (negative) and 1 (positive), one per review.
    """

    reviews: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> Split:
        return Split(self.reviews[indices], self.labels[indices])


@dataclasses.dataclass(frozen=True)
class Splits:
    """The run's data: train, validation (possibly empty) and test."""

    train: Split
    validation: Split
    test: Split
    pretokenized: bool
    source: str


def load(config: Config) -> Splits:
    """Reads the configured source, then subsets and splits it reproducibly.

    Args:
      config: the run's Config (data_source, data_path, max_*_examples,
        validation_split, seed).

    Returns:
      Train, validation and test splits. Validation comes out of the training
      reviews; the test reviews are only ever used for the final evaluation.

    Raises:
      UserError: the source is missing, unreadable or not IMDB-shaped.
    """
    source = config.data_source_resolved
    if source == "aclimdb":
        train, test = read_aclimdb(config.data_path)
    elif source == "tfds":
        train, test = read_tfds(config.tfds_data_dir)
    else:
        train, test = read_keras_npz(config.data_path)
    rng = np.random.default_rng(config.seed)
    train = train.take(balanced_subset(train.labels, config.max_train_examples, rng))
    test = test.take(balanced_subset(test.labels, config.max_test_examples, rng))
    train_idx, val_idx = stratified_split(train.labels, config.validation_split, rng)
    return Splits(train=train.take(train_idx), validation=train.take(val_idx),
                  test=test, pretokenized=source == "keras_npz", source=source)


# --- Sources ------------------------------------------------------------------------------

def read_aclimdb(path: str) -> tuple[Split, Split]:
    """Reads the labeled reviews of an aclImdb folder or .tar.gz, in place.

    An archive is streamed from disk and nothing is extracted, so nothing is
    written anywhere; a member whose name would escape the archive's folder
    (``../x``, ``/etc/x``) is refused all the same, since it marks a hostile or
    broken archive. ``train/unsup`` (in the official archive) is skipped.

    Args:
      path: an ``aclImdb`` folder, a folder holding one, or a ``.tar.gz``.

    Returns:
      (train, test), each sorted by split, label and file name so that the
      folder and the archive give the same order.
    """
    if not path:
        raise UserError("--data_source=aclimdb needs --data_path: an aclImdb folder or .tar.gz.")
    if not os.path.exists(path):
        raise UserError(f"--data_path={path} does not exist; point it at an aclImdb folder or "
                        "the aclImdb_v1.tar.gz archive.")
    files = _read_folder(path) if os.path.isdir(path) else _read_archive(path)
    splits = {"train": [], "test": []}
    for name, split, label, data in sorted(files, key=lambda item: item[:3]):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise UserError(f"{path}: review {name} is not valid UTF-8 ({error.reason} at byte "
                            f"{error.start}); re-encode it as UTF-8 or delete it.") from None
        splits[split].append((text, _LABELS[label]))
    for split, items in splits.items():
        labels = {label for _, label in items}
        if labels != {0, 1}:
            raise UserError(f"--data_path={path} has no {split} reviews of both classes; "
                            f"{_LAYOUT_HINT}.")
    return tuple(  # type: ignore[return-value]
        Split(np.array([text for text, _ in items], dtype=object),
              np.array([label for _, label in items], dtype=np.int32))
        for items in (splits["train"], splits["test"]))


def _read_folder(root: str) -> Iterator[tuple[str, str, str, bytes]]:
    """Yields (name, split, label, bytes) for every labeled review under ``root``."""
    candidates = [root, os.path.join(root, "aclImdb")]
    base = next((c for c in candidates if os.path.isdir(os.path.join(c, "train"))), None)
    if base is None:
        raise UserError(f"--data_path={root} has no train/ folder; {_LAYOUT_HINT}.")
    for split in ("train", "test"):
        for label in _LABELS:
            folder = os.path.join(base, split, label)
            if not os.path.isdir(folder):
                continue
            for name in os.listdir(folder):
                if name.endswith(".txt"):
                    file_path = os.path.join(folder, name)
                    try:
                        with open(file_path, "rb") as f:
                            data = f.read()
                    except OSError as error:
                        raise UserError(f"cannot read review {file_path}: {error.strerror}; "
                                        "check its permissions.") from None
                    yield f"{split}/{label}/{name}", split, label, data


def _read_archive(path: str) -> Iterator[tuple[str, str, str, bytes]]:
    """Yields (name, split, label, bytes) for every labeled review in a tar archive."""
    try:
        archive = tarfile.open(path, "r:*")  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError) as error:
        raise UserError(f"--data_path={path} is not a readable .tar.gz archive ({error}); "
                        "download aclImdb_v1.tar.gz again or point at an unpacked "
                        "folder.") from None
    with archive:
        try:
            for member in archive:
                name = member.name
                parts = name.split("/")
                if name.startswith("/") or ".." in parts:
                    raise UserError(f"--data_path={path}: archive member {name!r} would be "
                                    "written outside its folder; refusing this archive.")
                match = _MEMBER.search(name)
                if not match or not member.isfile():
                    continue
                split, label, file_name = match.groups()
                data = archive.extractfile(member).read()  # type: ignore[union-attr]
                yield f"{split}/{label}/{file_name}", split, label, data
        except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as error:
            raise UserError(f"--data_path={path} is truncated or corrupt ({error}); "
                            "download it again.") from None


def read_tfds(data_dir: str) -> tuple[Split, Split]:
    """Reads ``imdb_reviews`` (plain_text) through tensorflow-datasets."""
    import tensorflow_datasets as tfds  # Slow to import; only this source needs it.

    try:
        train_ds, test_ds = tfds.load("imdb_reviews", split=["train", "test"],
                                      as_supervised=True, data_dir=data_dir or None)
    except Exception as error:  # tfds raises many types for "not there and not downloadable".
        raise UserError(
            f"tensorflow-datasets could not load imdb_reviews ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else ''}); download it with "
            "network access, set --tfds_data_dir, or pass --data_path=<aclImdb folder or "
            ".tar.gz>.") from None

    def to_split(ds: tf.data.Dataset) -> Split:
        texts, labels = [], []
        for text, label in tfds.as_numpy(ds):
            texts.append(text.decode("utf-8"))
            labels.append(label)
        return Split(np.array(texts, dtype=object), np.array(labels, dtype=np.int32))

    return to_split(train_ds), to_split(test_ds)


def read_keras_npz(path: str) -> tuple[Split, Split]:
    """Reads a Keras ``imdb.npz`` and encodes it as ``keras.datasets.imdb.load_data`` does.

    Ids become ``[1] + [rank + 3 ...]`` (start token, index_from=3), the article's
    encoding; ids at or past ``--vocab_size`` become 2 (OOV) in ``encode``.
    """
    if not path or not os.path.isfile(path):
        raise UserError(f"--data_path={path or '(empty)'} is not a file; --data_source=keras_npz "
                        "needs the path of a Keras imdb.npz.")
    try:
        with np.load(path, allow_pickle=True) as npz:
            arrays = {key: npz[key] for key in ("x_train", "y_train", "x_test", "y_test")}
    except KeyError as error:
        raise UserError(f"--data_path={path} lacks array {error}; a Keras imdb.npz has x_train, "
                        "y_train, x_test and y_test.") from None
    except (OSError, ValueError) as error:
        raise UserError(f"--data_path={path} is not a readable .npz file ({error}).") from None

    def to_split(xs: np.ndarray, ys: np.ndarray) -> Split:
        reviews = np.empty(len(xs), dtype=object)
        for i, x in enumerate(xs):
            reviews[i] = np.concatenate(
                [[_NPZ_START_ID], np.asarray(x, dtype=np.int64) + _NPZ_INDEX_FROM]
            ).astype(np.int32)
        return Split(reviews, np.asarray(ys, dtype=np.int32))

    return (to_split(arrays["x_train"], arrays["y_train"]),
            to_split(arrays["x_test"], arrays["y_test"]))


# --- Subsets and splits -------------------------------------------------------------------

def balanced_subset(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``size`` examples, half of each class, drawn with ``rng`` (0 = all).

    Examples:
      ``balanced_subset([0, 0, 0, 1, 1, 1], 4, rng)`` -> two indices from
      {0, 1, 2} and two from {3, 4, 5}, in ascending order.
    """
    if not size or size >= len(labels):
        return np.arange(len(labels))
    chosen = []
    for label, count in ((0, size - size // 2), (1, size // 2)):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.choice(members, size=min(count, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def stratified_split(labels: np.ndarray, fraction: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into (kept, held out), holding out ``fraction`` of each class."""
    held_out = []
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        count = round(fraction * len(members))
        held_out.append(rng.choice(members, size=count, replace=False))
    held = np.sort(np.concatenate(held_out)).astype(np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held)
    return kept, held


# --- Vectorization ------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="trainer")
def standardize(text: tf.Tensor) -> tf.Tensor:
    """Lower-cases and removes ``<br />`` line breaks and punctuation.

    Examples:
      ``"Great<br /><br />film, REALLY!"`` -> ``"great  film really"``.
    """
    text = tf.strings.lower(text)
    text = tf.strings.regex_replace(text, r"<br\s*/?>", " ")
    return tf.strings.regex_replace(text, f"[{re.escape(string.punctuation)}]", "")


def make_vectorizer(train: Split, config: Config) -> keras.layers.TextVectorization:
    """A TextVectorization whose vocabulary is the training reviews' ``vocab_size`` top words.

    Ids: 0 pads, 1 is out-of-vocabulary, 2.. are words by falling frequency.
    """
    vectorizer = keras.layers.TextVectorization(
        max_tokens=config.vocab_size, standardize=standardize, ragged=True)
    texts = tf.data.Dataset.from_tensor_slices(train.reviews.astype(str)).batch(_ENCODE_BATCH)
    vectorizer.adapt(texts)
    return vectorizer


def encode(split: Split, vectorizer: keras.layers.TextVectorization | None,
           config: Config) -> tf.data.Dataset:
    """Maps each review to int32 ids, truncated to ``max_len`` on the padding side, once.

    The result is cached in memory: every epoch after the first reads ids, not text.

    Args:
      split: reviews and labels.
      vectorizer: from ``make_vectorizer``; None for a pre-tokenized split.
      config: max_len, padding, vocab_size.

    Returns:
      A dataset of ``(ids [length <= max_len], label)`` pairs.
    """
    labels = split.labels.astype(np.int32)
    if vectorizer is None:
        lengths = np.array([len(r) for r in split.reviews], dtype=np.int64)
        flat = np.concatenate(list(split.reviews)) if len(split) else np.zeros(0, np.int32)
        flat = np.where(flat < config.vocab_size, flat, _NPZ_OOV_ID).astype(np.int32)
        ids = tf.RaggedTensor.from_row_lengths(flat, lengths)
        dataset = tf.data.Dataset.from_tensor_slices((truncate(ids, config), labels))
    else:
        dataset = (
            tf.data.Dataset.from_tensor_slices((split.reviews.astype(str), labels))
            .batch(_ENCODE_BATCH)
            .map(lambda text, label: (truncate(vectorizer(text), config), label),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .unbatch())
    dataset = dataset.map(lambda ids, label: (tf.cast(ids, tf.int32), label))
    # unbatch() forgets the count; restoring it lets shuffle and progress use it.
    return dataset.apply(tf.data.experimental.assert_cardinality(len(split))).cache()


def truncate(ids: tf.RaggedTensor, config: Config) -> tf.RaggedTensor:
    """Keeps the last max_len ids for pre padding (Keras' pad_sequences), else the first."""
    return ids[:, -config.max_len:] if config.padding == "pre" else ids[:, :config.max_len]


# --- Batches ------------------------------------------------------------------------------

def pad(ids: tf.Tensor, config: Config) -> tf.Tensor:
    """Pads one review's ids with PAD_ID to exactly ``max_len``, on the ``padding`` side.

    Examples:
      ``[5, 6, 7]`` with max_len 5 -> ``[0, 0, 5, 6, 7]`` (pre) or ``[5, 6, 7, 0, 0]`` (post).
    """
    missing = config.max_len - tf.shape(ids)[0]
    paddings = [[missing, 0]] if config.padding == "pre" else [[0, missing]]
    return tf.ensure_shape(tf.pad(ids, paddings, constant_values=PAD_ID), [config.max_len])


def batches(encoded: tf.data.Dataset, config: Config, *, global_batch_size: int,
            shuffle_seed: int | None = None, drop_remainder: bool = False) -> tf.data.Dataset:
    """One epoch of batches from ``encode``'s cached ids.

    Per-epoch work only: shuffle, pad (to ``max_len``, or with
    ``bucket_by_length`` to the longest review of each batch), batch, prefetch.
    Vectorization happened once, before ``encode``'s ``cache()``.

    Args:
      encoded: the cached ``(ids, label)`` dataset.
      config: max_len, padding, bucket_by_length, bucket_window_batches.
      global_batch_size: examples per step across all replicas.
      shuffle_seed: shuffle the whole split with this seed (a different seed
        per epoch gives a different, reproducible order); None keeps the order.
      drop_remainder: drop a last partial batch (training keeps every step the
        same size; evaluation keeps every example).

    Returns:
      ``(ids [batch, width] int32, labels [batch] int32)`` batches, prefetched;
      ``width`` is ``max_len``, or with ``bucket_by_length`` the batch's longest
      review. The cardinality is known when ``encoded``'s is.
    """
    dataset = encoded
    if shuffle_seed is not None:
        # The whole split fits in the buffer: a true shuffle, not a sliding window.
        dataset = dataset.shuffle(encoded.cardinality(), seed=shuffle_seed,
                                  reshuffle_each_iteration=False)
    if config.bucket_by_length:
        dataset = length_bucketed_batches(dataset, config, global_batch_size=global_batch_size,
                                          shuffle_seed=shuffle_seed,
                                          drop_remainder=drop_remainder)
        count = int(encoded.cardinality())
        if count >= 0:  # flat_map forgets the count; progress lines and len() use it.
            batch_count = (count // global_batch_size if drop_remainder
                           else -(-count // global_batch_size))
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(batch_count))
    else:
        dataset = dataset.map(lambda ids, label: (pad(ids, config), label),
                              num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(global_batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options())


def length_bucketed_batches(examples: tf.data.Dataset, config: Config, *,
                            global_batch_size: int, shuffle_seed: int | None = None,
                            drop_remainder: bool = False) -> tf.data.Dataset:
    """Batches of reviews of similar length, each padded only to its longest review.

    The (already shuffled) reviews are cut into windows of
    ``bucket_window_batches * global_batch_size``; each window is sorted by
    length and cut into batches, and the batches of a window are shuffled (with
    ``shuffle_seed``) so that short and long ones alternate through the epoch.
    Each review lands in a batch of random neighbours of about its length.

    Why not ``tf.data``'s ``bucket_by_sequence_length``: with fixed boundaries
    every bucket drops its own partial batch each epoch (on IMDB, 25-token
    buckets lose about 3% of the reviews per epoch and 10-token ones 8%), and
    the number of steps per epoch is unknown. Sorted windows drop fewer than
    one batch of random reviews, as padding to ``max_len`` does, and pad less:
    100-batch windows run about 1.01x the real tokens, against 1.05x for
    25-token buckets and 2.3x for padding to 500.

    The batching itself is ``padded_batch`` of reviews put in batch order, so
    that ``tf.distribute`` sees the batch size and splits each batch across
    replicas and workers (all then run the same width).

    Example, batch 2, a window of 2 batches, lengths ``[5, 1, 4, 2, 3]``: the
    window ``[5, 1, 4, 2]`` sorts to ``[1, 2 | 4, 5]``, giving batches of width
    2 and 5 in shuffled order; the last window ``[3]`` is a partial batch, kept
    for evaluation and dropped with ``drop_remainder``.

    Args:
      examples: ``(ids [length], label)`` pairs, in the order to batch them.
      config: padding, bucket_window_batches.
      global_batch_size: examples per batch.
      shuffle_seed: seeds the order of the batches within each window; None
        keeps them from shortest to longest.
      drop_remainder: make every batch exactly ``global_batch_size`` by leaving
        out the last window's leftover reviews, which are random after a shuffle.

    Returns:
      ``(ids [batch, width] int32, labels [batch] int32)`` batches.
    """
    window_size = config.bucket_window_batches * global_batch_size
    pre = config.padding == "pre"

    def window_in_batch_order(window_index: tf.Tensor, ids: tf.RaggedTensor,
                              labels: tf.Tensor) -> tf.data.Dataset:
        order = _batch_order(ids.row_lengths(), global_batch_size, drop_remainder,
                             None if shuffle_seed is None
                             else tf.stack([tf.constant(shuffle_seed, tf.int64), window_index]))

        def review(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            # Reversed for pre padding: padded_batch pads on the right, then the map
            # below turns each row around again, putting the padding first.
            return (ids[index][::-1] if pre else ids[index]), labels[index]

        return tf.data.Dataset.from_tensor_slices(order).map(review)

    batches = (examples.ragged_batch(window_size)
               .enumerate()
               .flat_map(lambda index, window: window_in_batch_order(index, *window))
               .padded_batch(global_batch_size, padded_shapes=([None], []),
                             padding_values=(PAD_ID, 0), drop_remainder=drop_remainder))
    if pre:
        batches = batches.map(lambda ids, labels: (tf.reverse(ids, axis=[1]), labels))
    return batches


def _batch_order(lengths: tf.Tensor, batch_size: int, drop_remainder: bool,
                 seed: tf.Tensor | None) -> tf.Tensor:
    """Indices of a window's reviews such that each run of ``batch_size`` is one batch.

    Reviews are sorted by length (stably: equal lengths stay in their random
    order), cut into batches, and the full batches shuffled with ``seed``; a
    partial batch stays last (or is left out with ``drop_remainder``).

    Examples:
      lengths ``[5, 1, 4, 2, 3]``, batch 2, no seed -> ``[1, 3, 4, 2, 0]``
      (lengths 1, 2 | 3, 4 | 5); with ``drop_remainder`` -> ``[1, 3, 4, 2]``.
    """
    by_length = tf.argsort(lengths, stable=True)
    full_batches = tf.size(by_length, out_type=tf.int64) // batch_size
    batch_order = tf.range(full_batches)
    if seed is not None:
        batch_order = tf.random.experimental.stateless_shuffle(batch_order, seed=seed)
    full = tf.reshape(by_length[:full_batches * batch_size], [-1, batch_size])
    order = tf.reshape(tf.gather(full, batch_order), [-1])
    if drop_remainder:
        return order
    return tf.concat([order, by_length[full_batches * batch_size:]], axis=0)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    # Seeded runs give the same batches in the same order, which resuming mid-epoch relies
    # on (loop.fit skips the steps already done); keeping order costs nothing measurable here.
    options.deterministic = True
    options.autotune.enabled = True
    # Input work is a little per batch; keep each tf.data op on one core so the two cores
    # stay with the model's step instead of splitting a small gather.
    options.threading.max_intra_op_parallelism = 1
    # Every worker builds the same dataset from in-memory data; shard it by element.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options
