"""Rows of labeled texts from a table (csv, tsv, jsonl; optionally gzipped) or class folders.

Local or gs:// paths, read through tf.io.gfile. ``read_labeled`` reads the
training rows (and the test rows) with one of ``table_rows``, ``jsonl_rows`` or
``folder_rows`` and maps their labels to class ids; ``trainer.sources`` has a
reader per format built on it.

Class ids follow the labels' sorted order: numerically if every label is an
integer (``"2" < "10"``), else lexicographically (``"neg" < "pos"``).

Tables name their columns with ``--text_column`` and ``--label_column``. For
csv and tsv the first row is a header when it holds a given column name. When
every given column is a 0-based index, the first row is a header exactly when
its label appears in no other row (a header's ``label`` is no class; a real
class of one example would be unusable anyway); the log says which it decided.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import io
import json
import re
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np
import tensorflow as tf
from absl import logging

from trainer import data
from trainer.config import Config
from trainer.data import READ_CHUNK, object_array, one_line, read_text
from trainer.errors import UserError

# surrogateescape turns each byte that is not UTF-8 into one of these, so a bad byte is
# found in the row that holds it instead of somewhere in a decoder's read-ahead.
_NOT_UTF8 = re.compile("[\udc80-\udcff]")
_GZIP_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError.
_MAX_FIELD_CHARS = 1 << 27  # csv's default, 131,072 characters, is less than a long text.


# --- Labels -------------------------------------------------------------------------------

@dataclasses.dataclass
class Rows:
    """One file's texts and label strings, and where each row came from.

    Attributes:
      texts: the (cut) texts.
      labels: the label strings, stripped.
      places: where each row is, for messages (``line 7``, ``sports/3.txt``).
      path: the file or folder.
      flag: the flag that named it (--data_path or --test_data_path).
    """

    texts: list[str]
    labels: list[str]
    places: list[str]
    path: str
    flag: str


def class_order(labels: list[str] | set[str]) -> tuple[str, ...]:
    """The class names in id order: numeric if every label is an integer, else sorted.

    Examples:
      ``{"10", "2", "1"}`` -> ``("1", "2", "10")``; ``{"b", "a"}`` -> ``("a", "b")``.
    """
    unique = set(labels)
    if unique and all(_is_int(label) for label in unique):
        return tuple(sorted(unique, key=int))
    return tuple(sorted(unique))


def read_labeled(config: Config, read_rows: Callable[[str, str], Rows],
                  paths: tuple[str, str] | None = None) -> tuple[data.Split, data.Split | None,
                                                                 tuple[str, ...]]:
    """Reads the training rows (and test rows) with ``read_rows`` and maps labels to ids.

    Args:
      config: data_path and test_data_path.
      read_rows: reads one file (path, flag) into Rows.
      paths: (train, test or "") to read instead of --data_path and --test_data_path.
    """
    train_path, test_path = paths or (config.data_path, config.test_data_path)
    train = read_rows(train_path, "--data_path")
    test = read_rows(test_path, "--test_data_path") if test_path else None
    train_labels = _canonical(train.labels)
    names = class_order(train_labels)
    if len(names) < 2:
        raise UserError(f"{train.flag}={train.path} has a single class "
                        f"({names[0] if names else 'none'!r}); a classifier needs at least "
                        "two (check --label_column).")
    ids = {name: i for i, name in enumerate(names)}
    if test is None:
        return _to_split(train.texts, train_labels, ids), None, names
    test_labels = _canonical(test.labels)
    for label, place in zip(test_labels, test.places, strict=True):
        if label not in ids:
            raise UserError(f"{test.flag}={test.path}: {place}: label {label!r} is not a "
                            f"label of --data_path={train.path} ({', '.join(names)}).")
    return _to_split(train.texts, train_labels, ids), _to_split(test.texts, test_labels, ids), names


def _canonical(labels: list[str]) -> list[str]:
    """Integer labels written alike (``"01"`` and ``"1"`` are one class, named ``"1"``)."""
    if labels and all(_is_int(label) for label in set(labels)):
        return [str(int(label)) for label in labels]
    return labels


def _to_split(texts: list[str], labels: list[str], ids: dict[str, int]) -> data.Split:
    """Texts and their (canonical) labels as a Split of class ids."""
    return data.Split(object_array(texts),
                      np.array([ids[label] for label in labels], np.int32))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# --- Files --------------------------------------------------------------------------------

def exists(path: str) -> bool:
    try:
        return tf.io.gfile.exists(path)
    except tf.errors.OpError:
        return False


def isdir(path: str) -> bool:
    try:
        return tf.io.gfile.isdir(path)
    except tf.errors.OpError:
        return False


def _listdir(path: str) -> list[str]:
    """The names in folder ``path`` (local or gs://), sorted, or a one-line UserError."""
    try:
        return sorted(tf.io.gfile.listdir(path))
    except tf.errors.OpError as error:
        raise UserError(f"cannot list folder {path}: {one_line(error)}.") from None


def subfolders(path: str) -> list[str]:
    """Names of the folders in ``path`` (hidden ones, like .ipynb_checkpoints, left out)."""
    return sorted(name.rstrip("/") for name in _listdir(path) if not name.startswith(".")
                  and isdir(f"{path.rstrip('/')}/{name.rstrip('/')}"))


def _open_binary(path: str, flag: str) -> BinaryIO:
    """``path`` (local or gs://) opened for reading, gunzipped if it ends in ``.gz``."""
    if not exists(path):
        raise UserError(f"{flag}={path} does not exist.")
    if isdir(path):
        raise UserError(f"{flag}={path} is a folder, not a file; for class folders use "
                        "--data_source=folders.")
    try:
        stream: BinaryIO = io.BufferedReader(_GFileRaw(tf.io.gfile.GFile(path, "rb")),
                                             READ_CHUNK)  # type: ignore[assignment]
    except tf.errors.OpError as error:
        raise UserError(f"cannot read {flag}={path}: {one_line(error)}.") from None
    if path.lower().endswith(".gz"):
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    return stream


class _GFileRaw(io.RawIOBase):
    """A tf.io.gfile.GFile as a raw binary stream, which io's text and buffer layers need."""

    def __init__(self, gfile: tf.io.gfile.GFile) -> None:
        super().__init__()
        self._gfile = gfile

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            chunk = self._gfile.read(len(buffer))
        except tf.errors.OpError as error:
            raise OSError(one_line(error)) from None
        buffer[:len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        self._gfile.close()
        super().close()


def _text_lines(path: str, flag: str, newline: str | None) -> io.TextIOWrapper:
    """``path`` as text: UTF-8 (a leading byte-order mark dropped), bad bytes kept as marks."""
    return io.TextIOWrapper(_open_binary(path, flag), encoding="utf-8-sig",  # type: ignore
                            errors="surrogateescape", newline=newline)


def _check_utf8(value: str, path: str, flag: str, place: str) -> None:
    match = _NOT_UTF8.search(value)
    if match:
        raise UserError(f"{flag}={path}: {place} is not valid UTF-8 (byte "
                        f"0x{ord(match.group()) - 0xdc00:02x}); re-encode the file as UTF-8.")


def _reading(path: str, flag: str) -> Callable[[BaseException], UserError]:
    """Turns an error met while reading ``path`` into one line."""

    def error(cause: BaseException) -> UserError:
        if isinstance(cause, UserError):
            return cause
        return UserError(f"{flag}={path} is truncated or corrupt, or unreadable "
                         f"({one_line(cause)}).")

    return error


def _log_counts(path: str, read: int, header: int, kept: int,
                skipped: collections.Counter) -> None:
    why = ", ".join(f"{count} {reason}" for reason, count in skipped.items()) or "none"
    logging.info("data: %s: %d rows read, %d header, %d kept, %d skipped (%s)", path, read,
                 header, kept, sum(skipped.values()), why)


# --- csv and tsv --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Columns:
    """Where the text and label are in a row: indices, and their names for messages."""

    text: tuple[int, ...]
    label: int
    names: tuple[str, ...]  # One per index in text + (label,).
    header: bool | None  # True: first row is a header; None: decide by its label.

    @property
    def needed(self) -> int:
        return max(*self.text, self.label) + 1


def _columns(config: Config, first: list[str], path: str, flag: str) -> _Columns:
    """Resolves --text_column and --label_column against the first row."""
    specs = [part.strip() for part in config.text_column.split(",")] + [
        config.label_column.strip()]
    header = [field.strip() for field in first]
    named = [spec in header for spec in specs]
    indices = []
    for spec, is_name in zip(specs, named, strict=True):
        if is_name:
            indices.append(header.index(spec))
        elif spec.isdigit():
            indices.append(int(spec))
        else:
            flag_name = "label_column" if spec == specs[-1] else "text_column"
            raise UserError(f"{flag}={path}: no column {spec!r} (--{flag_name}); its first row "
                            f"is {', '.join(repr(h) for h in header[:20])}. Name a header "
                            "column or give a 0-based index.")
    names = tuple(spec if is_name else f"column {spec}"
                  for spec, is_name in zip(specs, named, strict=True))
    return _Columns(tuple(indices[:-1]), indices[-1], names, True if any(named) else None)


def table_rows(path: str, flag: str, config: Config, limit: data.TextLimit,
                dialect: type[csv.Dialect], quoting: int | None = None) -> Rows:
    """Every row of a csv or tsv file, checked; see the module docstring for the header rule."""
    csv.field_size_limit(_MAX_FIELD_CHARS)
    rows = Rows([], [], [], path, flag)
    skipped: collections.Counter = collections.Counter()
    columns, first, first_place, read = None, None, "", 0
    fail = _reading(path, flag)
    options = {} if quoting is None else {"quoting": quoting}
    try:
        with _text_lines(path, flag, newline="") as stream:
            reader = csv.reader(stream, dialect, **options)
            line = 1
            for record in reader:
                place, line = f"line {line}", reader.line_num + 1
                if not record or record == [""]:
                    skipped["blank lines"] += 1
                    continue
                read += 1
                for index, value in enumerate(record):
                    _check_utf8(value, path, flag, f"{place}, column {index}")
                if columns is None:
                    columns = _columns(config, record, path, flag)
                    if columns.header:
                        continue
                    first, first_place = record, place
                    continue
                _add_row(rows, record, columns, place, limit)
    except (csv.Error, *_GZIP_ERRORS, UserError) as error:
        raise fail(error) from None
    if columns is None:
        raise UserError(f"{flag}={path} is empty: no rows.")
    header = columns.header or _first_is_header(first, columns, rows)
    if not header and first is not None:
        _add_row(rows, first, columns, first_place, limit, at=0)
    if columns.header is None:
        logging.info("data: %s: first row %s (its label %r %s in other rows)", path,
                     "taken as a header" if header else "is data",
                     first[columns.label] if first and len(first) > columns.label else "",
                     "appears nowhere" if header else "appears")
    if not rows.texts:
        raise UserError(f"{flag}={path} has a header but no rows.")
    _log_counts(path, read, int(header), len(rows.texts), skipped)
    return rows


def _first_is_header(first: list[str] | None, columns: _Columns, rows: Rows) -> bool:
    """With indices only: the first row is a header if its label is in no other row."""
    if first is None or len(first) <= columns.label:
        return False
    return first[columns.label].strip() not in set(rows.labels)


def _add_row(rows: Rows, record: list[str], columns: _Columns, place: str,
             limit: data.TextLimit, at: int | None = None) -> None:
    """Appends (or inserts ``at``) one row's text and label, or says what is wrong with it."""
    if len(record) < columns.needed:
        raise UserError(f"{rows.flag}={rows.path}: {place} has {len(record)} field"
                        f"{'s' * (len(record) != 1)}, fewer than the {columns.needed} needed "
                        f"for {', '.join(columns.names)}.")
    text = " ".join(record[i] for i in columns.text)
    label = record[columns.label].strip()
    _check_row(rows, text, label, place, columns.names)
    for values, value in ((rows.texts, limit.cut(text)), (rows.labels, label),
                          (rows.places, place)):
        values.insert(len(values) if at is None else at, value)


def _check_row(rows: Rows, text: str, label: str, place: str, names: tuple[str, ...]) -> None:
    if not text.strip():
        raise UserError(f"{rows.flag}={rows.path}: {place} has no text in "
                        f"{', '.join(names[:-1])}; fill it in or delete the row.")
    if not label:
        raise UserError(f"{rows.flag}={rows.path}: {place} has no label in {names[-1]}; fill "
                        "it in or delete the row.")


# --- jsonl --------------------------------------------------------------------------------

def jsonl_rows(path: str, flag: str, config: Config, limit: data.TextLimit) -> Rows:
    """Every line of a JSON Lines file: one object each; blank lines skipped and counted."""
    text_keys = [part.strip() for part in config.text_column.split(",")]
    label_key = config.label_column.strip()
    rows = Rows([], [], [], path, flag)
    skipped: collections.Counter = collections.Counter()
    read = 0
    try:
        with _text_lines(path, flag, newline=None) as stream:
            for number, line in enumerate(stream, start=1):
                place = f"line {number}"
                if not line.strip():
                    skipped["blank lines"] += 1
                    continue
                read += 1
                _check_utf8(line, path, flag, place)
                record = _json_object(line, rows, place)
                text = " ".join(_json_field(record, key, rows, place, "text")
                                for key in text_keys)
                label = _json_field(record, label_key, rows, place, "label").strip()
                _check_row(rows, text, label, place, (*text_keys, label_key))
                rows.texts.append(limit.cut(text))
                rows.labels.append(label)
                rows.places.append(place)
    except (*_GZIP_ERRORS, UserError) as error:
        raise _reading(path, flag)(error) from None
    if not read:
        raise UserError(f"{flag}={path} is empty: no JSON lines.")
    _log_counts(path, read, 0, len(rows.texts), skipped)
    return rows


def _json_object(line: str, rows: Rows, place: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"{rows.flag}={rows.path}: {place} is not valid JSON ({error.msg} at "
                        f"column {error.colno}).") from None
    if not isinstance(record, dict):
        raise UserError(f"{rows.flag}={rows.path}: {place} is a JSON {type(record).__name__}, "
                        "not an object; JSON Lines here hold one object a line.")
    return record


def _json_field(record: dict[str, Any], key: str, rows: Rows, place: str, what: str) -> str:
    """A text (string) or label (string or integer) value, or a one-line error."""
    flag = "--text_column" if what == "text" else "--label_column"
    if key not in record:
        keys = ", ".join(repr(k) for k in list(record)[:20]) or "none"
        raise UserError(f"{rows.flag}={rows.path}: {place} has no key {key!r} ({flag}); it has "
                        f"{keys}.")
    value = record[key]
    if what == "label" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None:
        return ""
    if not isinstance(value, str):
        kinds = "a string" if what == "text" else "a string or an integer"
        raise UserError(f"{rows.flag}={rows.path}: {place}: {key!r} is a JSON "
                        f"{type(value).__name__}; the {what} must be {kinds}.")
    return value


# --- Class folders ------------------------------------------------------------------------

def folder_rows(path: str, flag: str, limit: data.TextLimit) -> Rows:
    """Every ``<class>/*.txt`` under ``path``: the folder names the class."""
    path = path.rstrip("/")
    if not isdir(path):
        what = "is not a folder" if exists(path) else "does not exist"
        raise UserError(f"{flag}={path} {what}; --data_source=folders reads DIR/<class>/*.txt "
                        "or DIR/train/<class>/*.txt and DIR/test/<class>/*.txt.")
    classes = subfolders(path)
    if not classes:
        raise UserError(f"{flag}={path} has no class folders; --data_source=folders reads "
                        "DIR/<class>/*.txt, one folder per class.")
    rows = Rows([], [], [], path, flag)
    skipped: collections.Counter = collections.Counter()
    for label in classes:
        folder = f"{path}/{label}"
        names = _listdir(folder)
        texts = [name for name in names if name.endswith(".txt")]
        skipped["files not ending in .txt"] += sum(
            1 for name in names if not name.endswith(".txt") and not name.endswith("/"))
        if not texts:
            raise UserError(f"{flag}={path}: class folder {label}/ has no .txt files.")
        for name in texts:
            place = f"{label}/{name}"
            text = _read_file(f"{folder}/{name}", path, place, limit)
            _check_row(rows, text, label, place, ("the file", "its folder"))
            rows.texts.append(text)
            rows.labels.append(label)
            rows.places.append(place)
    skipped = collections.Counter({k: v for k, v in skipped.items() if v})
    _log_counts(path, len(rows.texts) + sum(skipped.values()), 0, len(rows.texts), skipped)
    return rows


def _read_file(file_path: str, root: str, place: str, limit: data.TextLimit) -> str:
    try:
        with tf.io.gfile.GFile(file_path, "rb") as stream:
            return read_text(stream, limit, root, place)  # type: ignore[arg-type]
    except tf.errors.OpError as error:
        raise UserError(f"cannot read {file_path}: {one_line(error)}.") from None

