"""Issue 28's data-reading rules, each tried on real files the way users make them.

Spreadsheet exports, hand-edited CSVs, files joined with ``cat``, class folders
synced from a Mac: every file here is written by the test and read by the real
readers (``sources.load``); a few runs go through the real CLI, where a user meets
the one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, aclimdb_files, trainer_env, write_tree
from trainer import data, imdb, sources
from trainer.config import Config
from trainer.errors import UserError

_BOM = "\ufeff"


def _write(path: Path, content: str | bytes) -> Path:
    raw = content.encode() if isinstance(content, str) else content
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _reviews(count: int, start: int = 0) -> list[tuple[str, str]]:
    """(text, label) rows: distinct texts, labels pos and neg in turn."""
    return [(f"review {i} of the film", "pos" if i % 2 else "neg")
            for i in range(start, start + count)]


def _table(rows: list[tuple[str, str]], header: str = "text,label", sep: str = ",") -> str:
    lines = [header] if header else []
    return "\n".join(lines + [f"{text}{sep}{label}" for text, label in rows]) + "\n"


def _load(path: Path, **settings) -> data.Splits:
    settings.setdefault("validation_split", 0.0)
    settings.setdefault("early_stopping_patience", 0)
    return sources.load(Config(data_path=str(path), **settings))


def _error(path: Path, **settings) -> str:
    """The one-line UserError that loading ``path`` raises."""
    with pytest.raises(UserError) as error:
        _load(path, **settings)
    message = str(error.value)
    assert "\n" not in message, message
    return message


def _every_text(splits: data.Splits) -> list[str]:
    return [*splits.train.reviews, *splits.validation.reviews, *splits.test.reviews]


# --- A row is read exactly as the format defines it ---------------------------------------

def _open_quote_file(tmp_path: Path, name: str = "a.csv", closing: str = "") -> Path:
    """The issue's file: 1,000 text,label rows; row 5 opens a quote; ``closing`` at row 500."""
    lines = [f"{text},{label}" for text, label in _reviews(1000)]
    lines[4] = '"I cannot believe it,pos'
    if closing:
        lines[499] = closing
    return _write(tmp_path / name, "text,label\n" + "\n".join(lines) + "\n")


@pytest.mark.parametrize("name, closing, expected", [
    ("a.csv", "", r"line 6 opens a quoted field that never closes: the file ends inside it"),
    ("a.csv.gz", "", r"line 6 opens a quoted field that never closes"),
    # A later quoted text: the open quote ends at its first quote, followed by text.
    ("a.csv", '"Some, quoted text",neg', r"line 6 opens a quoted field whose closing quote "
                                         r"\(at line 501\) is followed by other characters"),
    # A quote that ends a field closes the open one cleanly: its lines read as rows.
    ("a.csv", 'he said hi",neg', r"line 6 opens a quoted field that runs to line 501, and "
                                 r"494 of its 495 lines after the first read as rows"),
])
def test_a_quote_that_never_closes_names_the_line_it_opens_on(tmp_path, name, closing,
                                                              expected):
    message = _error(_open_quote_file(tmp_path, name, closing))
    assert message.startswith(f"--data_path={tmp_path / name}: "), message
    assert re.search(expected, message), message
    assert 'write each quote inside' in message


def test_quoted_texts_over_several_lines_with_commas_are_still_read(tmp_path):
    text = 'First line, with a comma.\nSecond, "quoted" line,\n\nand pos,neg at the end'
    rows = [(f'"{t}"', label) for t, label in _reviews(20)]
    rows[3] = ('"' + text.replace('"', '""') + '"', "pos")
    splits = _load(_write(tmp_path / "a.csv", _table(rows)))
    assert text in _every_text(splits)


@pytest.mark.parametrize("header, row, expected", [
    ("text,label", "great film, a lot of fun,pos",
     r"line 5 has 3 fields, but the header \(text, label\) has 2; quote a field that holds "
     r'a comma \("great film, a lot of fun"\)'),
    ("label,text", "pos,great film, a lot of fun", r"line 5 has 3 fields, but the header"),
    ("text,label", "a trailing comma,pos,", r"line 5 has 3 fields"),
])
def test_a_row_with_more_fields_than_the_header_is_refused(tmp_path, header, row, expected):
    rows = [(t, label) if header == "text,label" else (label, t) for t, label in _reviews(40)]
    lines = _table(rows, header).splitlines()
    lines[4] = row
    message = _error(_write(tmp_path / "a.csv", "\n".join(lines) + "\n"))
    assert re.search(expected, message), message


def test_a_space_after_a_closing_quote_is_named(tmp_path):
    content = _table(_reviews(20)) + '"a hand-edited review" ,pos\n'
    message = _error(_write(tmp_path / "a.csv", content))
    assert "line 22 opens a quoted field whose closing quote is followed by other characters " \
           "(a space counts)" in message


def test_empty_spreadsheet_rows_are_skipped_and_counted(tmp_path, caplog):
    rows = "".join(f"{text},{label},,\n" for text, label in _reviews(20))
    content = "text,label,,\n" + rows + ",,,\n   ,  ,,\n"
    with caplog.at_level("INFO"):
        splits = _load(_write(tmp_path / "export.csv", content))
    assert len(_every_text(splits)) == 20
    assert "21 rows read, 1 header, 20 kept, 2 skipped (2 blank lines)" in caplog.text


def test_a_utf16_file_is_named_as_utf16(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(_table(_reviews(20)).encode("utf-16"))  # What Excel's "Unicode text" is.
    message = _error(path)
    assert message == (f"--data_path={path} is UTF-16 (it starts with a UTF-16 byte-order "
                       "mark), not UTF-8; save it as UTF-8 (in Excel: CSV UTF-8).")
    root = _tickets(tmp_path / "tickets")
    (root / "login" / "0.txt").write_bytes("login ticket".encode("utf-16"))
    assert "review login/0.txt is UTF-16" in _error(root)


def test_a_tab_inside_a_tsv_text_is_refused(tmp_path):
    content = _table(_reviews(30), "text\tlabel", "\t") + "a text\twith a tab\tpos\n"
    message = _error(_write(tmp_path / "a.tsv.gz", content))
    assert re.search(r"a\.tsv\.gz: line 32 has 3 fields, but the header \(text, label\) has 2; "
                     r"remove the tab inside the field", message), message


def test_a_row_wider_than_the_first_is_refused_without_a_header(tmp_path):
    content = _table(_reviews(30), header="") + "extra,pos,x\n"
    message = _error(_write(tmp_path / "a.csv", content), text_column="0", label_column="1")
    assert "line 31 has 3 fields, but line 1 (the first row) has 2" in message


@pytest.mark.parametrize("indices", [False, True], ids=["by-name", "by-index"])
def test_files_joined_with_cat_skip_their_repeated_headers_and_say_so(tmp_path, caplog,
                                                                       indices):
    parts = [_table(_reviews(30, start)) for start in (0, 100, 200)]
    joined = parts[0] + _BOM + parts[1] + parts[2]  # b.csv was saved with a byte-order mark.
    settings = {"text_column": "0", "label_column": "1"} if indices else {}
    with caplog.at_level("INFO"):
        splits = _load(_write(tmp_path / "all.csv", joined), **settings)
    assert splits.class_names == ("neg", "pos")
    assert len(_every_text(splits)) == 90
    assert "the header repeats at line 32, line 63" in caplog.text
    assert "93 rows read, 3 header, 90 kept" in caplog.text


def test_a_header_of_another_shape_inside_the_data_is_refused(tmp_path):
    joined = _table(_reviews(30)) + _table(_reviews(30, 100), header="review,label")
    message = _error(_write(tmp_path / "all.csv", joined))
    assert re.search(r"line 32 looks like a header \(its label is 'label', the label "
                     r"column's name\) but differs from line 1's", message), message


def test_a_row_that_repeats_the_first_data_row_is_data_without_a_header(tmp_path):
    rows = _reviews(30)
    content = _table([*rows, rows[0]], header="")
    splits = _load(_write(tmp_path / "a.csv", content), text_column="0", label_column="1")
    assert len(_every_text(splits)) == 31


# --- The label column looks like labels; every split has every class -----------------------

def test_swapped_columns_are_refused_with_the_numbers(tmp_path):
    path = _write(tmp_path / "a.csv", _table(_reviews(600)))
    message = _error(path, text_column="label", label_column="text")
    assert message == (f"--data_path={path}: --label_column=text has 600 distinct values in "
                       "600 rows; is it the text column? A class needs rows to train and to "
                       "test on: point --label_column at the column of classes.")


def test_an_id_column_as_labels_is_refused_in_json_lines(tmp_path):
    lines = [json.dumps({"id": i, "text": t, "label": label})
             for i, (t, label) in enumerate(_reviews(50))]
    message = _error(_write(tmp_path / "a.jsonl", "\n".join(lines)), label_column="id")
    assert "--label_column=id has 50 distinct values in 50 rows; is it the text column?" \
        in message


def test_an_empty_test_set_is_refused_not_measured(tmp_path):
    rows = [(f"utterance {i} {j}", f"intent{i}") for i in range(40) for j in range(2)]
    message = _error(_write(tmp_path / "intents.csv", _table(rows)))
    assert re.search(r"the test set has no rows of 40 of 40 classes \('intent0' of 2 rows, .* "
                     r"and 35 more\); --test_split=0\.2 holds out round\(0\.2 x n\) rows of a "
                     r"class of n, so a class needs at least 3 rows to give one: add rows, "
                     r"raise --test_split, or give --test_data_path\.$", message), message
    # Raising --test_split, as it says, gives every class one test row and one to train on.
    splits = _load(tmp_path / "intents.csv", test_split=0.5)
    assert np.bincount(splits.test.labels).tolist() == [1] * 40
    assert np.bincount(splits.train.labels).tolist() == [1] * 40


def test_a_class_missing_from_one_split_is_refused(tmp_path):
    rows = _reviews(40) + [(f"rare {i}", "rare") for i in range(5)]
    path = _write(tmp_path / "a.csv", _table(rows))
    message = _error(path, validation_split=0.1)  # rare: 1 test row, 4 left, 0.4 rounds to 0.
    assert re.search(r"the validation set has no rows of 1 of 3 classes \('rare' of 4 rows\); "
                     r"--validation_split=0\.1 .* at least 6 rows .* or set "
                     r"--validation_split=0 --early_stopping_patience=0\.$", message), message
    assert len(_load(path).test) == 9  # Without validation it trains: 4 + 4 + 1 test rows.
    one = _write(tmp_path / "one.csv", _table([*_reviews(40), ("lonely", "rare")]))
    message = _error(one, test_split=0.6)  # round(0.6 x 1) = 1: nothing left to train on.
    assert "the training set has no rows of 1 of 3 classes ('rare' of 1 row)" in message
    assert "--max_train_examples=2 keeps too few rows for 3 classes: raise it" in _error(
        path, max_train_examples=2)


def test_a_test_file_without_some_class_is_refused(tmp_path):
    train = _write(tmp_path / "train.csv", _table(_reviews(20) + [("x", "meh")] * 4))
    test = _write(tmp_path / "test.csv", _table(_reviews(10, 100)))
    message = _error(train, test_data_path=str(test))
    assert message.startswith(f"--test_data_path={test}: the test set has no rows of 1 of 3 "
                              "classes ('meh'); a class without test rows cannot be measured")


# --- Labels mean one thing ----------------------------------------------------------------

def test_spellings_of_one_integer_are_one_class(tmp_path):
    spellings = ["01", "02", "1", "1.0", "2", "2.0", " +1 ", "2.00"]
    rows = [(f"text {i}", spellings[i % len(spellings)]) for i in range(80)]
    train = _write(tmp_path / "a.csv", _table(rows))
    test = _write(tmp_path / "t.csv", _table([("new one", "1.0"), ("new two", "002")]))
    splits = _load(train, test_data_path=str(test))
    assert splits.class_names == ("1", "2")
    assert np.bincount(splits.train.labels).tolist() == [40, 40]
    assert splits.test.labels.tolist() == [0, 1]
    jsonl = "\n".join(json.dumps({"text": f"t{i}", "label": [1, 1.0, "2", 2.0][i % 4]})
                      for i in range(20))
    assert _load(_write(tmp_path / "a.jsonl", jsonl)).class_names == ("1", "2")


def test_decimal_labels_keep_their_value_and_order(tmp_path):
    rows = [(f"text {i}", ["0.5", "1.50", "10", ".5"][i % 4]) for i in range(40)]
    splits = _load(_write(tmp_path / "a.csv", _table(rows)))
    assert splits.class_names == ("0.5", "1.5", "10")


def test_spellings_of_one_number_among_text_labels_are_refused(tmp_path):
    rows = [(f"text {i}", ["1", "pos", "01"][i % 3]) for i in range(30)]
    message = _error(_write(tmp_path / "a.csv", _table(rows)))
    assert re.search(r"labels '1' \(line 2\) and '01' \(line 4\) spell one number, but 'pos' "
                     r"is not a number, so they would be two classes; write each class one "
                     r"way\.$", message), message


def test_a_header_naming_the_label_column_twice_is_ambiguous(tmp_path):
    content = "label,text,label\n" + "".join(f"a,t {i},b{i % 2}\n" for i in range(20))
    message = _error(_write(tmp_path / "a.csv", content))
    assert re.search(r"the header names 'label' 2 times \(columns 0, 2\), so "
                     r"--label_column=label is ambiguous", message), message
    # A name given twice that no flag uses (blank spreadsheet columns) is no ambiguity.
    fine = "text,label,,\n" + "".join(f"t {i},{i % 2},,\n" for i in range(20))
    assert _load(_write(tmp_path / "b.csv", fine)).class_names == ("0", "1")


def test_a_json_object_holding_the_label_key_twice_is_ambiguous(tmp_path):
    lines = [json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(20)]
    lines[3] = '{"text": "t3", "label": "pos", "label": "neg"}'
    message = _error(_write(tmp_path / "a.jsonl", "\n".join(lines)))
    assert "line 4 has the key 'label' twice, so --label_column=label is ambiguous" in message


def test_class_names_of_any_unicode_survive_intact(tmp_path):
    names = ["日本語", "Ωμέγα", "family 👨\u200d👩\u200d👧", "עברית", "café"]
    rows = [(f"text {i}", names[i % len(names)]) for i in range(50)]
    splits = _load(_write(tmp_path / "a.csv", _table(rows)))
    assert set(splits.class_names) == set(names)


def test_one_name_in_two_unicode_forms_is_refused(tmp_path):
    composed, decomposed = "caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")
    rows = [(f"text {i}", [composed, "tea", decomposed][i % 3]) for i in range(30)]
    message = _error(_write(tmp_path / "a.csv", _table(rows)))
    assert "look the same but are different Unicode (composed and decomposed" in message


def test_one_name_in_two_letter_cases_is_refused(tmp_path):
    rows = [(f"text {i}", ["Positive", "negative", "positive"][i % 3]) for i in range(30)]
    message = _error(_write(tmp_path / "a.csv", _table(rows)))
    assert re.search(r"labels 'Positive' \(line 2\) and 'positive' \(line 4\) differ only in "
                     r"letter case or spacing, so they would be two classes", message), message
    rows = [(f"text {i}", ["very good", "bad", "very  good"][i % 3]) for i in range(30)]
    assert "differ only in letter case or spacing" in _error(
        _write(tmp_path / "b.csv", _table(rows)))


def test_a_label_with_a_line_break_is_no_class_name(tmp_path):
    rows = [(f"text {i}", ['"pos\nneg"', "pos"][i % 2]) for i in range(20)]
    message = _error(_write(tmp_path / "a.csv", _table(rows)))
    assert re.search(r"line 2: label 'pos\\nneg' holds a line break or control character "
                     r"\(U\+000A\); a class name is one line of text", message), message


# --- Class folders ------------------------------------------------------------------------

def _tickets(root: Path, classes: tuple[str, ...] = ("billing", "login"), count: int = 10,
             prefix: str = "") -> Path:
    for label in classes:
        for i in range(count):
            nested = "2019/" if i % 2 else ""  # Half of each class in a year subfolder.
            _write(root / label / f"{nested}{i}.txt", f"{prefix}{label} ticket {i}")
    return root


def test_class_folders_read_subfolders_and_skip_what_an_os_leaves(tmp_path, caplog):
    root = _tickets(tmp_path / "tickets")
    _write(root / "billing" / "._0.txt", b"\x00\x05\x16\x07\x00\x02\xff\xfe")  # AppleDouble.
    _write(root / "billing" / "2019" / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    _write(root / "login" / "SHOUT.TXT", "login ticket in capitals")
    _write(root / "__MACOSX" / "billing" / "._1.txt", b"\xff")
    _write(root / "README.md", "about these tickets")
    with caplog.at_level("INFO"):
        splits = _load(root)
    assert splits.class_names == ("billing", "login")
    texts = _every_text(splits)
    assert len(texts) == 21 and "billing ticket 9" in texts  # billing/2019/9.txt.
    assert "login ticket in capitals" in texts
    assert "layout <class>/: 2 class folders (billing, login); texts in their subfolders " \
           "belong to them" in caplog.text
    assert ("25 rows read, 0 header, 21 kept, 4 skipped (1 files beside the class folders, "
            "3 hidden files or folders)") in caplog.text


def test_a_class_folder_named_train_is_a_class(tmp_path, caplog):
    root = _tickets(tmp_path / "tickets", ("billing", "train", "login"))
    with caplog.at_level("INFO"):
        splits = _load(root)
    assert splits.class_names == ("billing", "login", "train")
    assert "layout <class>/: 3 class folders (billing, login, train)" in caplog.text


def test_the_split_layout_is_said_and_kept(tmp_path, caplog):
    root = _tickets(tmp_path / "d" / "train")
    _tickets(tmp_path / "d" / "test", count=4, prefix="new ")
    with caplog.at_level("INFO"):
        splits = _load(tmp_path / "d")
    assert (len(splits.train), len(splits.test)) == (20, 8)
    assert "layout train/<class>/ and test/<class>/ (only train/ and test/ at the top)" \
        in caplog.text
    assert root.is_dir()


def test_a_split_layout_with_other_top_folders_is_refused(tmp_path):
    for split in ("train", "validation"):
        _tickets(tmp_path / "d" / split, prefix=f"{split} ")
    message = _error(tmp_path / "d")
    assert "has train/, which holds class folders, beside validation/" in message


def test_a_split_layout_with_its_own_test_and_a_test_path_is_refused(tmp_path):
    _tickets(tmp_path / "d" / "train")
    _tickets(tmp_path / "d" / "test", prefix="new ")
    other = _tickets(tmp_path / "other", prefix="other ")
    message = _error(tmp_path / "d", test_data_path=str(other))
    assert "has its own test/ folder, and --test_data_path=" in message


# --- A byte-order mark is never part of a text --------------------------------------------

@pytest.mark.parametrize("name", ["a.csv", "a.csv.gz", "a.tsv", "a.jsonl.gz"])
def test_no_byte_order_mark_reaches_a_text_or_label(tmp_path, name):
    def part(start: int) -> str:
        rows = _reviews(20, start)
        if name.startswith("a.jsonl"):
            return "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows)
        return _table(rows, "text\tlabel", "\t") if ".tsv" in name else _table(rows)

    splits = _load(_write(tmp_path / name, _BOM + part(0) + _BOM + part(100)))
    assert splits.class_names == ("neg", "pos")
    assert len(_every_text(splits)) == 40
    assert not any(_BOM in text for text in _every_text(splits))


def test_no_byte_order_mark_in_class_folder_or_aclimdb_files(tmp_path):
    root = _tickets(tmp_path / "tickets", prefix=_BOM)
    assert not any(text.startswith(_BOM) for text in _every_text(_load(root)))
    files = {name: b"\xef\xbb\xbf" + text for name, text in aclimdb_files(2).items()}
    train, test = imdb.read_aclimdb(str(write_tree(tmp_path / "acl", files)))
    assert not any(review.startswith(_BOM) for review in [*train.reviews, *test.reviews])


# --- Test data that is the training data --------------------------------------------------

def test_the_training_file_as_test_file_is_refused(tmp_path):
    path = _write(tmp_path / "a.csv", _table(_reviews(100)))
    message = _error(path, test_data_path=str(path))
    assert message.startswith(f"--test_data_path={path} is the same file as --data_path: 100 "
                              "of 100 test texts (100%) are also training texts, so test "
                              "accuracy would measure memory"), message
    copy = tmp_path / "copy.csv"
    shutil.copy(path, copy)
    assert _error(path, test_data_path=str(copy)).startswith(
        f"--test_data_path={copy} repeats --data_path={path}: 100 of 100 test texts")


def test_a_test_file_mostly_of_training_rows_is_refused_and_a_few_are_logged(tmp_path,
                                                                             caplog):
    train = _write(tmp_path / "train.csv", _table(_reviews(100)))
    mostly = _write(tmp_path / "mostly.csv", _table(_reviews(14, 86) + _reviews(6, 500)))
    assert "14 of 20 test texts (70%) are also training texts" in _error(
        train, test_data_path=str(mostly))
    few = _write(tmp_path / "few.csv", _table(_reviews(4, 98) + _reviews(16, 500)))
    with caplog.at_level("WARNING"):
        splits = _load(train, test_data_path=str(few))
    assert len(splits.test) == 20
    assert "2 of 20 test texts (10%) are also training texts" in caplog.text


def test_a_file_joined_with_itself_is_refused(tmp_path):
    content = _table(_reviews(50))
    message = _error(_write(tmp_path / "twice.csv", content + content))
    assert re.search(r"twice\.csv: \d+ of 20 test texts \(\d+%\) are also training texts: its "
                     r"100 rows hold 50 distinct texts \(a file joined with itself, or "
                     r"--text_column=text not the texts\?\)", message), message


def test_a_label_column_that_is_also_a_text_column_is_refused(tmp_path):
    path = _write(tmp_path / "a.csv", _table(_reviews(40)))
    message = _error(path, text_column="text,label")
    assert message == (f"--data_path={path}: --label_column=label is also one of "
                       "--text_column=text,label, so the model would read each answer in its "
                       "text; leave it out of --text_column.")
    assert "--label_column=1 is also one of --text_column=0,1" in _error(
        path, text_column="0,1", label_column="1")
    lines = "\n".join(json.dumps({"text": t, "stars": label}) for t, label in _reviews(20))
    assert "--label_column=stars is also one of" in _error(
        _write(tmp_path / "a.jsonl", lines), text_column="text,stars", label_column="stars")


# --- Through the CLI, where a user meets them ----------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("make, flags, expected", [
    (_open_quote_file, [], "a.csv: line 6 opens a quoted field that never closes"),
    (lambda tmp: _write(tmp / "a.csv", _table(_reviews(600))),
     ["--text_column=label", "--label_column=text"],
     "--label_column=text has 600 distinct values in 600 rows; is it the text column?"),
    (lambda tmp: _write(tmp / "a.csv", _table(
        [(f"utterance {i} {j}", f"intent{i}") for i in range(40) for j in range(2)])), [],
     "the test set has no rows of 40 of 40 classes"),
    (lambda tmp: _write(tmp / "a.csv", _table(_reviews(100))), ["--test_data_path={path}"],
     "a.csv is the same file as --data_path: 100 of 100 test texts (100%)"),
], ids=["open-quote", "swapped-columns", "empty-test-set", "test-is-train"])
def test_the_trainer_stops_with_one_line_and_exit_2(tmp_path, make, flags, expected):
    path = make(tmp_path)
    process = subprocess.run(
        [sys.executable, "-m", "trainer.main", f"--data_path={path}",
         *[flag.replace("{path}", str(path)) for flag in flags],
         f"--model_dir={tmp_path / 'run'}", "--max_len=16"],
        cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=300)
    assert process.returncode == 2, process.stderr[-3000:]
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], process.stderr[-3000:]
    assert errors[0].startswith(f"error: --{'test_' if 'test_data' in str(flags) else ''}"
                                f"data_path={path}"), errors[0]
    assert "Traceback" not in process.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
