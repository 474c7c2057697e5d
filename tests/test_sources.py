"""trainer/sources.py and tables.py: every layout, auto's choice, labels, every bad-data line."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, aclimdb_files, trainer_env, write_archive, write_tree
from trainer import config as config_lib
from trainer import data, sources, splits, tables
from trainer.config import Config
from trainer.errors import UserError

_WORDS = {"sports": "match goal team", "world": "minister election war",
          "tech": "software chip internet"}


def _rows(per_class: int = 10) -> list[tuple[str, str]]:
    """(label, text) rows, ``per_class`` of each of three topics."""
    return [(label, f"{words} story {i}") for i in range(per_class)
            for label, words in _WORDS.items()]


def _write(path: Path, content: str | bytes) -> Path:
    raw = content.encode() if isinstance(content, str) else content
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _csv(rows: list[tuple[str, str]], header: str | None = "label,text") -> str:
    lines = [header] if header else []
    return "\r\n".join(lines + [f'{label},"{text}"' for label, text in rows]) + "\r\n"


def _load(path: Path, **settings) -> data.Splits:
    settings.setdefault("validation_split", 0.0)
    settings.setdefault("early_stopping_patience", 0)
    return sources.load(Config(data_path=str(path), **settings))


def _reads(path: Path, **settings) -> tuple[data.Split, data.Split | None, tuple[str, ...]]:
    config = Config(data_path=str(path), **settings)
    _, train, test, names = sources.read(config, data.text_limit(config))
    return train, test, names


def _error(path: Path, **settings) -> str:
    """The UserError that loading ``path`` raises, checked to be one line."""
    with pytest.raises(UserError) as error:
        _load(path, **settings)
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_every_configured_source_has_a_reader_and_no_other():
    assert set(config_lib.DATA_SOURCES) - {"auto"} == set(sources.READERS)


def test_an_unknown_source_is_refused_by_name():
    with pytest.raises(UserError, match="--data_source='parquet' is not one of"):
        Config(data_source="parquet")


@pytest.mark.parametrize("name, expected", [
    ("x.csv", "csv"), ("x.CSV.gz", "csv"), ("x.tsv", "tsv"), ("x.tsv.gz", "tsv"),
    ("x.jsonl", "jsonl"), ("x.jsonl.gz", "jsonl"), ("imdb.npz", "keras_npz"),
    ("aclImdb_v1.tar.gz", "aclimdb"), ("a.zip", "aclimdb"),
])
def test_auto_picks_the_source_by_the_files_name(tmp_path, name, expected):
    assert sources.resolve(Config(data_path=str(tmp_path / name))) == expected


def test_auto_picks_aclimdb_or_class_folders_by_what_a_folder_holds(tmp_path):
    acl = write_tree(tmp_path / "acl", aclimdb_files(2))
    assert sources.resolve(Config(data_path=str(acl))) == "aclimdb"
    assert sources.resolve(Config(data_path=str(acl.parent))) == "aclimdb"
    flat = _class_folders(tmp_path / "flat")
    assert sources.resolve(Config(data_path=str(flat))) == "folders"
    # train/ with a third class is not aclImdb, whose reader would drop that class.
    files = {**aclimdb_files(2), "aclImdb/train/neutral/0.txt": b"so so"}
    assert sources.resolve(Config(data_path=str(write_tree(tmp_path / "three", files)))) \
        == "folders"
    assert sources.resolve(Config()) == "tfds"


@pytest.mark.parametrize("name, expected", [("missing", "does not exist"),
                                            ("notes.parquet", "is a file of no known kind")])
def test_auto_refuses_a_path_it_cannot_place(tmp_path, name, expected):
    if name.endswith(".parquet"):
        _write(tmp_path / name, "x")
    with pytest.raises(UserError, match=f"--data_path=.*{name} {expected}; .*--data_source"):
        sources.resolve(Config(data_path=str(tmp_path / name)))


# --- csv ----------------------------------------------------------------------------------

def test_csv_reads_quoted_commas_quotes_and_newlines_as_rfc_4180(tmp_path):
    text = 'He said "no", then left,\r\nfor good.'
    content = ('id,title,body,label\r\n'
               f'1,First,"{text.replace(chr(34), chr(34) * 2)}",world\r\n'
               '2,Second,plain,sports\r\n'
               '3,"Third, again","multi\nline",world\r\n')
    train, test, names = _reads(_write(tmp_path / "a.csv", content),
                                text_column="title,body")
    assert test is None
    assert names == ("sports", "world")
    assert list(train.reviews) == [f"First {text}", "Second plain", "Third, again multi\nline"]
    assert train.labels.tolist() == [1, 0, 1]


def test_csv_gzipped_with_a_byte_order_mark_reads_the_same(tmp_path):
    content = _csv(_rows(2))
    plain = _reads(_write(tmp_path / "a.csv", content))
    zipped = _reads(_write(tmp_path / "a.csv.gz", "\ufeff" + content))
    assert list(plain[0].reviews) == list(zipped[0].reviews)
    assert plain[0].labels.tolist() == zipped[0].labels.tolist()


def test_csv_without_a_header_takes_indices_and_reads_its_first_row(tmp_path):
    path = _write(tmp_path / "a.csv", _csv(_rows(3), header=None))
    train, _, names = _reads(path, text_column="1", label_column="0")
    assert len(train) == 9 and names == ("sports", "tech", "world")
    assert train.reviews[0] == "match goal team story 0"


def test_csv_with_a_header_and_indices_skips_the_header(tmp_path):
    """The header's label ('label') is in no other row, so the first row is a header."""
    path = _write(tmp_path / "a.csv", _csv(_rows(3)))
    train, _, names = _reads(path, text_column="1", label_column="0")
    assert len(train) == 9 and "label" not in names


def test_integer_labels_are_ordered_numerically_and_written_alike(tmp_path):
    rows = [("10", "a"), ("2", "b"), ("02", "c"), ("1", "d"), ("10", "e")]
    train, _, names = _reads(_write(tmp_path / "a.csv", _csv(rows)))
    assert names == ("1", "2", "10")
    assert train.labels.tolist() == [2, 1, 1, 0, 2]


def test_string_labels_are_ordered_lexicographically():
    assert tables.class_order({"b", "B", "a10", "a2"}) == ("B", "a10", "a2", "b")
    assert tables.class_order({"-1", "1", "0"}) == ("-1", "0", "1")


# --- tsv ----------------------------------------------------------------------------------

def test_tsv_is_one_row_a_line_and_quotes_are_plain_text(tmp_path):
    content = 'label\ttext\nworld\t"quoted" and "open\nsports\tcomma, fine\n\n'
    train, _, names = _reads(_write(tmp_path / "a.tsv", content))
    assert list(train.reviews) == ['"quoted" and "open', "comma, fine"]
    assert names == ("sports", "world") and train.labels.tolist() == [1, 0]


# --- jsonl --------------------------------------------------------------------------------

def test_jsonl_reads_one_object_a_line_with_string_or_integer_labels(tmp_path):
    lines = [json.dumps({"text": f"t{i}", "label": i % 3, "extra": [1]}) for i in range(6)]
    content = "\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n"
    train, _, names = _reads(_write(tmp_path / "a.jsonl.gz", content))
    assert names == ("0", "1", "2")
    assert list(train.reviews) == [f"t{i}" for i in range(6)]
    assert train.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_jsonl_joins_several_text_keys(tmp_path):
    lines = [json.dumps({"title": f"T{i}", "body": "b", "topic": "x" if i % 2 else "y"})
             for i in range(4)]
    train, _, _ = _reads(_write(tmp_path / "a.jsonl", "\n".join(lines)),
                         text_column="title, body", label_column="topic")
    assert train.reviews[1] == "T1 b"


def test_reading_logs_rows_read_kept_and_skipped(tmp_path, caplog):
    content = _csv(_rows(2)) + "\r\n\r\n"
    with caplog.at_level("INFO"):
        _reads(_write(tmp_path / "a.csv", content))
    assert "7 rows read, 1 header, 6 kept, 2 skipped (2 blank lines)" in caplog.text


# --- class folders ------------------------------------------------------------------------

def _class_folders(root: Path, per_class: int = 4, split: str = "") -> Path:
    for label, text in _rows(per_class):
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{len(list(folder.iterdir()))}.txt").write_text(f"{split} {text}".strip())
    return root


def test_class_folders_read_one_class_per_folder_and_skip_other_files(tmp_path, caplog):
    root = _class_folders(tmp_path / "d")
    (root / "sports" / "notes.md").write_text("not a text")
    (root / ".ipynb_checkpoints").mkdir()
    with caplog.at_level("INFO"):
        train, test, names = _reads(root)
    assert test is None and names == ("sports", "tech", "world")
    assert np.bincount(train.labels).tolist() == [4, 4, 4]
    assert "2 skipped (1 hidden files or folders, 1 files not ending in .txt)" in caplog.text


def test_class_folders_with_train_and_test_keep_their_test_split(tmp_path):
    root = _class_folders(_class_folders(tmp_path / "d", 6, "train"), 2, "test")
    splits = _load(root)
    assert (len(splits.train), len(splits.test)) == (18, 6)
    assert splits.class_names == ("sports", "tech", "world")
    assert splits.source == "folders"


def test_imdb_sources_keep_their_class_names(tiny_archive):
    splits = sources.load(Config(data_path=str(tiny_archive)))
    assert splits.class_names == ("negative", "positive") and splits.num_classes == 2


# --- test sets ----------------------------------------------------------------------------

def test_without_a_test_set_a_seeded_stratified_part_is_held_out(tmp_path):
    path = _write(tmp_path / "a.csv", _csv(_rows(10)))
    splits = _load(path, test_split=0.2, validation_split=0.25, seed=5)
    assert np.bincount(splits.test.labels).tolist() == [2, 2, 2]
    assert np.bincount(splits.validation.labels).tolist() == [2, 2, 2]
    assert len(splits.train) == 18
    everything = set(splits.train.reviews) | set(splits.validation.reviews) | set(
        splits.test.reviews)
    assert len(everything) == 30
    assert list(_load(path, test_split=0.2, seed=5).test.reviews) == list(splits.test.reviews)
    assert list(_load(path, test_split=0.2, seed=6).test.reviews) != list(splits.test.reviews)


def test_a_separate_test_file_is_the_test_set(tmp_path):
    train_path = _write(tmp_path / "train.csv", _csv(_rows(5)))
    test_path = _write(tmp_path / "test.csv", _csv([("world", "new"), ("tech", "newer"),
                                                    ("sports", "newest")]))
    splits = _load(train_path, test_data_path=str(test_path))
    assert len(splits.train) == 15
    assert list(splits.test.reviews) == ["new", "newer", "newest"]
    assert splits.test.labels.tolist() == [2, 1, 0]


def test_a_test_split_of_zero_without_a_test_file_is_refused(tmp_path):
    path = _write(tmp_path / "a.csv", _csv(_rows(2)))
    assert "has no test split: give --test_data_path" in _error(path, test_split=0.0)


def test_test_data_path_is_refused_for_a_source_with_its_own_test_split(tiny_archive, tmp_path):
    message = _error(tiny_archive, test_data_path=str(tmp_path / "t.csv"))
    assert "--test_data_path works with --data_source csv" in message


def test_subsets_are_stratified_over_k_classes():
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    chosen = splits.balanced_subset(labels, 20, np.random.default_rng(0))
    assert np.bincount(labels[chosen]).tolist() == [12, 6, 2]
    assert splits.stratified_counts(np.array([5, 5]), 3).tolist() == [2, 1]
    assert splits.stratified_counts(np.array([6, 3, 1]), 5).tolist() == [3, 2, 0]


def test_balanced_class_weights_make_each_class_weigh_the_same(tmp_path):
    rows = [("a", f"x{i}") for i in range(30)] + [("b", f"y{i}") for i in range(10)]
    path = _write(tmp_path / "a.csv", _csv(rows))
    assert data.class_weights(_load(path)) is None
    splits = _load(path, class_weight="balanced", test_split=0.5)
    weights = data.class_weights(splits)
    np.testing.assert_allclose(weights, [20 / (2 * 15), 20 / (2 * 5)])
    assert weights.dtype == np.float32


# --- bad data: one line naming the file, the line and the column --------------------------

_HEADER = "label,text\r\n"


@pytest.mark.parametrize("name, content, settings, expected", [
    ("a.csv", _csv(_rows(2)), {"text_column": "body"},
     r"a\.csv: no column 'body' \(--text_column\); its first row is 'label', 'text'"),
    ("a.csv", _csv(_rows(2)), {"label_column": "topic"}, r"no column 'topic' \(--label_column\)"),
    ("a.csv", "", {}, r"a\.csv is empty: no rows"),
    ("a.csv", _HEADER, {}, r"a\.csv has a header but no rows"),
    ("a.csv", _csv(_rows(2)) + "world,\r\n", {},
     r"a\.csv: line 8 has no text in text; fill it in"),
    ("a.csv", _csv(_rows(2)) + ',"text"\r\n', {}, r"a\.csv: line 8 has no label in label"),
    ("a.csv", _csv([("same", "a"), ("same", "b")]), {}, r"a\.csv has a single class \('same'\)"),
    ("a.csv", _HEADER + "world,one\r\n" + "sports\r\nworld,two\r\n", {},
     r"a\.csv: line 3 has 1 field, fewer than the 2 needed for text, label"),
    ("a.tsv", "label\ttext\nworld\tone\nsports\n", {}, r"a\.tsv: line 3 has 1 field"),
    ("a.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n', {},
     r"a\.jsonl: line 2 is a JSON list, not an object"),
    ("a.jsonl", '{"text": "a", "label": 1}\n{"text": "b"\n', {},
     r"a\.jsonl: line 2 is not valid JSON"),
    ("a.jsonl", '{"text": "a", "label": 1}\n{"body": "b", "label": 2}\n', {},
     r"a\.jsonl: line 2 has no key 'text' \(--text_column\); it has 'body', 'label'"),
    ("a.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 2.5}\n', {},
     r"line 2: 'label' is a JSON float; the label must be a string or an integer"),
    ("a.jsonl", '{"text": "a", "label": 1}\n{"text": "  ", "label": 2}\n', {},
     r"a\.jsonl: line 2 has no text in text"),
    ("a.jsonl", "\n\n", {}, r"a\.jsonl is empty: no JSON lines"),
])
def test_bad_data_is_one_line_naming_file_line_and_column(tmp_path, name, content, settings,
                                                          expected):
    message = _error(_write(tmp_path / name, content), **settings)
    assert message.startswith(f"--data_path={tmp_path / name}"), message
    assert re.search(expected, message), message


@pytest.mark.parametrize("name, content, expected", [
    ("a.csv", _HEADER.encode() + b"world,one\r\nsports,\"two\r\ncaf\xe9\"\r\n",
     r"a\.csv: line 3, column 1 is not valid UTF-8 \(byte 0xe9\)"),
    ("a.jsonl", b'{"text": "a", "label": 1}\n{"text": "caf\xe9", "label": 2}\n',
     r"a\.jsonl: line 2 is not valid UTF-8 \(byte 0xe9\)"),
    ("a.csv.gz", _HEADER.encode() + b"world,one\r\nsports,\xff\r\n",
     r"a\.csv\.gz: line 3, column 1 is not valid UTF-8 \(byte 0xff\)"),
])
def test_bytes_that_are_not_utf8_name_the_line(tmp_path, name, content, expected):
    message = _error(_write(tmp_path / name, content))
    assert re.search(expected, message), message


def test_a_truncated_gzip_is_one_line(tmp_path):
    whole = gzip.compress(_csv(_rows(200)).encode())
    path = tmp_path / "a.csv.gz"
    path.write_bytes(whole[:len(whole) // 2])
    assert "a.csv.gz is truncated or corrupt" in _error(path)


def test_a_text_file_that_is_not_utf8_in_a_class_folder_names_the_file(tmp_path):
    root = _class_folders(tmp_path / "d")
    (root / "tech" / "bad.txt").write_bytes(b"caf\xe9")
    message = _error(root)
    assert "review tech/bad.txt is not valid UTF-8" in message


@pytest.mark.parametrize("make, expected", [
    (lambda root: (root / "tech" / "0.txt").write_text("  "), "tech/0.txt has no text"),
    (lambda root: [p.unlink() for p in (root / "tech").iterdir()],
     "class folder tech/ has no .txt files"),
])
def test_bad_class_folders_are_one_line(tmp_path, make, expected):
    root = _class_folders(tmp_path / "d")
    make(root)
    assert expected in _error(root)


def test_a_label_only_in_the_test_file_names_its_line(tmp_path):
    train = _write(tmp_path / "train.csv", _csv(_rows(2)))
    test = _write(tmp_path / "test.csv", _csv([("world", "a"), ("science", "b")]))
    message = _error(train, test_data_path=str(test))
    assert message.startswith(f"--test_data_path={test}: line 3: label 'science' is not a label "
                              f"of --data_path={train} (sports, tech, world)"), message


@pytest.mark.parametrize("settings, expected", [
    ({"test_split": 1.0}, "--test_split=1.0 must be in [0, 1)"),
    ({"text_column": "title,,body"}, "--text_column='title,,body' must name a column"),
    ({"label_column": "a,b"}, "--label_column='a,b' must be one column"),
    ({"class_weight": "equal"}, "--class_weight='equal' is not one of"),
])
def test_bad_data_settings_are_refused(settings, expected):
    with pytest.raises(UserError, match=re.escape(expected)):
        Config(**settings)


# --- the trainer, end to end --------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("files, flags, expected", [
    ({"a.csv": _HEADER + "world,one\r\nsports\r\n"}, [],
     "a.csv: line 3 has 1 field, fewer than the 2 needed for text, label."),
    ({"a.csv": _csv(_rows(4)), "t.csv": _csv([("science", "b")])}, ["--test_data_path={t.csv}"],
     "t.csv: line 2: label 'science' is not a label of --data_path="),
], ids=["ragged-row", "label-only-in-test"])
def test_trainer_stops_on_bad_data_with_one_line_and_exit_2(tmp_path, files, flags, expected):
    paths = {name: _write(tmp_path / name, content) for name, content in files.items()}
    flags = [flag.replace("{t.csv}", str(paths.get("t.csv", ""))) for flag in flags]
    process = subprocess.run(
        [sys.executable, "-m", "trainer.main", f"--data_path={paths['a.csv']}", *flags,
         f"--model_dir={tmp_path / 'run'}", "--max_len=16"],
        cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=300)
    assert process.returncode == 2, process.stderr[-3000:]
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], process.stderr[-3000:]
    assert "Traceback" not in process.stderr


def test_tar_archives_still_go_to_aclimdb(tmp_path):
    archive = write_archive(tmp_path / "a.tar.gz", aclimdb_files(2))
    assert sources.resolve(Config(data_path=str(archive))) == "aclimdb"
