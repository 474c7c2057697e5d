"""Labeled texts: the subsets and splits, the vectorizer and the tf.data pipeline.

One batch's journey::

    load()         raw texts + class ids from the source trainer.sources picks (the
                   readers: trainer.imdb for an aclImdb folder or .tar.gz, tfds and
                   imdb.npz; trainer.tables for csv, tsv, jsonl and class folders),
                   each cut on read to what max_len tokens can use (``text_limit``);
                   without a test split a seeded, class-stratified test set held out;
                   cut to class-stratified subsets, validation held out of train
    make_vectorizer()  TextVectorization adapted on the training reviews only
    encode()       review -> token ids (truncated to max_len), once, kept in memory
    batches()      per epoch: the order (seeded shuffle, with bucket_by_length sorted by
                   length in windows), then per batch (global size) one gather, padded
                   to max_len or to its longest review; prefetch
"""

from __future__ import annotations

import codecs
import dataclasses
import re
import string
from typing import BinaryIO

import keras
import numpy as np
import tensorflow as tf

from trainer.config import Config
from trainer.errors import UserError

# Token ids shared by every source: 0 pads, 1 is out-of-vocabulary (TextVectorization's
# convention). The Keras imdb.npz source keeps its own (1 start, 2 OOV), as the article does:
# trainer.imdb writes the start id, encode turns ids past --vocab_size into this OOV id.
PAD_ID = 0
PREFETCH_BATCHES = 2  # Batches gathered ahead of the step (see _options: no autotuning).
_NPZ_OOV_ID = 2
_ENCODE_BATCH = 1024  # Reviews per tf.data batch: per TextVectorization call.

# Reviews are cut on read to what --max_len tokens can use, so that one huge review costs
# no more memory than a long one. A token is a word of the standardized text; 64 characters
# per token is far more than a word and the spaces and punctuation around it take.
_CHARS_PER_TOKEN = 64
# Never keep less than this: the longest real IMDB review is under 14,000 characters, so
# none of them is ever cut and the vocabulary still counts every word of every one.
_MIN_KEPT_CHARS = 32_768

READ_CHUNK = 1 << 20  # Bytes of a review read at a time: a huge one is never held whole.
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # How a UTF-16 file starts.


@dataclasses.dataclass(frozen=True)
class TextLimit:
    """How much of each review to keep on read.

    Attributes:
      chars: characters kept; 0 keeps the whole review.
      from_end: keep the last ``chars`` (``--truncating=pre`` keeps a review's
        last tokens) instead of the first.
    """

    chars: int = 0
    from_end: bool = False

    def cut(self, text: str) -> str:
        """``text``, or its first (last) ``chars`` characters if it is longer."""
        if not self.chars or len(text) <= self.chars:
            return text
        return text[-self.chars:] if self.from_end else text[:self.chars]


def text_limit(config: Config) -> TextLimit:
    """What --max_len tokens, truncated on the --truncating side, can use of a review."""
    return TextLimit(max(_MIN_KEPT_CHARS, config.max_len * _CHARS_PER_TOKEN),
                     from_end=config.truncating == "pre")


def object_array(items: list) -> np.ndarray:
    """A 1-D object array of ``items``, each kept as it is.

    ``np.array(items)`` would make strings one fixed width, the longest's.
    """
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def read_text(stream: BinaryIO, limit: TextLimit, path: str, name: str) -> str:
    """Decodes one review as UTF-8 a chunk at a time, keeping ``limit``'s characters.

    Every byte is checked, but at most a chunk and the kept characters are held,
    so a review of any size costs no more than a long one. A byte-order mark at
    the start is dropped: it is never part of a text.

    Raises:
      UserError: the review is not valid UTF-8 (the message names the byte).
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    kept, offset, start = "", 0, True
    while True:
        chunk = stream.read(READ_CHUNK)
        pending = len(decoder.getstate()[0])  # Bytes of a character cut by the last chunk.
        try:
            text = decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as error:
            if not offset and chunk[:2] in UTF16_BOMS:
                raise UserError(f"{path}: review {name} is UTF-16 (it starts with a UTF-16 "
                                "byte-order mark), not UTF-8; save it as UTF-8.") from None
            raise UserError(f"{path}: review {name} is not valid UTF-8 ({error.reason} at byte "
                            f"{offset - pending + error.start}); re-encode it as UTF-8 or "
                            "delete it.") from None
        offset += len(chunk)
        if text and start:
            text, start = text.removeprefix("\ufeff"), False
        if text:
            kept = limit.cut(kept + text)
        if not chunk:
            return kept


def one_line(error: BaseException) -> str:
    """The error's message on one line, at most 200 characters."""
    return " ".join(str(error).split())[:200] or type(error).__name__


@dataclasses.dataclass(frozen=True)
class Split:
    """Texts of one split and their class ids.

    Attributes:
      reviews: object array of text strings (never a fixed-width ``str``
        array, which would be as wide as the longest text), or of int32
        token-id arrays for a pre-tokenized source (keras_npz).
      labels: int32 class ids, one per text: indices into ``Splits.class_names``
        (IMDB: 0 negative, 1 positive).
    """

    reviews: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> Split:
        return Split(self.reviews[indices], self.labels[indices])


@dataclasses.dataclass(frozen=True)
class Splits:
    """The run's data: train, validation (possibly empty) and test.

    Attributes:
      class_names: the classes in id order (see ``trainer.sources``).
      class_weight: ``--class_weight``: "" or "balanced" (see ``class_weights``).
    """

    train: Split
    validation: Split
    test: Split
    pretokenized: bool
    source: str
    class_names: tuple[str, ...] = ("negative", "positive")
    class_weight: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def class_weights(splits: Splits) -> np.ndarray | None:
    """Per-class loss weights for ``--class_weight=balanced``, else None.

    ``n_train / (n_classes * count)`` per class, as scikit-learn's "balanced":
    each class then weighs the same in the loss; a class with no training
    example gets 0.

    Examples:
      Training ids ``[0, 0, 0, 1]`` -> ``[0.667, 2.0]``.
    """
    if splits.class_weight != "balanced":
        return None
    counts = np.bincount(splits.train.labels, minlength=splits.num_classes).astype(np.float64)
    weights = np.divide(len(splits.train.labels), splits.num_classes * counts,
                        out=np.zeros_like(counts), where=counts > 0)
    return weights.astype(np.float32)


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


def new_vectorizer(config: Config) -> keras.layers.TextVectorization:
    """An empty TextVectorization of ``vocab_size`` ids, ``standardize``d and ragged."""
    return keras.layers.TextVectorization(max_tokens=config.vocab_size, standardize=standardize,
                                          ragged=True)


def make_vectorizer(train: Split, config: Config) -> keras.layers.TextVectorization:
    """A TextVectorization whose vocabulary is the training reviews' ``vocab_size`` top words.

    Ids: 0 pads, 1 is out-of-vocabulary, 2.. are words by falling frequency.
    """
    vectorizer = new_vectorizer(config)
    texts = tf.data.Dataset.from_tensor_slices(_strings(train.reviews)).batch(_ENCODE_BATCH)
    vectorizer.adapt(texts)
    return vectorizer


def _strings(reviews: np.ndarray) -> tf.Tensor:
    """The reviews (an object array of str) as a tf.string tensor, converted in one call.

    ``reviews.astype(str)`` would make a fixed-width array, every row as wide as
    the longest review; an object array goes in as it is.
    """
    return tf.constant(reviews, tf.string)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A split's token ids, vectorized once and held in memory: what every epoch reads.

    One ragged tensor instead of a ``cache()``d dataset of reviews, so that an
    epoch's batches are one gather each, not one dataset element per review.

    Attributes:
      ids: ``[reviews, (length <= max_len)]`` int32, truncated on the --truncating side.
      labels: ``[reviews]`` int32.
    """

    ids: tf.RaggedTensor
    labels: tf.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def encode(split: Split, vectorizer: keras.layers.TextVectorization | None,
           config: Config) -> Encoded:
    """Maps each review to int32 ids, truncated to ``max_len`` on the --truncating side, once.

    Args:
      split: reviews and labels.
      vectorizer: from ``make_vectorizer``; None for a pre-tokenized split.
      config: max_len, truncating, vocab_size.

    Returns:
      The split's ids and labels, in memory.
    """
    with tf.device("/cpu:0"):  # tf.data reads it from host memory, even with a GPU.
        labels = tf.constant(split.labels.astype(np.int32))
        if vectorizer is None:
            lengths = np.array([len(r) for r in split.reviews], dtype=np.int64)
            flat = (np.concatenate(list(split.reviews)) if len(split)
                    else np.zeros(0, np.int32))
            flat = np.where(flat < config.vocab_size, flat, _NPZ_OOV_ID).astype(np.int32)
            ids = tf.RaggedTensor.from_row_lengths(flat, lengths)
        else:
            # Batches of strings, vectorized in parallel by tf.data, then joined.
            pieces = list(
                tf.data.Dataset.from_tensor_slices(_strings(split.reviews))
                .batch(_ENCODE_BATCH)
                .map(vectorizer, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
            ids = (tf.concat(pieces, axis=0) if pieces
                   else tf.RaggedTensor.from_row_lengths(tf.zeros([0], tf.int64),
                                                         tf.zeros([0], tf.int64)))
        return Encoded(tf.cast(truncate(ids, config), tf.int32), labels)


def truncate(ids: tf.RaggedTensor, config: Config) -> tf.RaggedTensor:
    """Keeps the last max_len ids for --truncating=pre (Keras' pad_sequences), else the first."""
    return ids[:, -config.max_len:] if config.truncating == "pre" else ids[:, :config.max_len]


# --- Batches ------------------------------------------------------------------------------

def pad(rows: tf.RaggedTensor, config: Config, width: int | None = None) -> tf.Tensor:
    """Pads a batch of reviews' ids with PAD_ID on the ``padding`` side.

    Args:
      rows: ``[batch, (length)]`` ids, already truncated to ``max_len``.
      config: padding.
      width: the padded width; None for the batch's longest review.

    Examples:
      ``[[5, 6, 7], [8]]``, width 4 -> ``[[0, 5, 6, 7], [0, 0, 0, 8]]`` (pre) or
      ``[[5, 6, 7, 0], [8, 0, 0, 0]]`` (post).
    """
    if config.padding == "pre":  # to_tensor pads on the right: turn the rows around and back.
        return tf.reverse(tf.reverse(rows, axis=[1]).to_tensor(PAD_ID, shape=[None, width]),
                          axis=[1])
    return rows.to_tensor(PAD_ID, shape=[None, width])


def batches(encoded: Encoded, config: Config, *, global_batch_size: int,
            shuffle_seed: int | None = None, drop_remainder: bool = False) -> tf.data.Dataset:
    """One epoch of batches from ``encode``'s ids.

    Per-epoch work only: the epoch's order (a seeded shuffle, and with
    ``bucket_by_length`` a sort by length within windows, see ``epoch_order``),
    then for each batch one gather of its reviews, padded to ``max_len`` (or
    with ``bucket_by_length`` to its longest review), and prefetch.
    Vectorization happened once, in ``encode``.

    The batch size comes from ``batch()`` on the indices, so ``tf.distribute``
    sees it and splits each batch across replicas and workers (all then run
    the same width).

    Args:
      encoded: a split's ids and labels.
      config: max_len, padding, bucket_by_length, bucket_window_batches.
      global_batch_size: examples per step across all replicas.
      shuffle_seed: shuffle the whole split with this seed (a different seed
        per epoch gives a different, reproducible order); None keeps the order.
      drop_remainder: drop a last partial batch (training keeps every step the
        same size; evaluation keeps every example).

    Returns:
      ``(ids [batch, width] int32, labels [batch] int32)`` batches, prefetched;
      ``width`` is ``max_len``, or with ``bucket_by_length`` the batch's longest
      review. The cardinality is known.
    """
    with tf.device("/cpu:0"):
        order = epoch_order(encoded.ids.row_lengths(), config,
                            global_batch_size=global_batch_size, shuffle_seed=shuffle_seed,
                            drop_remainder=drop_remainder)
    width = None if config.bucket_by_length else config.max_len

    def gather(indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return (pad(tf.gather(encoded.ids, indices), config, width),
                tf.gather(encoded.labels, indices))

    return (tf.data.Dataset.from_tensor_slices(order)
            .batch(global_batch_size, drop_remainder=drop_remainder)
            # One gather per batch, well under a millisecond: prefetch runs it ahead of the
            # step on its own thread; a parallel map would only add threads.
            .map(gather)
            .prefetch(PREFETCH_BATCHES)
            .with_options(_options()))


def epoch_order(lengths: tf.Tensor, config: Config, *, global_batch_size: int,
                shuffle_seed: int | None = None, drop_remainder: bool = False) -> tf.Tensor:
    """The indices of one epoch's reviews: each run of ``global_batch_size`` is a batch.

    The whole split is shuffled with ``shuffle_seed``. Without
    ``bucket_by_length`` that is the order. With it, the shuffled reviews are
    cut into windows of ``bucket_window_batches * global_batch_size``; each
    window is sorted by length (stably, so equal lengths stay in random order)
    and cut into batches, and the batches of a window are shuffled so that
    short and long ones alternate through the epoch (``_sorted_in_windows``).
    Each review lands in a batch of random neighbours of about its length. The
    last partial batch is last (its reviews are the longest of the last
    window), or left out with ``drop_remainder``.

    Example, batch 2, windows of 2 batches, no seed, lengths
    ``[5, 1, 4, 2, 3]``: the window ``[5, 1, 4, 2]`` sorts to lengths
    ``[1, 2 | 4, 5]`` and the last window is ``[3]``: ``[1, 3, 2, 0, 4]``, or
    ``[1, 3, 2, 0]`` with ``drop_remainder``.

    Args:
      lengths: ``[reviews]`` int64, each review's length.
      config: bucket_by_length, bucket_window_batches.
      global_batch_size: reviews per batch.
      shuffle_seed: seeds the shuffles; None keeps the reviews' order (and the
        batches of a window from shortest to longest).
      drop_remainder: leave out the last partial batch.

    Returns:
      ``[reviews]`` int64 indices, or ``[reviews // global_batch_size *
      global_batch_size]`` with ``drop_remainder``.
    """
    count = int(lengths.shape[0])
    order = tf.range(count, dtype=tf.int64)
    if shuffle_seed is not None:
        order = tf.random.experimental.stateless_shuffle(order, seed=[shuffle_seed, 0])
    if config.bucket_by_length:
        order = _sorted_in_windows(order, lengths, config.bucket_window_batches,
                                   global_batch_size, shuffle_seed)
    full = count // global_batch_size * global_batch_size
    return order[:full] if drop_remainder else order


def _sorted_in_windows(order: tf.Tensor, lengths: tf.Tensor, window_batches: int,
                       batch_size: int, shuffle_seed: int | None) -> tf.Tensor:
    """``order`` sorted by length within windows of batches, each window's batches shuffled.

    Why not ``tf.data``'s ``bucket_by_sequence_length``: with fixed boundaries
    every bucket drops its own partial batch each epoch (on IMDB, 25-token
    buckets lose about 3% of the reviews per epoch and 10-token ones 8%), and
    the number of steps per epoch is unknown. Sorted windows drop fewer than
    one batch of random reviews, as padding to ``max_len`` does, and pad less:
    100-batch windows run about 1.01x the real tokens, against 1.05x for
    25-token buckets and 2.3x for padding to 500.
    """
    count = int(lengths.shape[0])
    full = count // batch_size * batch_size
    window = tf.range(count, dtype=tf.int64) // (window_batches * batch_size)
    longest = tf.reduce_max(tf.concat([lengths, [0]], axis=0)) + 1
    order = tf.gather(order, tf.argsort(window * longest + tf.gather(lengths, order),
                                        stable=True))
    batch_order = tf.cast(window[:full:batch_size], tf.float64)
    if shuffle_seed is not None:  # A random place within the batch's own window.
        batch_order += tf.random.stateless_uniform(
            tf.shape(batch_order), seed=[shuffle_seed, 1], dtype=tf.float64)
    batched = tf.reshape(order[:full], [-1, batch_size])
    return tf.concat([tf.reshape(tf.gather(batched, tf.argsort(batch_order, stable=True)),
                                 [-1]), order[full:]], axis=0)


def _options() -> tf.data.Options:
    options = tf.data.Options()
    # Seeded runs give the same batches in the same order, which resuming mid-epoch relies
    # on (loop.fit skips the steps already done); keeping order costs nothing measurable here.
    options.deterministic = True
    # No autotuning: its background thread made deleting an epoch's exhausted iterator
    # wait 1-19 s at random (seen in every few epochs' end), and a fixed buffer keeps
    # up with a gather of well under a millisecond.
    options.autotune.enabled = False
    # Input work is a little per batch; keep each tf.data op on one core so the two cores
    # stay with the model's step instead of splitting a small gather.
    options.threading.max_intra_op_parallelism = 1
    # Every worker builds the same dataset from in-memory data; shard it by element.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options
