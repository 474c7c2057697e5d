"""The IMDB readers: an aclImdb folder or .tar.gz read in place, tfds imdb_reviews, imdb.npz.

The three sources of the Large Movie Review Dataset: an aclImdb folder or
.tar.gz (streamed, nothing extracted), tensorflow-datasets' imdb_reviews and a
Keras imdb.npz (pre-tokenized ids). Each takes a path (and a ``data.TextLimit``)
and returns ``(train, test)`` Splits whose class ids are ``CLASSES``' (0
negative, 1 positive); ``trainer.sources`` registers them as readers. A file
that is not what it should be ends in one ``UserError`` line. The reading
helpers every reader shares (``data.read_text``, ``data.one_line``) are in
``trainer.data``, beside ``TextLimit``.
"""

from __future__ import annotations

import lzma
import os
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from trainer.data import READ_CHUNK, Split, TextLimit, object_array, one_line, read_text
from trainer.errors import UserError

CLASSES = ("negative", "positive")
# The Keras imdb.npz keeps its own token ids, as the article does: 1 starts a review, word
# ranks start at 3 (2, out-of-vocabulary, is data.encode's).
_NPZ_START_ID, _NPZ_INDEX_FROM = 1, 3
_MEMBER = re.compile(r"(?:^|/)(train|test)/(pos|neg)/([^/]+\.txt)$")
_LABELS = {"neg": 0, "pos": 1}
_LAYOUT_HINT = ("expected the aclImdb layout: aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt "
                "(the official aclImdb_v1.tar.gz or the labeled part of it)")
_TFDS_BATCH = 1024  # Reviews per tfds read.
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # A zip's first bytes (an empty zip's too).
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_INT32_MAX = np.iinfo(np.int32).max
_WHOLE = TextLimit()  # The readers' default: every review kept whole.


def read_aclimdb(path: str, limit: TextLimit = _WHOLE) -> tuple[Split, Split]:
    """Reads the labeled reviews of an aclImdb folder or .tar.gz, in place.

    An archive is streamed from disk and nothing is extracted, so nothing is
    written anywhere; a member whose name would escape the archive's folder
    (``../x``, ``/etc/x``) is refused all the same, since it marks a hostile or
    broken archive. ``train/unsup`` (in the official archive) is skipped.

    Args:
      path: an ``aclImdb`` folder, a folder holding one, or a ``.tar.gz``.
      limit: how much of each review to keep (default: all of it).

    Returns:
      (train, test), each sorted by split, label and file name so that the
      folder and the archive give the same order.

    Raises:
      UserError: the path is missing, not an aclImdb folder or readable tar
        archive, lacks a class, or a review is not UTF-8; in one line.
    """
    if not path:
        raise UserError("--data_source=aclimdb needs --data_path: an aclImdb folder or .tar.gz.")
    if not os.path.exists(path):
        raise UserError(f"--data_path={path} does not exist; point it at an aclImdb folder or "
                        "the aclImdb_v1.tar.gz archive.")
    reader = _read_folder if os.path.isdir(path) else _read_archive
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for _, split, label, text in sorted(reader(path, limit), key=lambda item: item[:3]):
        splits[split].append((text, _LABELS[label]))
    for split, items in splits.items():
        labels = {label for _, label in items}
        if labels != {0, 1}:
            raise UserError(f"--data_path={path} has no {split} reviews of both classes; "
                            f"{_LAYOUT_HINT}.")
    return tuple(  # type: ignore[return-value]
        Split(object_array([text for text, _ in items]),
              np.array([label for _, label in items], dtype=np.int32))
        for items in (splits["train"], splits["test"]))


def _read_folder(root: str, limit: TextLimit) -> Iterator[tuple[str, str, str, str]]:
    """Yields (name, split, label, text) for every labeled review under ``root``."""
    candidates = [root, os.path.join(root, "aclImdb")]
    base = next((c for c in candidates if os.path.isdir(os.path.join(c, "train"))), None)
    if base is None:
        raise UserError(f"--data_path={root} has no train/ folder; {_LAYOUT_HINT}.")
    for split in ("train", "test"):
        for label in _LABELS:
            folder = os.path.join(base, split, label)
            if not os.path.isdir(folder):
                continue
            try:
                names = os.listdir(folder)
            except OSError as error:
                raise UserError(f"cannot list --data_path folder {folder}: {error.strerror}; "
                                "check its permissions.") from None
            for name in names:
                if name.endswith(".txt"):
                    file_path = os.path.join(folder, name)
                    key = f"{split}/{label}/{name}"
                    try:
                        with open(file_path, "rb") as f:
                            text = read_text(f, limit, root, key)
                    except OSError as error:
                        raise UserError(f"cannot read review {file_path}: {error.strerror}; "
                                        "check its permissions.") from None
                    yield key, split, label, text


# What reading a damaged tar archive raises: tarfile's own errors, and those of the
# gzip, bz2 and xz streams under it (a cut stream ends in EOFError).
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)


def _read_archive(path: str, limit: TextLimit) -> Iterator[tuple[str, str, str, str]]:
    """Yields (name, split, label, text) for every labeled review in a tar archive."""
    archive = _open_archive(path)
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
                key = f"{split}/{label}/{file_name}"
                stream = archive.extractfile(member)
                yield key, split, label, read_text(stream, limit, path, key)  # type: ignore[arg-type]
            _check_ended(archive, path)
        except (*_TAR_ERRORS, UnicodeDecodeError) as error:
            raise UserError(f"--data_path={path} is truncated or corrupt ({one_line(error)}); "
                            "download it again.") from None


def _check_ended(archive: tarfile.TarFile, path: str) -> None:
    """Raises UserError unless ``archive``'s members ended at its end-of-archive block.

    tarfile ends its member list quietly at a header that is cut short, missing
    or damaged, so a download cut between two reviews would pass for a smaller
    dataset. A whole archive ends in a block of zeros where the next header would be;
    the rest is read too, so that gzip, bzip2 or xz checks their own end and checksum.
    """
    stream = archive.fileobj
    stream.seek(archive.offset)  # type: ignore[union-attr]
    if stream.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:  # type: ignore[union-attr]
        raise UserError(f"--data_path={path} is truncated or corrupt (it stops after "
                        f"{len(archive.getmembers())} members, before the tar archive's end); "
                        "download it again.")
    while stream.read(READ_CHUNK):  # type: ignore[union-attr]
        pass


def _open_archive(path: str) -> tarfile.TarFile:
    """Opens a (compressed) tar archive for streaming, or says in one line why it is none."""
    hint = "download aclImdb_v1.tar.gz again or point at an unpacked aclImdb folder."
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as error:
        raise UserError(f"cannot read --data_path={path}: {error.strerror}.") from None
    if not magic:
        raise UserError(f"--data_path={path} is an empty file; {hint}")
    if magic in _ZIP_MAGIC:
        also = " (for a Keras imdb.npz add --data_source=keras_npz)" if path.endswith(
            ".npz") else ""
        raise UserError(f"--data_path={path} is a .zip, not a .tar.gz{also}; unzip it and pass "
                        "the aclImdb folder, or pass the aclImdb_v1.tar.gz archive.")
    try:
        return tarfile.open(path, "r:*")
    except tarfile.ReadError:  # Its message lists every compression tried, one per line.
        raise UserError(f"--data_path={path} is not a readable .tar.gz archive (nor a gzip, "
                        f"bzip2, xz or plain tar one); {hint}") from None
    except _TAR_ERRORS as error:
        raise UserError(f"--data_path={path} is not a readable .tar.gz archive "
                        f"({one_line(error)}); {hint}") from None



def read_tfds(data_dir: str, limit: TextLimit = _WHOLE) -> tuple[Split, Split]:
    """Reads ``imdb_reviews`` (plain_text) through tensorflow-datasets.

    Args:
      data_dir: tensorflow-datasets' data folder; empty for its default.
      limit: how much of each review to keep (default: all of it).
    """
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
        texts: list[str] = []
        labels = [np.zeros(0, np.int32)]
        try:
            # Batched: tf.data hands over arrays, not one Python element per review.
            for batch_texts, batch_labels in tfds.as_numpy(ds.batch(_TFDS_BATCH)):
                # tfds checksums its download; a stray byte need not stop the run.
                texts.extend(limit.cut(text.decode("utf-8", errors="replace"))
                             for text in batch_texts)
                labels.append(batch_labels)
        except tf.errors.OpError as error:  # A damaged record file of the prepared dataset.
            raise UserError(f"tensorflow-datasets' imdb_reviews files are damaged "
                            f"({one_line(error)}); delete imdb_reviews under "
                            f"{data_dir or '~/tensorflow_datasets'} and download it again.") \
                from None
        return Split(object_array(texts), np.concatenate(labels).astype(np.int32))

    return to_split(train_ds), to_split(test_ds)


def read_keras_npz(path: str) -> tuple[Split, Split]:
    """Reads a Keras ``imdb.npz`` and encodes it as ``keras.datasets.imdb.load_data`` does.

    Ids become ``[1] + [rank + 3 ...]`` (start token, index_from=3), the article's
    encoding; ids at or past ``--vocab_size`` become 2 (OOV) in ``encode``.

    Raises:
      UserError: the file is missing, not a (whole) .npz, lacks one of x_train,
        y_train, x_test and y_test, or their shapes or labels are not IMDB's.
    """
    if not path or not os.path.isfile(path):
        raise UserError(f"--data_path={path or '(empty)'} is not a file; --data_source=keras_npz "
                        "needs the path of a Keras imdb.npz.")
    if not zipfile.is_zipfile(path):  # Also what a download cut short looks like.
        raise UserError(f"--data_path={path} is not an .npz file (no zip directory: cut short, "
                        "or another format); download the Keras imdb.npz again.")
    arrays = _load_npz(path)
    return tuple(_npz_split(path, arrays, part)  # type: ignore[return-value]
                 for part in ("train", "test"))


def _load_npz(path: str) -> dict[str, np.ndarray]:
    """The four arrays of a Keras imdb.npz, or a one-line UserError saying what is wrong."""
    try:
        # Keras' imdb.npz holds its reviews as object arrays, which np.load unpickles.
        with np.load(path, allow_pickle=True) as npz:
            missing = [key for key in _NPZ_KEYS if key not in npz.files]
            if missing:
                raise UserError(f"--data_path={path} lacks array{'s' * (len(missing) > 1)} "
                                f"{', '.join(missing)} (it has {', '.join(npz.files) or 'none'});"
                                " a Keras imdb.npz has x_train, y_train, x_test and y_test.")
            return {key: npz[key] for key in _NPZ_KEYS}
    except UserError:
        raise
    except Exception as error:  # Damaged zip members or pickles raise almost any type.
        raise UserError(f"--data_path={path} is a damaged .npz ({type(error).__name__}: "
                        f"{one_line(error)}); download the Keras imdb.npz again.") from None


def _npz_split(path: str, arrays: dict[str, np.ndarray], part: str) -> Split:
    """One split of an imdb.npz in the article's encoding, its shapes and labels checked."""
    xs, ys = arrays[f"x_{part}"], arrays[f"y_{part}"]
    where = f"--data_path={path}"
    if xs.ndim not in (1, 2) or ys.ndim != 1 or len(xs) != len(ys):
        raise UserError(f"{where}: x_{part} has shape {xs.shape} and y_{part} {ys.shape}; a "
                        "Keras imdb.npz has one list of token ids and one label per review.")
    if ys.dtype.kind not in "biuf" or not np.isin(ys, (0, 1)).all():
        odd = next((y for y in ys.tolist() if y not in (0, 1)), ys.dtype)
        raise UserError(f"{where}: y_{part} holds labels other than 0 and 1 (e.g. {odd!r}).")
    reviews = np.empty(len(xs), dtype=object)
    for i, x in enumerate(xs):
        ids = _npz_ids(x)
        if ids is None:
            raise UserError(f"{where}: x_{part}[{i}] is not a list of token ids (whole numbers "
                            "from 0); a Keras imdb.npz has one list per review.")
        reviews[i] = np.concatenate([[_NPZ_START_ID], ids + _NPZ_INDEX_FROM]).astype(np.int32)
    return Split(reviews, ys.astype(np.int32))


def _npz_ids(review: object) -> np.ndarray | None:
    """A review's ids as int64, or None if they are not a flat list of word ranks."""
    try:
        ids = np.asarray(review)
    except ValueError:  # A ragged nested list.
        return None
    if ids.ndim != 1:
        return None
    if ids.size == 0:
        return np.zeros(0, np.int64)
    if ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() > _INT32_MAX - _NPZ_INDEX_FROM:
        return None
    return ids.astype(np.int64)

