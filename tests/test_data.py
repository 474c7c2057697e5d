"""trainer/imdb.py, data.py: the IMDB sources, subsets, splits, vectorization and batches."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, aclimdb_files, trainer_env, write_archive, write_tree
from trainer import data, imdb, sources
from trainer.config import Config
from trainer.errors import UserError


def test_folder_and_official_archive_give_the_same_reviews(tiny_aclimdb, tiny_archive):
    from_folder = imdb.read_aclimdb(str(tiny_aclimdb))
    from_archive = imdb.read_aclimdb(str(tiny_archive))
    for folder_split, archive_split in zip(from_folder, from_archive, strict=True):
        assert list(folder_split.reviews) == list(archive_split.reviews)
        assert list(folder_split.labels) == list(archive_split.labels)
    train, test = from_archive
    assert len(train) == len(test) == 24  # train/unsup of the official archive is skipped.
    assert sorted(set(train.labels)) == [0, 1]


def test_parent_folder_of_aclimdb_is_accepted(tiny_aclimdb):
    train, _ = imdb.read_aclimdb(str(tiny_aclimdb.parent))
    assert len(train) == 24


def test_load_subsets_are_balanced_reproducible_and_validation_comes_from_train(tiny_archive):
    config = Config(data_path=str(tiny_archive), max_train_examples=20, max_test_examples=10,
                    validation_split=0.2, seed=3)
    splits = sources.load(config)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (16, 4, 10)
    assert np.bincount(splits.test.labels).tolist() == [5, 5]
    assert np.bincount(splits.validation.labels).tolist() == [2, 2]
    test_reviews = set(splits.test.reviews)
    assert not test_reviews & set(splits.validation.reviews)
    assert not set(splits.train.reviews) & set(splits.validation.reviews)
    again = sources.load(config)
    assert list(again.train.reviews) == list(splits.train.reviews)
    other_seed = sources.load(dataclasses.replace(config, seed=4))
    assert list(other_seed.train.reviews) != list(splits.train.reviews)


@pytest.mark.parametrize("make_path, expected", [
    (lambda tmp: tmp / "missing.tar.gz", "does not exist"),
    (lambda tmp: tmp, "has no train/ folder"),
    (lambda tmp: _write(tmp / "junk.tar.gz", b"not an archive"), "not a readable .tar.gz"),
    (lambda tmp: write_archive(tmp / "empty.tar.gz", {"aclImdb/README": b"x"}),
     "no train reviews of both classes"),
    (lambda tmp: write_archive(tmp / "nothing.tar.gz", {}), "no train reviews of both classes"),
    (lambda tmp: _write(tmp / "zero.tar.gz", b""), "is an empty file"),
    (lambda tmp: _write_zip(tmp / "aclImdb.zip", aclimdb_files(2)),
     r"is a \.zip, not a \.tar\.gz; unzip it"),
    (lambda tmp: _write_npz(tmp / "imdb.npz", np.array([[1, 2]]), np.array([1])),
     "is a .zip.*--data_source=keras_npz"),
])
def test_bad_data_path_names_the_flag(tmp_path, make_path, expected):
    path = make_path(tmp_path)
    with pytest.raises(UserError, match=expected) as error:
        imdb.read_aclimdb(str(path))
    assert "--data_path" in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 0.995])
def test_truncated_archive_is_reported_in_one_line(tmp_path, tiny_archive, fraction):
    content = tiny_archive.read_bytes()
    truncated = _write(tmp_path / "cut.tar.gz", content[:int(len(content) * fraction)])
    with pytest.raises(UserError, match=r"truncated or corrupt|not a readable") as error:
        imdb.read_aclimdb(str(truncated))
    assert "\n" not in str(error.value)


def test_archive_cut_between_two_reviews_is_not_taken_for_a_smaller_dataset(tmp_path):
    whole = tmp_path / "whole.tar"
    with tarfile.open(whole, "w") as archive:  # Uncompressed: the cut is a member boundary.
        for name, content in aclimdb_files(4).items():
            (tmp_path / "member").write_bytes(content)
            archive.add(tmp_path / "member", arcname=name)
    with tarfile.open(whole) as archive:
        last = archive.getmembers()[-1]  # Every class is in the archive before this one.
    cut = _write(tmp_path / "cut.tar", whole.read_bytes()[:last.offset])
    assert len(imdb.read_aclimdb(str(whole))[1]) == 8
    with pytest.raises(UserError, match=r"truncated or corrupt.*before the tar archive's end"):
        imdb.read_aclimdb(str(cut))


@pytest.mark.slow
@pytest.mark.parametrize("make_path, expected", [
    (lambda tmp: _write_zip(tmp / "aclImdb.zip", aclimdb_files(2)), "is a .zip"),
    (lambda tmp: _write(tmp / "cut.tar.gz", write_archive(
        tmp / "a.tar.gz", aclimdb_files()).read_bytes()[:900]), "truncated or corrupt"),
], ids=["zip", "cut-tar-gz"])
def test_trainer_refuses_a_zip_or_cut_archive_in_one_line(tmp_path, make_path, expected):
    path = make_path(tmp_path)
    process = subprocess.run(
        [sys.executable, "-m", "trainer.main", f"--data_path={path}",
         f"--model_dir={tmp_path / 'run'}", "--max_len=64"],
        cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=300)
    assert process.returncode == 2, process.stderr[-3000:]
    errors = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], process.stderr[-3000:]
    assert errors[0].startswith(f"error: --data_path={path} ")
    assert "Traceback" not in process.stderr


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil.txt", "aclImdb/../../x.txt"])
def test_archive_members_escaping_their_folder_are_refused(tmp_path, member):
    files = {**aclimdb_files(2), member: b"payload"}
    archive = write_archive(tmp_path / "hostile.tar.gz", files)
    with pytest.raises(UserError, match="outside its folder"):
        imdb.read_aclimdb(str(archive))
    assert not (tmp_path.parent / "evil.txt").exists()


@pytest.mark.parametrize("make_path", [write_tree, lambda tmp, files: write_archive(
    tmp / "a.tar.gz", files)], ids=["folder", "archive"])
@pytest.mark.parametrize("review, byte", [
    (b"caf\xe9 latin-1 text", 3),
    # Past the first chunk read, with a UTF-8 character cut by the chunk before it.
    (b"x" * (data.READ_CHUNK - 1) + "\u00e9".encode() + b"y" * 99 + b"\xff", 2**20 + 100),
])
def test_review_that_is_not_utf8_names_the_file_and_byte(tmp_path, make_path, review, byte):
    files = aclimdb_files(2)
    files["aclImdb/train/pos/0_8.txt"] = review
    path = make_path(tmp_path, files)
    with pytest.raises(UserError, match=rf"train/pos/0_8.txt is not valid UTF-8 \(.* at byte "
                                        rf"{byte}\)") as error:
        imdb.read_aclimdb(str(path), data.text_limit(Config(max_len=8)))
    assert "\n" not in str(error.value)


def test_text_limit_keeps_what_max_len_tokens_can_use_on_the_truncated_side():
    assert data.text_limit(Config(max_len=500)).chars >= 20_000  # Real reviews: < 14,000.
    assert data.text_limit(Config(max_len=4000)).chars == 4000 * data._CHARS_PER_TOKEN
    assert data.text_limit(Config()).from_end  # Keras' default: a review's last tokens.
    assert data.text_limit(Config(padding="pre", truncating="pre")).from_end
    assert not data.text_limit(Config(padding="pre", truncating="post")).from_end
    assert data.TextLimit(3).cut("abcdef") == "abc"
    assert data.TextLimit(3, from_end=True).cut("abcdef") == "def"
    assert data.TextLimit().cut("abcdef") == "abcdef"


# The smallest window there is, kept from the end: what the IMDB tests below read with.
_SMALLEST_WINDOW = Config(max_len=8, truncating="pre")


@pytest.fixture(scope="module")
def imdb_cut(imdb_archive) -> tuple[data.Split, data.Split]:
    """The real archive's (train, test), read once for this module, cut on read."""
    return imdb.read_aclimdb(imdb_archive, data.text_limit(_SMALLEST_WINDOW))


def test_no_real_review_is_cut_so_encode_is_unchanged(imdb_archive, imdb_cut):
    config = _SMALLEST_WINDOW
    whole_train, whole_test = imdb.read_aclimdb(imdb_archive)
    cut_train, cut_test = imdb_cut
    assert cut_train.reviews.dtype == object
    assert list(cut_train.reviews) == list(whole_train.reviews)
    assert list(cut_test.reviews) == list(whole_test.reviews)
    longest = np.argsort([len(review) for review in whole_train.reviews])[-500:]
    vectorizer = data.make_vectorizer(whole_train.take(longest), config)
    for truncating in ("pre", "post"):
        config = Config(max_len=200, truncating=truncating)
        whole = data.encode(whole_train.take(longest), vectorizer, config)
        cut = data.encode(cut_train.take(longest), vectorizer, config)
        assert whole.ids.to_list() == cut.ids.to_list()


@pytest.mark.parametrize("make_path", [write_tree, lambda tmp, files: write_archive(
    tmp / "a.tar.gz", files)], ids=["folder", "archive"])
@pytest.mark.parametrize("truncating", ["pre", "post"])
def test_a_huge_review_is_cut_on_read_and_the_model_sees_the_same_tokens(tmp_path, make_path,
                                                                         truncating):
    config = Config(max_len=64, truncating=truncating, vocab_size=2000)
    words = " ".join(f"w{i % 997}" for i in range(400_000))  # About 2 MB, on one line.
    files = aclimdb_files(2)
    files["aclImdb/train/pos/9_9.txt"] = words.encode()
    path = make_path(tmp_path, files)
    whole, _ = imdb.read_aclimdb(str(path))
    cut, _ = imdb.read_aclimdb(str(path), data.text_limit(config))
    index = [len(review) for review in whole.reviews].index(len(words))
    kept = cut.reviews[index]
    assert len(kept) == data.text_limit(config).chars
    assert kept == (words[-len(kept):] if truncating == "pre" else words[:len(kept)])
    vectorizer = data.make_vectorizer(whole, config)
    assert (data.encode(cut, vectorizer, config).ids.to_list()
            == data.encode(whole, vectorizer, config).ids.to_list())
    last_ids = data.encode(cut.take([index]), vectorizer, config).ids.to_list()[0]
    assert len(last_ids) == 64


def test_standardize_removes_line_breaks_punctuation_and_case():
    out = data.standardize(tf.constant(["Great<br /><br />film, REALLY!"]))
    assert out.numpy()[0].decode().split() == ["great", "film", "really"]


def test_vocabulary_comes_from_training_reviews_only():
    train = data.Split(np.array(["good good film", "bad film"], dtype=object),
                       np.array([1, 0], np.int32))
    vectorizer = data.make_vectorizer(train, Config(vocab_size=10))
    vocabulary = vectorizer.get_vocabulary()
    assert vocabulary[:2] == ["", "[UNK]"]
    assert set(vocabulary[2:]) == {"good", "film", "bad"}


@pytest.mark.parametrize("padding, truncating, expected", [
    ("pre", "pre", [[0, 0, 0, 5, 6, 7], [1, 2, 3, 4, 5, 6]]),
    ("post", "post", [[5, 6, 7, 0, 0, 0], [9, 1, 2, 3, 4, 5]]),
    ("post", "pre", [[5, 6, 7, 0, 0, 0], [1, 2, 3, 4, 5, 6]]),  # The defaults.
    ("pre", "post", [[0, 0, 0, 5, 6, 7], [9, 1, 2, 3, 4, 5]]),
])
def test_batches_pad_and_truncate_each_on_its_own_side(padding, truncating, expected):
    config = Config(max_len=6, padding=padding, truncating=truncating)
    split = data.Split(np.array([np.array([5, 6, 7]), np.array([9, 1, 2, 3, 4, 5, 6])],
                                dtype=object), np.array([1, 0], np.int32))
    # Pre-tokenized ids pass through unchanged below --vocab_size.
    encoded = data.encode(split, None, config)
    ids, labels = next(iter(data.batches(encoded, config, global_batch_size=2)))
    assert ids.numpy().tolist() == expected
    assert labels.numpy().tolist() == [1, 0]


def test_training_batches_are_full_shuffled_per_seed_and_keep_every_example_in_eval():
    config = Config(max_len=4)
    split = data.Split(np.array([np.array([i + 3]) for i in range(10)], dtype=object),
                       np.arange(10, dtype=np.int32) % 2)
    encoded = data.encode(split, None, config)

    def first_ids(seed, drop):
        batches = list(data.batches(encoded, config, global_batch_size=4, shuffle_seed=seed,
                                    drop_remainder=drop))
        return [b[0][:, -1].numpy().tolist() for b in batches]

    train = first_ids(1, True)
    assert [len(b) for b in train] == [4, 4]
    assert train == first_ids(1, True)  # Same seed, same order.
    assert train != first_ids(2, True)
    assert sorted(i for batch in first_ids(None, False) for i in batch) == list(range(3, 13))


def test_keras_npz_source_uses_the_articles_encoding(tmp_path):
    path = tmp_path / "imdb.npz"
    ragged = np.empty(4, dtype=object)
    for i, ids in enumerate([[1, 2], [5, 9998], [3], [20000, 7]]):
        ragged[i] = ids
    np.savez(path, x_train=ragged, y_train=np.array([1, 0, 1, 0]),
             x_test=ragged, y_test=np.array([0, 1, 0, 1]))
    splits = sources.load(Config(data_source="keras_npz", data_path=str(path),
                              validation_split=0.0, early_stopping_patience=0))
    assert splits.pretokenized
    encoded = data.encode(splits.train, None, Config(max_len=4, padding="post"))
    ids = encoded.ids.to_list()
    # Start token 1, ids shifted by index_from=3, ids past vocab_size become OOV (2).
    assert ids == [[1, 4, 5], [1, 8, 2], [1, 6], [1, 2, 10]]


def test_keras_npz_without_its_arrays_is_reported(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, x=np.zeros(3))
    with pytest.raises(UserError, match="lacks array"):
        imdb.read_keras_npz(str(path))


def _valid_npz(path, **changes):
    ragged = np.empty(4, dtype=object)
    ragged[:] = [[1, 2], [5, 9998], [3], [20000, 7]]
    arrays = {"x_train": ragged, "y_train": np.array([1, 0, 1, 0]),
              "x_test": ragged, "y_test": np.array([0, 1, 0, 1]), **changes}
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


def _cut_in_half(path):
    return _write(path, path.read_bytes()[:len(path.read_bytes()) // 2])


def _damage_middle(path):
    content = bytearray(path.read_bytes())
    middle = len(content) // 3
    content[middle:middle + 40] = bytes(40)  # Inside the first array, before the directory.
    return _write(path, bytes(content))


@pytest.mark.parametrize("make_path, expected", [
    (lambda tmp: _cut_in_half(_valid_npz(tmp / "imdb.npz")), r"is not an \.npz file"),
    (lambda tmp: _write(tmp / "imdb.npz", b"not a zip"), r"is not an \.npz file"),
    (lambda tmp: _damage_middle(_valid_npz(tmp / "imdb.npz")), r"is a damaged \.npz"),
    (lambda tmp: _valid_npz(tmp / "imdb.npz", y_test=None),
     r"lacks array y_test \(it has x_train, y_train, x_test\)"),
    (lambda tmp: _valid_npz(tmp / "imdb.npz", y_train=np.array([1, 0, 1])),
     r"x_train has shape \(4,\) and y_train \(3,\)"),
    (lambda tmp: _valid_npz(tmp / "imdb.npz", y_test=np.array([0, 1, 2, 1])),
     r"y_test holds labels other than 0 and 1 \(e.g. 2\)"),
    (lambda tmp: _valid_npz(tmp / "imdb.npz", y_test=np.array(["a", "b", "c", "d"])),
     "y_test holds labels other than 0 and 1"),
    (lambda tmp: _valid_npz(tmp / "imdb.npz", x_test=np.array(["w", "x", "y", "z"])),
     r"x_test\[0\] is not a list of token ids"),
    (lambda tmp: _valid_npz(tmp / "imdb.npz", x_train=np.array([[1], [-4], [2], [3]])),
     r"x_train\[1\] is not a list of token ids"),
])
def test_broken_keras_npz_is_one_line_naming_the_file(tmp_path, make_path, expected):
    path = make_path(tmp_path)
    with pytest.raises(UserError, match=expected) as error:
        sources.load(Config(data_source="keras_npz", data_path=str(path)))
    assert str(error.value).startswith(f"--data_path={path}")
    assert "\n" not in str(error.value)


def test_keras_npz_of_a_2d_array_reads_one_review_a_row(tmp_path):
    path = _valid_npz(tmp_path / "imdb.npz", x_train=np.array([[4, 5], [6, 7], [8, 9], [1, 1]]))
    train, _ = imdb.read_keras_npz(str(path))
    assert [ids.tolist() for ids in train.reviews] == [[1, 7, 8], [1, 9, 10], [1, 11, 12],
                                                       [1, 4, 4]]


def test_tfds_source_reads_imdb_reviews():
    import tensorflow_datasets as tfds  # A dependency (setup.py): never skipped.

    with tfds.testing.mock_data(num_examples=8):
        splits = sources.load(Config(data_source="tfds", validation_split=0.25))
    assert len(splits.train) + len(splits.validation) == 8
    assert len(splits.test) == 8
    assert isinstance(splits.train.reviews[0], str)


def test_tfds_reviews_are_cut_on_read_on_the_kept_side(monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(imdb, "_TFDS_BATCH", 3)  # Read in batches: 3, 3 and a partial 2.
    count = 8
    with tfds.testing.mock_data(num_examples=count):
        whole, _ = imdb.read_tfds("")
    with tfds.testing.mock_data(num_examples=count):
        cut, _ = imdb.read_tfds("", data.TextLimit(5, from_end=True))
    with tfds.testing.mock_data(num_examples=count):  # tfds' own order, one at a time.
        one_by_one = list(tfds.as_numpy(tfds.load("imdb_reviews", split="train",
                                                  as_supervised=True)))
    assert list(whole.reviews) == [text.decode("utf-8", "replace") for text, _ in one_by_one]
    assert whole.labels.tolist() == [int(label) for _, label in one_by_one]
    assert whole.labels.dtype == np.int32
    assert cut.reviews.dtype == object
    assert list(cut.reviews) == [review[-5:] for review in whole.reviews]


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def _write_zip(path, files: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return path


def _write_npz(path, x, y):
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    return path


def _old_balanced_subset(labels, size, rng):
    """balanced_subset as it was for two classes, before K classes: the reference."""
    if not size or size >= len(labels):
        return np.arange(len(labels))
    chosen = []
    for label, count in ((0, size - size // 2), (1, size // 2)):
        members = np.flatnonzero(labels == label)
        chosen.append(rng.choice(members, size=min(count, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def _old_stratified_split(labels, fraction, rng):
    held_out = []
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        held_out.append(rng.choice(members, size=round(fraction * len(members)), replace=False))
    held = np.sort(np.concatenate(held_out)).astype(np.int64)
    return np.setdiff1d(np.arange(len(labels)), held), held


@pytest.mark.parametrize("max_train, max_test, validation, seed", [
    (4000, 2000, 0.1, 42), (4001, 1999, 0.1, 3), (0, 0, 0.1, 42), (600, 200, 0.25, 7)])
def test_imdb_subsets_and_splits_are_the_same_as_before_k_classes(imdb_archive, imdb_cut,
                                                                  monkeypatch, max_train,
                                                                  max_test, validation, seed):
    from trainer import sources
    train, test = imdb_cut
    rng = np.random.default_rng(seed)
    old_train = train.take(_old_balanced_subset(train.labels, max_train, rng))
    old_test = test.take(_old_balanced_subset(test.labels, max_test, rng))
    kept, held = _old_stratified_split(old_train.labels, validation, rng)
    # The archive read once (above), not once per load.
    monkeypatch.setitem(sources.READERS, "aclimdb",
                        lambda config, limit: (train, test, imdb.CLASSES))
    config = Config(data_path=imdb_archive, max_train_examples=max_train,
                    max_test_examples=max_test, validation_split=validation, seed=seed,
                    max_validation_examples=0)  # Before the cap: the whole share.
    splits = sources.load(config)
    assert list(splits.train.reviews) == list(old_train.take(kept).reviews)
    assert list(splits.validation.reviews) == list(old_train.take(held).reviews)
    assert list(splits.test.reviews) == list(old_test.reviews)
    assert splits.class_names == ("negative", "positive")
    # The comparison can fail: another seed draws other reviews, which the reference's
    # draws would not match.
    other = sources.load(config.replace(seed=seed + 1))
    assert list(other.validation.reviews) != list(splits.validation.reviews)
    if max_train:
        assert list(other.train.reviews) != list(splits.train.reviews)
    if max_test:
        assert list(other.test.reviews) != list(splits.test.reviews)


def test_validation_holds_out_its_share_up_to_the_cap_and_the_rest_trains(imdb_archive, imdb_cut,
                                                                          monkeypatch):
    from trainer import sources
    train, test = imdb_cut
    monkeypatch.setitem(sources.READERS, "aclimdb",
                        lambda config, limit: (train, test, imdb.CLASSES))
    capped = sources.load(Config(data_path=imdb_archive))  # 10% of 25,000, at most 500.
    assert len(capped.validation) == 500 and len(capped.train) == 24_500
    assert np.bincount(capped.validation.labels).tolist() == [250, 250]
    # The same reviews as asking for that share outright (0.02 of 25,000).
    share = sources.load(Config(data_path=imdb_archive, validation_split=0.02))
    assert list(share.validation.reviews) == list(capped.validation.reviews)
    uncapped = sources.load(Config(data_path=imdb_archive, max_validation_examples=0))
    assert len(uncapped.validation) == 2500
    # Below the cap the share is what it was: 10% of 4,000.
    small = sources.load(Config(data_path=imdb_archive, max_train_examples=4000))
    assert len(small.validation) == 400
