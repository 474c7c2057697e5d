"""Where labeled texts come from: one reader per ``--data_source``, registered in ``READERS``.

Every reader takes the run's Config and a ``data.TextLimit`` and returns
``(train, test or None, class_names)``: Splits of texts (or token ids) and class
ids, and the names of the classes in id order. ``load`` calls ``read``, then
``splits.split`` for subsets and splits. Streamed shards (``--stream``) are
``trainer.stream``'s; ``resolve`` names their format. The readers are short: the IMDB
sources' work is in ``trainer.imdb`` (classes 0 negative, 1 positive), that of
tables and class folders in ``trainer.tables`` (columns, headers, class order).

A new CSV-like source is one reader function here, over ``tables.read_labeled``
and a rows function, plus its entry in ``READERS`` (and its name in
``config.DATA_SOURCES``, which tests/test_sources.py checks).
"""

from __future__ import annotations

import csv
from collections.abc import Callable

from trainer import data, imdb, splits, stream, tables
from trainer.config import Config
from trainer.errors import UserError

Reader = Callable[[Config, "data.TextLimit"], tuple["data.Split", "data.Split | None",
                                                    tuple[str, ...]]]
_TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")
_ACLIMDB_CLASSES = {"pos", "neg", "unsup"}


# --- Resolving auto -----------------------------------------------------------------------

def resolve(config: Config) -> str:
    """The source ``--data_source`` names, or for ``auto`` the one --data_path's kind needs.

    No path: tfds. A ``.csv``, ``.tsv`` or ``.jsonl`` (optionally ``.gz``): that
    format. ``.npz``: keras_npz. A ``.tar.gz`` (or another tar or a zip): aclimdb,
    whose reader explains what it cannot read. A folder: aclimdb if it (or its
    ``aclImdb/``) has ``train/`` holding only pos, neg and unsup; else folders.

    Raises:
      UserError: auto cannot tell what --data_path is.
    """
    if config.data_source != "auto":
        return config.data_source
    path = config.data_path
    if not path:
        return "tfds"
    name = path.lower().removesuffix(".gz") if path.lower().endswith(
        tuple(f"{s}.gz" for s in _TABLE_SUFFIXES)) else path.lower()
    for suffix, source in _TABLE_SUFFIXES.items():
        if name.endswith(suffix):
            return source
    if name.endswith(".npz"):
        return "keras_npz"
    if name.endswith(_ARCHIVE_SUFFIXES):
        return "aclimdb"
    if tables.has_glob(path) or (tables.isdir(path) and not _is_aclimdb(path)
                                 and stream.wanted(config)):
        return stream.shard_paths(path, "--data_path")[1]  # Shards of one table format.
    if tables.isdir(path):
        return "aclimdb" if _is_aclimdb(path) else "folders"
    what = "does not exist" if not tables.exists(path) else "is a file of no known kind"
    raise UserError(f"--data_path={path} {what}; give an aclImdb folder or .tar.gz, a .csv, "
                    ".tsv or .jsonl file (optionally .gz), a folder of class folders, or an "
                    ".npz, or name the format with --data_source.")


def _is_aclimdb(path: str) -> bool:
    for base in (path, f"{path.rstrip('/')}/aclImdb"):
        classes = (tables.subfolders(f"{base.rstrip('/')}/train")
                   if tables.isdir(f"{base}/train") else [])
        if classes and set(classes) <= _ACLIMDB_CLASSES and set(classes) & {"pos", "neg"}:
            return True
    return False


# --- The registry -------------------------------------------------------------------------

def _aclimdb(config: Config, limit: data.TextLimit) -> tuple[data.Split, data.Split, tuple]:
    train, test = imdb.read_aclimdb(config.data_path, limit)
    return train, test, imdb.CLASSES


def _tfds(config: Config, limit: data.TextLimit) -> tuple[data.Split, data.Split, tuple]:
    train, test = imdb.read_tfds(config.tfds_data_dir, limit)
    return train, test, imdb.CLASSES


def _keras_npz(config: Config, limit: data.TextLimit) -> tuple[data.Split, data.Split, tuple]:
    del limit  # Token ids: nothing to cut.
    train, test = imdb.read_keras_npz(config.data_path)
    return train, test, imdb.CLASSES


def read_csv(config: Config, limit: data.TextLimit) -> tuple[data.Split, data.Split | None,
                                                             tuple[str, ...]]:
    """A CSV file (RFC 4180: quoted fields may hold commas, quotes and newlines)."""
    return tables.read_labeled(config, lambda path, flag: tables.table_rows(
        path, flag, config, limit, csv.excel))


def read_tsv(config: Config, limit: data.TextLimit) -> tuple[data.Split, data.Split | None,
                                                             tuple[str, ...]]:
    """Tab-separated values: one row a line, fields split at tabs, quotes plain text."""
    return tables.read_labeled(config, lambda path, flag: tables.table_rows(
        path, flag, config, limit, csv.excel_tab, quoting=csv.QUOTE_NONE))


def read_jsonl(config: Config, limit: data.TextLimit) -> tuple[data.Split, data.Split | None,
                                                               tuple[str, ...]]:
    """JSON Lines: one JSON object a line; columns are its keys."""
    return tables.read_labeled(config, lambda path, flag: tables.jsonl_rows(
        path, flag, config, limit))


def read_folders(config: Config, limit: data.TextLimit) -> tuple[data.Split, data.Split | None,
                                                                 tuple[str, ...]]:
    """``DIR/<class>/*.txt``, or ``DIR/train/<class>/*.txt`` and ``DIR/test/<class>/*.txt``.

    The layout ``keras.utils.text_dataset_from_directory`` reads: the class is
    the folder's name, and texts in its subfolders are its too; files not
    ending in ``.txt`` are skipped and counted. ``tables.split_layout`` says
    which layout a folder has (and logs it).
    """
    path = config.data_path.rstrip("/")
    if not tables.split_layout(path):
        return tables.read_labeled(config, lambda p, flag: tables.folder_rows(p, flag, limit))
    # train/ and test/ (which may be missing: then --test_split holds part of train/ out).
    test = f"{path}/test" if tables.isdir(f"{path}/test") else ""
    if test and config.test_data_path:
        raise UserError(f"--data_path={path} has its own test/ folder, and --test_data_path="
                        f"{config.test_data_path} is given too; drop --test_data_path, or point "
                        f"--data_path at {path}/train.")
    return tables.read_labeled(
        config, lambda p, flag: tables.folder_rows(p, "--data_path" if p == test else flag,
                                                   limit),
        paths=(f"{path}/train", test or config.test_data_path))


READERS: dict[str, Reader] = {
    "aclimdb": _aclimdb,
    "tfds": _tfds,
    "keras_npz": _keras_npz,
    "csv": read_csv,
    "tsv": read_tsv,
    "jsonl": read_jsonl,
    "folders": read_folders,
}
_TEST_PATH_SOURCES = ("csv", "tsv", "jsonl", "folders")


def read(config: Config, limit: data.TextLimit) -> tuple[str, data.Split, data.Split | None,
                                                         tuple[str, ...]]:
    """(source, train, test or None, class_names) from the source the Config names.

    Raises:
      UserError: the source is unknown, or its data is missing or malformed.
    """
    source = resolve(config)
    reader = READERS.get(source)
    if reader is None:  # Config checks the name; a source added there but not here lands here.
        raise UserError(f"--data_source={source!r} has no reader; pick one of "
                        f"{', '.join(READERS)}.")
    if config.test_data_path and source not in _TEST_PATH_SOURCES:
        raise UserError(f"--test_data_path works with --data_source "
                        f"{', '.join(_TEST_PATH_SOURCES)}; {source} has its own test split.")
    train, test, class_names = reader(config, limit)
    return source, train, test, class_names


def load(config: Config) -> data.Splits:
    """Reads the configured source, then subsets and splits it reproducibly (``splits.split``).

    Returns:
      Train, validation and test splits. A source without a test split (and no
      --test_data_path) gives up a seeded, class-stratified ``test_split`` of
      its data as the test set; validation comes out of the rest.

    Raises:
      UserError: the source is unknown, missing, unreadable or malformed; a
        split has no rows of some class; or the test texts are mostly training texts.
    """
    source, train, test, class_names = read(config, data.text_limit(config))
    return splits.split(config, source, train, test, class_names)
