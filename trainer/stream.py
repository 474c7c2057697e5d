"""Data of any size: csv, tsv or jsonl shards streamed through tf.data, never held whole.

Chosen by ``--stream`` (``auto``: when --data_path is a glob or a folder of
shards). What the in-memory path (``trainer.data``) does with all rows in hand,
this module does as rows stream:

- **Shards**: ``--data_path`` is a file, a glob (``gs://b/part-*.csv.gz``) or a
  folder of files of one format; sorted by name. Each worker reads its share of
  them: shard ``i`` goes to worker ``i mod workers`` (what tf.data's
  ``AutoShardPolicy.FILE`` does; done by hand because the reader is Python, whose
  files tf.data cannot see), and fewer shards than workers is refused.
- **Rows**: every row is read by the rules ``trainer.tables`` sets (strict
  quoting, field counts, UTF-8, no byte-order mark, a text and a label), one
  shard at a time, ``_CYCLE`` shards interleaved. Only a shuffle buffer of rows
  is held.
- **Splits**: a row's split is a stable hash of its text (``bucket``): the same
  in every epoch, on every worker, and for a text repeated anywhere, so no test
  text is a training text. Validation holds out ``--validation_split`` of the
  buckets, at most about ``--max_validation_examples`` rows; a source without
  ``--test_data_path`` holds out ``--test_split`` as the test set.
- **Classes and vocabulary**: from a sample of ``--stream_sample_rows`` rows
  spread over up to ``_SAMPLE_SHARDS`` shards (``--classes`` names them instead;
  ``--vocab_file`` reuses a vocabulary); a row of a class the sample did not
  hold stops the run in one line.
- **Fingerprint**: each shard's name and CRC-32, read at C speed before
  training; a resume on changed shards is refused.

Epochs are one pass over a worker's shards; their length in steps is estimated
from the shards' bytes until the pass ends (``--max_steps`` bounds a run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from trainer import data, errors, splits, tables
from trainer.config import Config
from trainer.errors import UserError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
BUCKETS = 10_000  # A row's split: crc32(text) % BUCKETS against the splits' bucket ranges.
_CYCLE = 4  # Shards read at once by a worker: rows of a batch come from several files.
_SHUFFLE_ROWS = 8192  # Rows held for the training shuffle: memory is this, not the data.
_VECTORIZE_ROWS = 256  # Rows per TextVectorization call in the pipeline.
_CHUNK_ROWS = 256  # Rows per element a shard's Python reader hands tf.data.
_KEPT_VALIDATION_ROWS = 50_000  # Validation sets up to this size are kept after a pass.
_SAMPLE_SHARDS = 16  # Shards the sample is read from, spread over the list.
_SORTED_RUN = _SHUFFLE_ROWS  # A shard starting with this many rows of one class is sorted.
_PROGRESS_SECONDS = 10.0  # A long pass logs a progress line this often.
_CRC_CHUNK = 1 << 22
_SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}


def wanted(config: Config) -> bool:
    """Whether this run streams: --stream=on, or auto with a glob or a folder of shards.

    A folder of shards holds csv, tsv or jsonl files and no folders (a folder with
    folders is class folders).
    """
    if config.stream != "auto":
        return config.stream == "on"
    path = config.data_path
    if not path:
        return False
    if tables.has_glob(path):
        return True
    return tables.isdir(path) and bool(_shard_files(path)) and not tables.subfolders(path)


def _format_of(path: str) -> str | None:
    name = path.lower().removesuffix(".gz")
    return next((kind for suffix, kind in FORMATS.items() if name.endswith(suffix)), None)


def _shard_files(folder: str) -> list[str]:
    names = [n for n in tf.io.gfile.listdir(folder) if not n.startswith((".", "_"))]
    return sorted(f"{folder.rstrip('/')}/{n}" for n in names if _format_of(n))


def shard_paths(path: str, flag: str) -> tuple[list[str], str]:
    """The shards ``path`` names (a file, a glob or a folder) in name order, and their format.

    Raises:
      UserError: nothing matches, or the shards are not all one csv, tsv or jsonl format.
    """
    if tables.has_glob(path):
        paths = sorted(tf.io.gfile.glob(path))
    elif tables.isdir(path):
        paths = _shard_files(path)
    elif tables.exists(path):
        paths = [path]
    else:
        raise UserError(f"{flag}={path} does not exist.")
    if not paths:
        raise UserError(f"{flag}={path} names no .csv, .tsv or .jsonl files (optionally .gz).")
    kinds = {_format_of(p) for p in paths}
    if None in kinds or len(kinds) > 1:
        shown = ", ".join(os.path.basename(p) for p in paths[:3])
        raise UserError(f"{flag}={path}: streamed shards must all be .csv, all .tsv or all "
                        f".jsonl (optionally .gz); it names {shown}{', ...' * (len(paths) > 3)}.")
    return paths, kinds.pop()  # type: ignore[return-value]


def bucket(text: str) -> int:
    """A text's split bucket in [0, BUCKETS): stable across processes, runs and machines."""
    return zlib.crc32(text.encode("utf-8", "surrogatepass")) % BUCKETS


# --- Reading rows ---------------------------------------------------------------------------

def read_shard(path: str, kind: str, config: Config, limit: data.TextLimit,
               flag: str) -> Iterator[tuple[str, str, str] | str]:
    """Each row of one shard as ``(cut text, label, place)``; a skipped line as its reason.

    The rules of ``trainer.tables`` hold row by row: a row that breaks one stops
    the run with the line ``tables`` would give. A csv or tsv shard's header
    names its columns (each shard has its own, as ``split`` and Spark write
    them) and repeats of it are skipped; with 0-based column indices every row
    is data.
    """
    yield from (tables.jsonl_records(path, flag, config, limit) if kind == "jsonl" else
                tables.table_records(path, flag, config, limit, tables.DIALECTS[kind]))


@dataclasses.dataclass(frozen=True)
class Source:
    """What every worker knows of the streamed data before the first step.

    Attributes:
      train_paths: the training shards; test_paths: --test_data_path's (empty: held out).
      kind: csv, tsv or jsonl.
      class_names: in id order; label_ids: each label as written -> its id.
      test_buckets: buckets [0, test_buckets) are the test set (without test_paths).
      validation_buckets: the next ones are validation.
      train_rows: the estimated training rows of one pass (exact after the first).
      fingerprint: the shards' names and CRC-32s, hashed.
      rows: the estimated rows of --data_path; test_rows: of the test set.
      sample_labels: the class ids of the sample's training rows (--class_weight).
    """

    train_paths: tuple[str, ...]
    test_paths: tuple[str, ...]
    kind: str
    class_names: tuple[str, ...]
    label_ids: dict[str, int]
    test_buckets: int
    validation_buckets: int
    train_rows: int
    fingerprint: str
    rows: int = 0
    test_rows: int = 0
    sample_labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))

    @property
    def validation_rows(self) -> int:
        """The estimated validation rows of --data_path."""
        return round(self.rows * self.validation_buckets / BUCKETS)

    def split_of(self, bucket_: int, held_out_test: bool) -> int:
        """The split code (``_SPLIT_CODES``) of a row of ``bucket_``."""
        if held_out_test and bucket_ < self.test_buckets:
            return 2
        start = self.test_buckets if held_out_test else 0
        return 1 if bucket_ < start + self.validation_buckets else 0


@dataclasses.dataclass(frozen=True)
class Counted:
    """A streamed split's size (estimated from the shards' bytes) and its sample's class ids."""

    rows: int
    labels: np.ndarray

    def __len__(self) -> int:
        return self.rows


@dataclasses.dataclass(frozen=True)
class Splits:
    """What ``data.Splits`` says of in-memory data, for streamed data: sizes, classes, source."""

    train: Counted
    validation: Counted
    test: Counted
    source: str
    class_names: tuple[str, ...]
    class_weight: str
    fingerprint: str
    pretokenized: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def prepare(config: Config) -> tuple[Source, list[str]]:
    """Lists the shards, fingerprints them, and reads the sample: classes and split sizes.

    Returns:
      The Source, and the sample's training texts (for the vocabulary).

    Raises:
      UserError: no shards, a bad row in the sample, one class, or a class of
        --classes that the sample's labels do not name.
    """
    paths, kind = shard_paths(config.data_path, "--data_path")
    test_paths: list[str] = []
    if config.test_data_path:
        test_paths, test_kind = shard_paths(config.test_data_path, "--test_data_path")
        if test_kind != kind:
            raise UserError(f"--test_data_path={config.test_data_path} is {test_kind}, "
                            f"--data_path={config.data_path} is {kind}: give one format.")
    elif not config.test_split:
        raise UserError(f"--data_path={config.data_path} has no test split: give "
                        "--test_data_path, or --test_split > 0 to hold part of it out.")
    fingerprint = _fingerprint(paths + test_paths)
    limit = data.text_limit(config)
    sample = tables.Rows(config.data_path, "--data_path", limit,
                         label_from=f"--label_column={config.label_column}")
    read_bytes = _sample(paths, kind, config, limit, sample)
    if config.classes:
        names = tuple(name.strip() for name in config.classes.split(","))
        label_ids = {name: i for i, name in enumerate(names)}
        if len(set(names)) != len(names) or len(names) < 2 or "" in names:
            raise UserError(f"--classes={config.classes!r} must name two or more distinct "
                            "classes, comma-separated.")
        for label, place in zip(sample.labels, sample.places, strict=True):
            if tables.class_name(label, names) not in label_ids:
                raise UserError(f"--data_path={config.data_path}: {place}: label {label!r} is "
                                f"not one of --classes={config.classes}; add it there.")
    else:
        try:
            names, label_ids = tables.label_ids(sample)
        except UserError as error:
            if "single class" not in str(error):
                raise
            raise UserError(f"{error} It read the first {len(sample.texts)} rows of up to "
                            f"{_SAMPLE_SHARDS} shards: if the rows are sorted by label, name "
                            "the classes with --classes.") from None
    test_buckets = 0 if test_paths else round(config.test_split * BUCKETS)
    total = _uncompressed_bytes(paths)
    rows = max(1, round(len(sample.texts) * total / max(read_bytes, 1)))
    train_share = 1 - test_buckets / BUCKETS
    fraction = splits.validation_fraction(config, round(rows * train_share))
    validation_buckets = round(fraction * BUCKETS)
    if config.validation_split and not validation_buckets:
        validation_buckets = 1
    train_rows = round(rows * (train_share - validation_buckets / BUCKETS))
    source = Source(tuple(paths), tuple(test_paths), kind, names, label_ids, test_buckets,
                    validation_buckets, train_rows, fingerprint)
    held_out = not test_paths
    train = [i for i, text in enumerate(sample.texts)
             if not source.split_of(bucket(text), held_out)]
    texts = [sample.texts[i] for i in train]
    test_rows = (round(rows * _uncompressed_bytes(test_paths) / max(total, 1)) if test_paths
                 else round(rows * test_buckets / BUCKETS))
    source = dataclasses.replace(source, rows=rows, test_rows=test_rows, sample_labels=np.array(
        [label_ids.get(sample.labels[i], label_ids.get(tables.class_name(
            sample.labels[i], names), 0)) for i in train], np.int32))
    logging.info("data: streaming %d %s shard%s (%s) of about %d rows; %d classes (%s) from "
                 "%s; splits by text hash: test %s, validation %.2f%%, training about %d rows",
                 len(paths), kind, "s" * (len(paths) > 1), _bytes(total), rows, len(names),
                 ", ".join(names[:20]), "--classes" if config.classes else
                 f"a {len(sample.texts)}-row sample",
                 f"--test_data_path ({len(test_paths)} shards)" if test_paths else
                 f"{test_buckets / BUCKETS:.0%}", 100 * validation_buckets / BUCKETS, train_rows)
    return source, texts


def split_sizes(source: Source, config: Config) -> Splits:
    """The streamed splits' estimated sizes, for the log and metrics.json."""
    empty = np.zeros(0, np.int32)
    return Splits(Counted(source.train_rows, source.sample_labels),
                  Counted(source.validation_rows, empty),
                  Counted(source.test_rows, empty), source.kind, source.class_names,
                  config.class_weight, data_fingerprint(source))


def validation_is_small(source: Source) -> bool:
    """Whether the validation rows are few enough to keep in memory after their first pass.

    Each validation pass otherwise reads every shard to find its rows (at most
    about --max_validation_examples, 500 by default).
    """
    return source.validation_rows <= _KEPT_VALIDATION_ROWS


def data_fingerprint(source: Source) -> str:
    """What the manifest compares on resume: the shards' contents and the split's buckets."""
    return f"{source.fingerprint}-{source.test_buckets}-{source.validation_buckets}"


def _sample(paths: list[str], kind: str, config: Config, limit: data.TextLimit,
            sample: tables.Rows) -> int:
    """Reads up to --stream_sample_rows rows round-robin from up to _SAMPLE_SHARDS shards.

    Returns:
      The uncompressed bytes the sampled rows took (texts and labels, about).
    """
    step = max(1, len(paths) // _SAMPLE_SHARDS)
    readers = {p: read_shard(p, kind, config, limit, "--data_path")
               for p in paths[::step][:_SAMPLE_SHARDS]}
    runs: dict[str, tuple[str, int]] = {}  # Each shard's first label and how long it runs.
    size, progress = 0, Progress("reading the sample", config.stream_sample_rows)
    while readers and len(sample.texts) < config.stream_sample_rows:
        for path, reader in list(readers.items()):
            row = next(reader, None)
            if row is None:
                del readers[path]
            elif not isinstance(row, str):
                text, label, place = row
                sample.texts.append(text)
                sample.labels.append(label)
                sample.places.append(place)
                size += len(text.encode("utf-8", "surrogatepass")) + len(label) + 4
                first, run = runs.get(path, (label, 0))
                if run >= 0:  # Negative: the first run ended, at -run rows.
                    runs[path] = (first, run + 1) if label == first else (first, -run)
                progress.update(len(sample.texts))
    progress.done(len(sample.texts))
    if not sample.texts:
        raise UserError(f"--data_path={config.data_path} has no rows.")
    sorted_ = {path: (label, abs(run)) for path, (label, run) in runs.items()
               if abs(run) >= _SORTED_RUN}
    if sorted_ and len(set(sample.labels)) > 1:
        path, (label, run) = next(iter(sorted_.items()))
        logging.warning("data: the first %d rows read of %s are all of the class %r (%d of "
                        "%d sampled shards start so): rows sorted by class train badly when "
                        "streamed, whose shuffle holds %d rows; shuffle the rows, or keep a "
                        "file that fits in memory there (--stream=off)", run,
                        os.path.basename(path), label, len(sorted_), len(runs), _SHUFFLE_ROWS)
    return size


def _uncompressed_bytes(paths: list[str]) -> int:
    """The shards' bytes once gunzipped: a .gz's last 4 bytes hold its size mod 2**32."""
    total = 0
    for path in paths:
        size = tf.io.gfile.stat(path).length
        if path.lower().endswith(".gz") and size >= 4:
            with tf.io.gfile.GFile(path, "rb") as file:
                file.seek(size - 4)
                size = struct.unpack("<I", file.read(4))[0] or size
        total += size
    return total


def _fingerprint(paths: list[str]) -> str:
    """The shards' names and CRC-32s, hashed: a changed byte changes it."""
    digest = hashlib.sha256()
    total = sum(tf.io.gfile.stat(p).length for p in paths)
    progress, done = Progress("checksumming the shards", total, unit="bytes"), 0
    for path in paths:
        crc = 0
        with tf.io.gfile.GFile(path, "rb") as file:
            while chunk := file.read(_CRC_CHUNK):
                crc = zlib.crc32(chunk, crc)
                done += len(chunk)
                progress.update(done)
        digest.update(f"{os.path.basename(path)}\0{crc:08x}\0".encode())
    progress.done(done)
    return digest.hexdigest()[:16]


# --- The pipeline -------------------------------------------------------------------------

def worker_shards(paths: tuple[str, ...], worker: int, workers: int, flag: str) -> list[str]:
    """The shards ``worker`` of ``workers`` reads: every ``workers``-th, from its index.

    Raises:
      UserError: fewer shards than workers (a worker would read nothing).
    """
    if len(paths) < workers:
        raise UserError(f"{flag} names {len(paths)} shard{'s' * (len(paths) != 1)} for "
                        f"{workers} workers; each worker reads whole shards, so split the "
                        f"data into at least {workers} files (more balance the work better).")
    return list(paths[worker::workers])


def rows(source: Source, config: Config, split: str, paths: list[str],
         seed: int | None, worker: int = 0) -> tf.data.Dataset:
    """``(text, class id)`` of ``split``'s rows in ``paths``, streamed; shuffled with ``seed``.

    The training stream logs each shard's rows per split as it finishes it.
    """
    code = _SPLIT_CODES[split]
    held_out = not source.test_paths
    limit = data.text_limit(config)
    flag = "--test_data_path" if split == "test" and source.test_paths else "--data_path"

    def generate(path: bytes) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # Chunks of rows, not rows: each element crossing from Python costs about 0.3 ms.
        texts: list[str] = []
        labels: list[int] = []
        for text, label_id in split_rows(path.decode()):
            texts.append(text)
            labels.append(label_id)
            if len(texts) == _CHUNK_ROWS:
                yield data.object_array(texts), np.array(labels, np.int32)
                texts, labels = [], []
        if texts:
            yield data.object_array(texts), np.array(labels, np.int32)

    def split_rows(name: str) -> Iterator[tuple[str, int]]:
        counts: Counter = Counter()
        for row in read_shard(name, source.kind, config, limit, flag):
            if evaluation is not None:
                evaluation.row_read()
            if isinstance(row, str):
                counts[f"skipped ({row})"] += 1
                continue
            text, label, place = row
            label_id = source.label_ids.get(label)
            if label_id is None:
                label_id = source.label_ids.get(tables.class_name(label, source.class_names))
            if label_id is None:
                raise UserError(
                    f"{flag}={name}: {place}: label {label!r} is not one of the "
                    f"{len(source.class_names)} classes ({', '.join(source.class_names[:20])}) "
                    f"{'of --classes' if config.classes else 'in the sample'}; name every "
                    "class with --classes.")
            row_split = 2 if flag == "--test_data_path" else source.split_of(bucket(text),
                                                                             held_out)
            counts[("train", "validation", "test")[row_split]] += 1
            if row_split == code:
                yield text, label_id
        if split == "train":
            logging.info("data: worker %d read %s: %s", worker, os.path.basename(name),
                         ", ".join(f"{n} {what}" for what, n in counts.items()))

    # Each shard's rows come from a Python generator, a chunk per call of a tf.py_function
    # (Dataset.from_generator measured 3x slower training steps beside it on 2 cores).
    readers: dict[bytes, Iterator[tuple[np.ndarray, np.ndarray]]] = {}
    # An evaluation pass reads every row to find its own: it logs its progress, as training does.
    evaluation = None if split == "train" else _PassProgress(
        f"reading the {split} rows", source.rows * len(paths) // max(len(source.train_paths), 1),
        shards=len(paths))

    def next_chunk(path: tf.Tensor, index: tf.Tensor) -> tuple[np.ndarray, np.ndarray]:
        name = path.numpy()
        if int(index) == 0:  # A new pass over the shard: this dataset's iterator is new.
            if evaluation is not None:
                evaluation.shard_started()
            readers[name] = generate(name)
        try:
            chunk = next(readers[name], None)
        except UserError as error:  # Raised on tf.data's thread: kept for the exit line.
            errors.defer(error)
            raise
        if chunk is None:
            readers.pop(name, None)
            return data.object_array([]).astype(bytes), np.zeros(0, np.int32)
        return chunk

    def shard(path: tf.Tensor) -> tf.data.Dataset:
        def read(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            texts, labels = tf.py_function(next_chunk, [path, index], (tf.string, tf.int32))
            return tf.ensure_shape(texts, [None]), tf.ensure_shape(labels, [None])

        return (tf.data.Dataset.range(np.iinfo(np.int64).max).map(read)
                .take_while(lambda texts, labels: tf.size(labels) > 0))

    files = tf.data.Dataset.from_tensor_slices(paths)
    if seed is not None:
        files = files.shuffle(len(paths), seed=seed)
    dataset = files.interleave(shard, cycle_length=min(_CYCLE, len(paths)),
                               block_length=1).unbatch()
    if seed is not None:
        dataset = dataset.shuffle(_SHUFFLE_ROWS, seed=seed)
    return dataset


def batches(source: Source, config: Config, split: str, vectorizer: keras.layers.TextVectorization,
            *, batch_size: int, worker: int, workers: int, seed: int | None = None,
            drop_remainder: bool = False) -> tf.data.Dataset:
    """One pass of ``split`` for ``worker``: padded id batches of ``batch_size``, prefetched.

    With ``bucket_by_length``, each window of ``bucket_window_batches`` batches
    is sorted by length and its batches shuffled, as ``data.epoch_order`` does
    in memory.
    """
    own = source.test_paths if split == "test" and source.test_paths else source.train_paths
    flag = "--test_data_path" if own is source.test_paths and source.test_paths else "--data_path"
    paths = worker_shards(own, worker, workers, flag)
    if split == "train" and workers > 1:
        logging.info("data: worker %d of %d reads %d of %d shards: %s", worker, workers,
                     len(paths), len(own), ", ".join(os.path.basename(p) for p in paths[:10])
                     + ", ..." * (len(paths) > 10))
    width = None if config.bucket_by_length else config.max_len

    def vectorize(texts: tf.Tensor, labels: tf.Tensor) -> tuple[tf.RaggedTensor, tf.Tensor]:
        return tf.cast(data.truncate(vectorizer(texts), config), tf.int32), labels

    encoded = (rows(source, config, split, paths, seed, worker)
               .batch(_VECTORIZE_ROWS).map(vectorize).unbatch())
    if config.bucket_by_length:
        window = config.bucket_window_batches * batch_size

        def sorted_batches(ids: tf.RaggedTensor, labels: tf.Tensor) -> tf.data.Dataset:
            order = tf.argsort(ids.row_lengths(), stable=True)
            batched = tf.data.Dataset.from_tensor_slices(
                (tf.gather(ids, order), tf.gather(labels, order))).batch(
                    batch_size)
            return batched.shuffle(config.bucket_window_batches, seed=seed) if (
                seed is not None) else batched

        # The next window is read and vectorized while this one's batches train: without
        # the prefetch, each window's reading was a pause of its own between two steps.
        batched = encoded.ragged_batch(window).prefetch(1).flat_map(sorted_batches)
    else:
        batched = encoded.ragged_batch(batch_size)
    if drop_remainder:  # Not batch()'s: a static batch size traces a much slower step.
        batched = batched.filter(lambda ids, labels: tf.size(labels) == batch_size)
    out = (batched.map(lambda ids, labels: (data.pad(ids, config, width), labels))
            .prefetch(data.PREFETCH_BATCHES).with_options(_options()))
    return out


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True  # A resumed epoch skips exactly the batches it trained.
    options.autotune.enabled = False  # See data._options.
    options.threading.max_intra_op_parallelism = 1  # The cores are the step's (data._options).
    # Each worker reads its own shards (worker_shards): tf.data must not shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return options


def vocabulary(texts: list[str], config: Config) -> keras.layers.TextVectorization:
    """The vocabulary: --vocab_file's, or the sample's training texts' top --vocab_size words."""
    if config.vocab_file:
        words = read_vocab(config.vocab_file)
        vectorizer = data.new_vectorizer(config)
        vectorizer.set_vocabulary(words[2:config.vocab_size])  # Pads and OOV come first.
        logging.info("vocabulary: %d words from --vocab_file=%s", len(words), config.vocab_file)
        return vectorizer
    logging.info("building the %d-token vocabulary from %d sampled training rows",
                 config.vocab_size, len(texts))
    sample = data.Split(data.object_array(texts), np.zeros(len(texts), np.int32))
    return data.make_vectorizer(sample, config)


def read_vocab(path: str) -> list[str]:
    r"""A vocab.txt's tokens, one a line (``\n`` only), padding and ``[UNK]`` first.

    Raises:
      UserError: it cannot be read, is not UTF-8, or does not start as a run writes it.
    """
    try:
        with tf.io.gfile.GFile(path, "rb") as file:
            words = file.read().decode("utf-8").split("\n")
    except (tf.errors.OpError, UnicodeDecodeError) as error:
        raise UserError(f"--vocab_file={path} cannot be read ({data.one_line(error)}).") from None
    if words and words[-1] == "":
        words.pop()
    if len(words) < 3 or words[0] != "" or words[1] != "[UNK]":
        raise UserError(f"--vocab_file={path} is not a vocab.txt a run wrote: it starts with a "
                        "blank line (padding) and [UNK], then one token a line.")
    return words


# --- Progress -------------------------------------------------------------------------------

class Progress:
    """Logs ``what``'s progress every _PROGRESS_SECONDS: done, rate and time left."""

    def __init__(self, what: str, total: int, unit: str = "rows") -> None:
        self.what, self.total, self.unit = what, total, unit
        self.start = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < _PROGRESS_SECONDS:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        left = (self.total - done) / rate if rate and self.total > done else 0.0
        logging.info("data: %s: %s of %s%s, %s/s, about %.0f s left", self.what,
                     self._count(done), self._count(self.total), self._unit(),
                     self._count(rate), left)

    def done(self, done: int) -> None:
        seconds = time.monotonic() - self.start
        if seconds >= 1.0:
            logging.info("data: %s: %s%s in %.1f s", self.what, self._count(done),
                         self._unit(), seconds)

    def _unit(self) -> str:
        return "" if self.unit == "bytes" else f" {self.unit}"  # _count says GB, MB...

    def _count(self, value: float) -> str:
        return _bytes(value) if self.unit == "bytes" else f"{value:,.0f}"


@dataclasses.dataclass
class _PassProgress:
    """The progress of passes over ``shards`` shards, each a new ``Progress`` of ``total`` rows."""

    what: str
    total: int
    shards: int
    started: int = 0  # Shards started, over every pass.
    rows: int = 0  # Rows read this pass.
    progress: Progress | None = None

    def shard_started(self) -> None:
        if not self.started % self.shards:  # The pass's first shard: a new pass.
            self.rows, self.progress = 0, Progress(self.what, self.total)
        self.started += 1

    def row_read(self) -> None:
        self.rows += 1
        self.progress.update(self.rows)


def _bytes(value: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
