"""Rows of labeled texts from a table (csv, tsv, jsonl; optionally gzipped) or class folders.

Local or gs:// paths, read through tf.io.gfile. ``read_labeled`` reads the
training rows (and the test rows) with one of ``table_rows``, ``jsonl_rows`` or
``folder_rows`` and maps their labels to class ids; ``trainer.sources`` has a
reader per format built on it.

The rules every reader keeps, here so that a new reader inherits them:

- A row is read exactly as its format defines it, or the run stops with one
  line naming the file, the line the problem starts on and what to do: a
  quoted field that never closes (or swallows lines that read as rows), a
  row with more or fewer fields than the header, a JSON line that is not one
  object. A line repeating the header (files joined with ``cat``) is skipped,
  counted as a header and logged.
- Every row goes through ``Rows.add``: a byte-order mark is never part of a
  text or label, and a row has a text and a label.
- Labels mean one thing (``read_labeled``): spellings of one number (``1``,
  ``01``, ``1.0``) are one class, named ``1``, when every label is a number,
  and refused when some are not; so are two labels that differ only in
  letter case, spacing or Unicode form (NFC and NFD); a label with a line break or control character
  is no class name; a header naming a used column twice (a JSON object
  holding a used key twice) is ambiguous, and a label column that is also a
  text column would hand the model its answers. A label column in which nearly
  every value is distinct (over 90%) is refused: it is the text column, or
  an id.

Class ids follow the labels' sorted order: numerically if every label is a
number (``"2" < "10"``), else lexicographically (``"neg" < "pos"``).

Tables name their columns with ``--text_column`` and ``--label_column``. For
csv and tsv the first row is a header when it holds a given column name. When
every given column is a 0-based index, the first row is a header exactly when
its label appears in no other row but its copies (a header's ``label`` is no
class; a real class of one example would be unusable anyway); the log says
which it decided.

Class folders are read as ``keras.utils.text_dataset_from_directory`` reads
them: a class folder's ``.txt`` files (any case), in it and in its subfolders,
are its texts; hidden files and folders (``.DS_Store``, AppleDouble ``._*``)
and ``__MACOSX`` are skipped and counted.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import decimal
import gzip
import io
import json
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Iterator
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
_BOM = "\ufeff"  # A byte-order mark: at a file's start, or mid-file where files were joined.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", re.ASCII)
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_DISTINCT = 0.9  # A label column with more distinct values than this share of rows is text.
_OS_FOLDERS = frozenset({"__MACOSX"})  # What macOS' zip leaves beside the files (hidden: .*).
_MAX_DEPTH = 32  # Folders nested deeper than this under a class folder: a link loop.


# --- Rows and labels ----------------------------------------------------------------------

@dataclasses.dataclass
class Rows:
    """One file's texts and label strings, and where each row came from.

    Attributes:
      path: the file or folder.
      flag: the flag that named it (--data_path or --test_data_path).
      limit: how much of each text to keep.
      label_from: what holds the labels, for messages (``--label_column=stars``);
        empty for class folders.
      texts: the (cut) texts.
      labels: the label strings, stripped.
      places: where each row is, for messages (``line 7``, ``sports/3.txt``).
    """

    path: str
    flag: str
    limit: data.TextLimit = dataclasses.field(default_factory=data.TextLimit)
    label_from: str = ""
    texts: list[str] = dataclasses.field(default_factory=list)
    labels: list[str] = dataclasses.field(default_factory=list)
    places: list[str] = dataclasses.field(default_factory=list)

    def add(self, text: str, label: str, place: str, names: tuple[str, ...] = ("text", "label"),
            at: int | None = None) -> None:
        """Checks one row and appends it (or inserts it ``at`` an index).

        Every reader adds its rows here, so every reader keeps its rules: no
        byte-order mark in a text or label, and a text and a label in every row.

        Args:
          text: the row's text, whole.
          label: its label as written.
          place: where the row is (``line 7``).
          names: the text's columns and then the label's, for messages.
          at: where to insert the row; None appends it.
        """
        text, label = self.check(text, label, place, names)
        for values, value in ((self.texts, text), (self.labels, label), (self.places, place)):
            values.insert(len(values) if at is None else at, value)

    def check(self, text: str, label: str, place: str,
              names: tuple[str, ...] = ("text", "label")) -> tuple[str, str]:
        """One row's (cut text, stripped label), or a UserError: what ``add`` keeps.

        The streamed reader (``trainer.stream``) checks its rows here and keeps none.
        """
        text, label = _without_bom(text), _without_bom(label).strip()
        if not text.strip():
            raise UserError(f"{self.flag}={self.path}: {place} has no text in "
                            f"{', '.join(names[:-1])}; fill it in or delete the row.")
        if not label:
            raise UserError(f"{self.flag}={self.path}: {place} has no label in {names[-1]}; "
                            "fill it in or delete the row.")
        return self.limit.cut(text), label

    def where(self, label: str) -> str:
        """The place of ``label``'s first row."""
        return self.places[self.labels.index(label)]


def _without_bom(text: str) -> str:
    return text.replace(_BOM, "") if _BOM in text else text


def class_order(labels: Iterable[str]) -> tuple[str, ...]:
    """The class names in id order: numeric if every label is a number, else sorted.

    Examples:
      ``{"10", "2", "1"}`` -> ``("1", "2", "10")``; ``{"b", "a"}`` -> ``("a", "b")``.
    """
    unique = set(labels)
    if unique and all(_NUMBER.fullmatch(label) for label in unique):
        return tuple(sorted(unique, key=decimal.Decimal))
    return tuple(sorted(unique))


def read_labeled(config: Config, read_rows: Callable[[str, str], Rows],
                 paths: tuple[str, str] | None = None) -> tuple[data.Split, data.Split | None,
                                                                tuple[str, ...]]:
    """Reads the training rows (and test rows) with ``read_rows`` and maps labels to ids.

    Args:
      config: data_path and test_data_path.
      read_rows: reads one file (path, flag) into Rows.
      paths: (train, test or "") to read instead of --data_path and --test_data_path.

    Raises:
      UserError: the labels do not name classes the module docstring's rules allow.
    """
    train_path, test_path = paths or (config.data_path, config.test_data_path)
    train = read_rows(train_path, "--data_path")
    test = read_rows(test_path, "--test_data_path") if test_path else None
    names, ids = label_ids(train)  # Each label as written -> its class's id.
    index = {name: i for i, name in enumerate(names)}
    if test is None:
        return _to_split(train, ids), None, names
    numeric = all(_NUMBER.fullmatch(name) for name in names)
    for label in dict.fromkeys(test.labels):
        name = _number_name(label) if numeric and _NUMBER.fullmatch(label) else label
        if name not in index:
            raise UserError(f"{test.flag}={test.path}: {test.where(label)}: label {label!r} is "
                            f"not a label of --data_path={train.path} ({', '.join(names[:20])}"
                            f"{', ...' * (len(names) > 20)}).{_unicode_hint(name, names)}")
        ids[label] = index[name]
    return _to_split(train, ids), _to_split(test, ids), names


def label_ids(rows: Rows) -> tuple[tuple[str, ...], dict[str, int]]:
    """The class names in id order and each label as written -> its id, by the label rules.

    Raises:
      UserError: as ``read_labeled`` for its training rows.
    """
    _check_label_column(rows)
    classes = _class_names(rows)
    names = class_order(set(classes.values()))
    if len(names) < 2:
        raise UserError(f"{rows.flag}={rows.path} has a single class "
                        f"({names[0] if names else 'none'!r}); a classifier needs at least "
                        "two (check --label_column).")
    index = {name: i for i, name in enumerate(names)}
    return names, {label: index[name] for label, name in classes.items()}


def class_name(label: str, names: tuple[str, ...]) -> str:
    """``label``'s class name among ``names``: a number's plain spelling if they are numbers."""
    if all(_NUMBER.fullmatch(name) for name in names) and _NUMBER.fullmatch(label):
        return _number_name(label)
    return label


def has_glob(path: str) -> bool:
    """Whether ``path`` is a glob pattern (``part-*.csv``) rather than one file or folder."""
    return any(char in path for char in "*?[")


def _class_names(rows: Rows) -> dict[str, str]:
    """Each distinct label -> the name of its class, or a UserError if labels are ambiguous.

    Spellings of one number are one class, named plainly (``01``, ``1.0`` -> ``1``),
    when every label is a number. Otherwise labels are names as written, and two
    that read as one (spellings of one number, or one name in two letter cases,
    spacings or Unicode forms) are refused: they would silently be two classes.
    """
    labels = dict.fromkeys(rows.labels)
    for label in labels:
        bad = next((c for c in label if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
        if bad is not None:
            raise UserError(f"{rows.flag}={rows.path}: {rows.where(label)}: label {label!r} "
                            f"holds a line break or control character (U+{ord(bad):04X}); a "
                            "class name is one line of text: fix the label, or check "
                            f"{rows.label_from or 'the folder name'}.")
    numbers = {label for label in labels if _NUMBER.fullmatch(label)}
    if len(numbers) == len(labels):
        return {label: _number_name(label) for label in labels}
    seen: dict[tuple[bool, str], str] = {}
    for label in labels:
        number = label in numbers
        key = (_number_name(label) if number
               else " ".join(unicodedata.normalize("NFC", label).casefold().split()))
        other = seen.setdefault((number, key), label)
        if other == label:
            continue
        text = next(x for x in labels if x not in numbers)
        why = (f"spell one number, but {text!r} is not a number" if number else
               "differ only in letter case or spacing" if unicodedata.normalize("NFC", label) !=
               unicodedata.normalize("NFC", other) else
               "look the same but are different Unicode (composed and decomposed characters)")
        raise UserError(f"{rows.flag}={rows.path}: labels {other!r} ({rows.where(other)}) and "
                        f"{label!r} ({rows.where(label)}) {why}, so they would be two classes; "
                        "write each class one way.")
    return {label: label for label in labels}


def _number_name(label: str) -> str:
    """A number's plain spelling: ``"01"``, ``"+1.0"`` -> ``"1"``; ``"0.50"`` -> ``"0.5"``."""
    value = decimal.Decimal(label)
    if value == value.to_integral_value():
        return str(int(value))
    return format(value, "f").rstrip("0")


def _unicode_hint(name: str, names: tuple[str, ...]) -> str:
    same = [n for n in names if unicodedata.normalize("NFC", n) ==
            unicodedata.normalize("NFC", name)]
    return (f" It looks like {same[0]!r} but is different Unicode (composed and decomposed "
            "characters); write it alike in both files." if same else "")


def _check_label_column(rows: Rows) -> None:
    """Refuses a label column in which nearly every value is distinct: a text (or id) column.

    Nearly: more than 9 in 10 rows hold a value of their own. A class needs two
    rows, one to train and one to test, so no such column can train; one with
    fewer distinct values but classes too small is refused by ``splits.split``,
    which knows the splits.
    """
    classes = len(set(rows.labels))
    if rows.label_from and classes > 2 and classes > _DISTINCT * len(rows.labels):
        raise UserError(f"{rows.flag}={rows.path}: {rows.label_from} has {classes} distinct "
                        f"values in {len(rows.labels)} rows; is it the text column? A class "
                        "needs rows to train and to test on: point --label_column at the "
                        "column of classes.")


def _to_split(rows: Rows, ids: dict[str, int]) -> data.Split:
    """Rows' texts and class ids (``ids`` maps each label as written)."""
    return data.Split(object_array(rows.texts),
                      np.array([ids[label] for label in rows.labels], np.int32))


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


def _left_behind(name: str) -> bool:
    """What an OS or a tool leaves beside the files: hidden names (.DS_Store, ._x), __MACOSX."""
    name = name.rstrip("/")
    return name.startswith(".") or name in _OS_FOLDERS


def subfolders(path: str) -> list[str]:
    """Names of the folders in ``path``, leaving out hidden ones and __MACOSX."""
    return sorted(name.rstrip("/") for name in _listdir(path) if not _left_behind(name)
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
    """``path`` as text: UTF-8 (a leading byte-order mark dropped), bad bytes kept as marks.

    Raises:
      UserError: the file starts with a UTF-16 byte-order mark (Excel's "Unicode text").
    """
    stream = _open_binary(path, flag)
    if stream.peek(2)[:2] in data.UTF16_BOMS:  # type: ignore[attr-defined]
        stream.close()
        raise UserError(f"{flag}={path} is UTF-16 (it starts with a UTF-16 byte-order mark), "
                        "not UTF-8; save it as UTF-8 (in Excel: CSV UTF-8).")
    return io.TextIOWrapper(stream, encoding="utf-8-sig",  # type: ignore[type-var]
                            errors="surrogateescape", newline=newline)


def _without_boms(lines: Iterable[str]) -> Iterator[str]:
    """The lines, each without a byte-order mark at its start (files joined with ``cat``)."""
    for line in lines:
        yield line[1:] if line.startswith(_BOM) else line


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
    for number, (spec, is_name) in enumerate(zip(specs, named, strict=True)):
        flag_name = "label_column" if number == len(specs) - 1 else "text_column"
        if is_name and header.count(spec) > 1:
            where = ", ".join(str(i) for i, name in enumerate(header) if name == spec)
            raise UserError(f"{flag}={path}: the header names {spec!r} {header.count(spec)} "
                            f"times (columns {where}), so --{flag_name}={spec} is ambiguous; "
                            "rename all but one, or give a 0-based index.")
        if is_name:
            indices.append(header.index(spec))
        elif spec.isdigit():
            indices.append(int(spec))
        else:
            raise UserError(f"{flag}={path}: no column {spec!r} (--{flag_name}); its first row "
                            f"is {', '.join(repr(h) for h in header[:20])}. Name a header "
                            "column or give a 0-based index.")
    names = tuple(spec if is_name else f"column {spec}"
                  for spec, is_name in zip(specs, named, strict=True))
    if indices[-1] in indices[:-1]:
        _refuse_label_in_text(config, path, flag)
    return _Columns(tuple(indices[:-1]), indices[-1], names, True if any(named) else None)


def _refuse_label_in_text(config: Config, path: str, flag: str) -> None:
    raise UserError(f"{flag}={path}: --label_column={config.label_column} is also one of "
                    f"--text_column={config.text_column}, so the model would read each "
                    "answer in its text; leave it out of --text_column.")


@dataclasses.dataclass
class _Table:
    """What reading a table keeps besides its rows: for the checks made at its end."""

    columns: _Columns
    first: list[str]
    first_place: str
    key: tuple[str, ...]  # The first row, stripped: a row equal to it repeats it.
    copies: list[int] = dataclasses.field(default_factory=list)  # Rows repeating it.
    repeats: list[str] = dataclasses.field(default_factory=list)  # Where the header repeats.
    spans: list[tuple[str, int, int, list[str]]] = dataclasses.field(default_factory=list)


def table_rows(path: str, flag: str, config: Config, limit: data.TextLimit,
               dialect: type[csv.Dialect], quoting: int | None = None) -> Rows:
    """Every row of a csv or tsv file, read exactly as the format defines it, or one line.

    Every row has as many fields as the header (or, without one, the first
    row); a quoted field closes before the next delimiter or line end, and
    does not swallow lines that read as rows; a line repeating the header is
    skipped and logged. See the module docstring for when the first row is a
    header.
    """
    csv.field_size_limit(_MAX_FIELD_CHARS)
    rows = Rows(path, flag, limit, label_from=f"--label_column={config.label_column}")
    skipped: collections.Counter = collections.Counter()
    table: _Table | None = None
    read = 0
    options: dict[str, Any] = {"strict": True, **({} if quoting is None else
                                                  {"quoting": quoting})}
    try:
        with _text_lines(path, flag, newline="") as stream:
            reader = csv.reader(_without_boms(stream), dialect, **options)
            for record, start, end in _records(reader, rows):
                place = f"line {start}"
                if not any(field.strip() for field in record):  # Also a spreadsheet's ",,".
                    skipped["blank lines"] += 1
                    continue
                read += 1
                for index, value in enumerate(record):
                    _check_utf8(value, path, flag, f"{place}, column {index}")
                if table is None:
                    columns = _columns(config, record, path, flag)
                    table = _Table(columns, record, place, tuple(f.strip() for f in record))
                    _check_width(rows, record, table, place, end, dialect)
                    continue
                _check_width(rows, record, table, place, end, dialect)
                if record[table.columns.label].strip() == table.key[table.columns.label]:
                    if tuple(field.strip() for field in record) == table.key:
                        if table.columns.header:
                            table.repeats.append(place)
                            continue
                        table.copies.append(len(rows.texts))
                    elif table.columns.header:
                        raise UserError(f"{flag}={path}: {place} looks like a header (its "
                                        f"label is {table.key[table.columns.label]!r}, the label "
                                        f"column's name) but differs from {table.first_place}'s; "
                                        "remove it, or join only files with the same header.")
                if end > start:
                    table.spans.append(_span(record, table, dialect, place, end))
                _add(rows, record, table.columns, place)
    except (*_GZIP_ERRORS, UserError) as error:
        raise _reading(path, flag)(error) from None
    if table is None:
        raise UserError(f"{flag}={path} is empty: no rows.")
    _check_spans(rows, table)
    header = table.columns.header or _first_is_header(rows, table)
    if header:
        table.repeats += [rows.places[i] for i in table.copies]
        for i in reversed(table.copies):
            del rows.texts[i], rows.labels[i], rows.places[i]
        if table.repeats:
            logging.info("data: %s: the header repeats at %s%s (files joined with their "
                         "headers?); each is skipped as a header", path,
                         ", ".join(table.repeats[:5]),
                         f" and {len(table.repeats) - 5} more" * (len(table.repeats) > 5))
    else:
        _add(rows, table.first, table.columns, table.first_place, at=0)
    if table.columns.header is None:
        label = table.key[table.columns.label] if len(table.key) > table.columns.label else ""
        logging.info("data: %s: first row %s (its label %r appears %s)", path,
                     "taken as a header" if header else "is data", label,
                     ("in other rows" if not header else f"only in its {len(table.copies)} "
                      "copies" if table.copies else "in no other row"))
    if not rows.texts:
        raise UserError(f"{flag}={path} has a header but no rows.")
    _log_counts(path, read, (1 + len(table.repeats)) if header else 0, len(rows.texts),
                skipped)
    return rows


DIALECTS: dict[str, type[csv.Dialect]] = {"csv": csv.excel, "tsv": csv.excel_tab}


def table_records(path: str, flag: str, config: Config, limit: data.TextLimit,
                  dialect: type[csv.Dialect]) -> Iterator[tuple[str, str, str] | str]:
    """``table_rows`` one row at a time, holding none: ``(text, label, place)`` or a skip.

    The rules a row can be checked by alone hold as in ``table_rows`` (quoting,
    field counts, UTF-8, ``Rows.check``); a named header is skipped, and so is
    each repeat of it (yielded as ``"header"``, a blank line as ``"blank
    line"``). With 0-based indices every row is data: whether a first row is a
    header needs the whole file. What needs every row (a quoted field that
    swallowed rows) is ``table_rows``' alone.
    """
    csv.field_size_limit(_MAX_FIELD_CHARS)
    rows = Rows(path, flag, limit)
    quoting = {"quoting": csv.QUOTE_NONE} if dialect is csv.excel_tab else {}
    table: _Table | None = None
    try:
        with _text_lines(path, flag, newline="") as stream:
            reader = csv.reader(_without_boms(stream), dialect, strict=True, **quoting)
            for record, start, end in _records(reader, rows):
                place = f"line {start}"
                if not any(field.strip() for field in record):
                    yield "blank line"
                    continue
                for index, value in enumerate(record):
                    _check_utf8(value, path, flag, f"{place}, column {index}")
                if table is None:
                    table = _Table(_columns(config, record, path, flag), record, place,
                                   tuple(f.strip() for f in record))
                    _check_width(rows, record, table, place, end, dialect)
                    if table.columns.header:
                        yield "header"
                        continue
                _check_width(rows, record, table, place, end, dialect)
                if table.columns.header and tuple(f.strip() for f in record) == table.key:
                    yield "header"
                    continue
                columns = table.columns
                yield (*rows.check(" ".join(record[i] for i in columns.text),
                                   record[columns.label], place, columns.names), place)
    except (*_GZIP_ERRORS, UserError) as error:
        raise _reading(path, flag)(error) from None


def _records(reader: Any, rows: Rows) -> Iterator[tuple[list[str], int, int]]:
    """Each record's fields, first line and last line; a quoting error names its first line."""
    start = 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise _quote_error(rows, start, reader.line_num, error) from None
        yield record, start, reader.line_num
        start = reader.line_num + 1


def _quote_error(rows: Rows, start: int, line: int, error: csv.Error) -> UserError:
    cause = one_line(error)
    if "unexpected end of data" in cause:
        what = "opens a quoted field that never closes: the file ends inside it"
    elif "expected after" in cause:
        at = "" if line == start else f" (at line {line})"
        what = (f"opens a quoted field whose closing quote{at} is followed by other characters "
                "(a space counts), not by a comma or the line's end: a quote that never "
                "closes, or a quote inside a field")
    else:
        what = f"cannot be read ({cause} at line {line})"
    return UserError(f"{rows.flag}={rows.path}: line {start} {what}; quote a field whole and "
                     'write each quote inside it as two ("").')


def _check_width(rows: Rows, record: list[str], table: _Table, place: str, end: int,
                 dialect: type[csv.Dialect]) -> None:
    """Refuses a row with fewer fields than the columns need, or others than the header."""
    columns, width = table.columns, len(table.first)
    if len(record) < columns.needed:
        raise UserError(f"{rows.flag}={rows.path}: {place} has {len(record)} field"
                        f"{'s' * (len(record) != 1)}, fewer than the {columns.needed} needed "
                        f"for {', '.join(columns.names)}.")
    if len(record) != width:
        against = (f"the header ({', '.join(table.key[:5])}{', ...' * (width > 5)}) has"
                   if columns.header else f"{table.first_place} (the first row) has")
        runs = f" (the row runs to line {end}: a quote that never closes?)" if (
            f"line {end}" != place) else ""
        fix = ('quote a field that holds a comma ("great film, a lot of fun")'
               if dialect.delimiter == "," else
               f"remove the {'tab' if dialect.delimiter == chr(9) else 'delimiter'} inside "
               "the field")
        raise UserError(f"{rows.flag}={rows.path}: {place} has {len(record)} fields, but "
                        f"{against} {width}{runs}; {fix}, or remove the extra field.")


def _span(record: list[str], table: _Table, dialect: type[csv.Dialect], place: str,
          end: int) -> tuple[str, int, int, list[str]]:
    """A row over several lines, for ``_check_spans``.

    Returns:
      Its place, its last line, the number of its lines after the first, and
      the labels of those that read as whole rows.
    """
    lines = [line for field in record for line in _LINE_BREAK.split(field)[1:]]
    try:
        labels = [fields[table.columns.label].strip() for fields in csv.reader(lines, dialect)
                  if len(fields) == len(table.first)]
    except csv.Error:
        labels = []
    return place, end, len(lines), labels


def _check_spans(rows: Rows, table: _Table) -> None:
    """Refuses a quoted field whose lines mostly read as rows of their own: an open quote."""
    labels = set(rows.labels)
    for place, end, count, candidates in table.spans:
        swallowed = sum(label in labels for label in candidates)
        if swallowed and 2 * swallowed >= count:
            raise UserError(f"{rows.flag}={rows.path}: {place} opens a quoted field that runs "
                            f"to line {end}, and {swallowed} of its {count} lines after the "
                            "first read as rows of their own: a quote that never closes? Close "
                            'it where the field ends, and write each quote inside a quoted '
                            'field as two ("").')


def _first_is_header(rows: Rows, table: _Table) -> bool:
    """With indices only: whether the first row is a header.

    It is when its label is in no other row but its copies (a header repeated
    where files were joined).
    """
    if len(table.key) <= table.columns.label:
        return False
    return rows.labels.count(_without_bom(table.key[table.columns.label])) == len(table.copies)


def _add(rows: Rows, record: list[str], columns: _Columns, place: str,
         at: int | None = None) -> None:
    """Adds one row's text (its text columns joined with a space) and label."""
    rows.add(" ".join(record[i] for i in columns.text), record[columns.label], place,
             columns.names, at)


# --- jsonl --------------------------------------------------------------------------------

class _JsonObject(dict):
    """A JSON object that remembers the keys it held more than once (json keeps the last)."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        counts = collections.Counter(key for key, _ in pairs) if len(self) < len(pairs) else {}
        self.repeated = {key for key, count in counts.items() if count > 1}


def jsonl_rows(path: str, flag: str, config: Config, limit: data.TextLimit) -> Rows:
    """Every line of a JSON Lines file: one object each; blank lines skipped and counted."""
    rows = Rows(path, flag, limit, label_from=f"--label_column={config.label_column}")
    skipped: collections.Counter = collections.Counter()
    for row in jsonl_records(path, flag, config, limit):
        if isinstance(row, str):
            skipped[f"{row}s"] += 1
        else:
            rows.texts.append(row[0])
            rows.labels.append(row[1])
            rows.places.append(row[2])
    if not rows.texts:
        raise UserError(f"{flag}={path} is empty: no JSON lines.")
    _log_counts(path, len(rows.texts), 0, len(rows.texts), skipped)
    return rows


def jsonl_records(path: str, flag: str, config: Config, limit: data.TextLimit
                  ) -> Iterator[tuple[str, str, str] | str]:
    """Each JSON line as ``(text, label, place)``, checked alone; a blank line as a skip."""
    text_keys = [part.strip() for part in config.text_column.split(",")]
    label_key = config.label_column.strip()
    if label_key in text_keys:
        _refuse_label_in_text(config, path, flag)
    rows = Rows(path, flag, limit)
    try:
        with _text_lines(path, flag, newline=None) as stream:
            for number, line in enumerate(_without_boms(stream), start=1):
                place = f"line {number}"
                if not line.strip():
                    yield "blank line"
                    continue
                _check_utf8(line, path, flag, place)
                record = _json_object(line, rows, place)
                for key in record.repeated & {*text_keys, label_key}:
                    used = "--label_column" if key == label_key else "--text_column"
                    raise UserError(f"{flag}={path}: {place} has the key {key!r} twice, so "
                                    f"{used}={key} is ambiguous (JSON keeps the last); keep "
                                    "one.")
                text = " ".join(_json_field(record, key, rows, place, "text")
                                for key in text_keys)
                label = _json_field(record, label_key, rows, place, "label")
                yield (*rows.check(text, label, place, (*text_keys, label_key)), place)
    except (*_GZIP_ERRORS, UserError) as error:
        raise _reading(path, flag)(error) from None


def _json_object(line: str, rows: Rows, place: str) -> _JsonObject:
    try:
        record = json.loads(line, object_pairs_hook=_JsonObject)
    except json.JSONDecodeError as error:
        raise UserError(f"{rows.flag}={rows.path}: {place} is not valid JSON ({error.msg} at "
                        f"column {error.colno}).") from None
    if not isinstance(record, _JsonObject):
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
    if what == "label" and isinstance(value, float) and value.is_integer():
        return str(int(value))  # 1.0, as pandas writes an integer column with a gap.
    if value is None:
        return ""
    if not isinstance(value, str):
        kinds = "a string" if what == "text" else "a string or an integer"
        kind = "object" if isinstance(value, dict) else type(value).__name__
        raise UserError(f"{rows.flag}={rows.path}: {place}: {key!r} is a JSON "
                        f"{kind}; the {what} must be {kinds}.")
    return value


# --- Class folders ------------------------------------------------------------------------

def split_layout(path: str) -> bool:
    """Whether ``path`` holds ``train/<class>/`` (and ``test/<class>/``), not ``<class>/``.

    The split layout is taken when the only folders at the top are ``train/``
    (and ``test/``) and ``train/`` holds folders and no texts of its own; then a
    class folder named ``train`` holding texts stays a class. One log line says
    which layout was taken.

    Raises:
      UserError: ``train/`` holds only folders beside other top folders than
        ``test/`` (``validation/``): neither layout can be meant for sure.
    """
    path = path.rstrip("/")
    if not isdir(path):
        return False
    folders = subfolders(path)
    train = f"{path}/train"
    split = ("train" in folders and bool(subfolders(train))
             and not any(_is_text(name) for name in _listdir(train)))
    others = [name for name in folders if name not in ("train", "test")]
    if split and others:
        raise UserError(f"--data_path={path} has train/, which holds class folders, beside "
                        f"{', '.join(f'{name}/' for name in others[:5])}: the train/<class>/ "
                        "layout takes only train/ and test/ at the top, and a class folder "
                        "named train would hold texts. Move the other folders out, or rename "
                        "train/ if it is a class.")
    if split:
        logging.info("data: %s: layout train/<class>/%s (only train/%s at the top)", path,
                     " and test/<class>/" if "test" in folders else "",
                     " and test/" if "test" in folders else "")
    else:
        logging.info("data: %s: layout <class>/: %d class folders (%s%s); texts in their "
                     "subfolders belong to them", path, len(folders), ", ".join(folders[:10]),
                     ", ..." * (len(folders) > 10))
    return split


def _is_text(name: str) -> bool:
    return not name.endswith("/") and name.lower().endswith(".txt")


def folder_rows(path: str, flag: str, limit: data.TextLimit) -> Rows:
    """Every ``.txt`` file under each ``<class>/`` folder of ``path``: the folder names the class.

    Texts in a class folder's subfolders belong to it (as
    ``text_dataset_from_directory`` reads them); files not ending in ``.txt``,
    files beside the class folders, and hidden files and folders are skipped
    and counted.
    """
    path = path.rstrip("/")
    if not isdir(path):
        what = "is not a folder" if exists(path) else "does not exist"
        raise UserError(f"{flag}={path} {what}; --data_source=folders reads DIR/<class>/*.txt "
                        "or DIR/train/<class>/*.txt and DIR/test/<class>/*.txt.")
    rows = Rows(path, flag, limit)
    skipped: collections.Counter = collections.Counter()
    classes = []
    for name in _listdir(path):
        if _left_behind(name):
            skipped["hidden files or folders"] += 1
        elif name.endswith("/") or isdir(f"{path}/{name}"):
            classes.append(name.rstrip("/"))
        else:
            skipped["files beside the class folders"] += 1
    if not classes:
        raise UserError(f"{flag}={path} has no class folders; --data_source=folders reads "
                        "DIR/<class>/*.txt, one folder per class.")
    for label in classes:
        before = len(rows.texts)
        for place in _texts_under(path, label, skipped):
            rows.add(_read_file(f"{path}/{place}", path, place, limit), label, place,
                     ("the file", "its folder"))
        if len(rows.texts) == before:
            raise UserError(f"{flag}={path}: class folder {label}/ has no .txt files (in it "
                            "or its subfolders).")
    _log_counts(path, len(rows.texts) + sum(skipped.values()), 0, len(rows.texts), skipped)
    return rows


def _texts_under(root: str, folder: str, skipped: collections.Counter,
                 depth: int = 0) -> Iterator[str]:
    """The ``.txt`` files in ``root/folder`` and its subfolders, relative to ``root``."""
    if depth > _MAX_DEPTH:
        raise UserError(f"{root}/{folder} nests folders more than {_MAX_DEPTH} deep; a "
                        "folder that links to itself?")
    for name in _listdir(f"{root}/{folder}"):
        place = f"{folder}/{name.rstrip('/')}"
        if _left_behind(name):
            skipped["hidden files or folders"] += 1
        elif _is_text(name):
            yield place
        elif name.endswith("/") or isdir(f"{root}/{place}"):
            yield from _texts_under(root, place, skipped, depth + 1)
        else:
            skipped["files not ending in .txt"] += 1


def _read_file(file_path: str, root: str, place: str, limit: data.TextLimit) -> str:
    try:
        with tf.io.gfile.GFile(file_path, "rb") as stream:
            return read_text(stream, limit, root, place)  # type: ignore[arg-type]
    except tf.errors.OpError as error:
        raise UserError(f"cannot read {file_path}: {one_line(error)}.") from None
