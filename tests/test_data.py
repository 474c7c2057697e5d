"""trainer/data.py: the three sources, subsets, splits, vectorization and batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import aclimdb_files, write_archive, write_tree
from trainer import data
from trainer.config import Config
from trainer.errors import UserError


def test_folder_and_official_archive_give_the_same_reviews(tiny_aclimdb, tiny_archive):
    from_folder = data.read_aclimdb(str(tiny_aclimdb))
    from_archive = data.read_aclimdb(str(tiny_archive))
    for folder_split, archive_split in zip(from_folder, from_archive, strict=True):
        assert list(folder_split.reviews) == list(archive_split.reviews)
        assert list(folder_split.labels) == list(archive_split.labels)
    train, test = from_archive
    assert len(train) == len(test) == 24  # train/unsup of the official archive is skipped.
    assert sorted(set(train.labels)) == [0, 1]


def test_parent_folder_of_aclimdb_is_accepted(tiny_aclimdb):
    train, _ = data.read_aclimdb(str(tiny_aclimdb.parent))
    assert len(train) == 24


def test_load_subsets_are_balanced_reproducible_and_validation_comes_from_train(tiny_archive):
    config = Config(data_path=str(tiny_archive), max_train_examples=20, max_test_examples=10,
                    validation_split=0.2, seed=3)
    splits = data.load(config)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (16, 4, 10)
    assert np.bincount(splits.test.labels).tolist() == [5, 5]
    assert np.bincount(splits.validation.labels).tolist() == [2, 2]
    test_reviews = set(splits.test.reviews)
    assert not test_reviews & set(splits.validation.reviews)
    assert not set(splits.train.reviews) & set(splits.validation.reviews)
    again = data.load(config)
    assert list(again.train.reviews) == list(splits.train.reviews)
    other_seed = data.load(dataclasses.replace(config, seed=4))
    assert list(other_seed.train.reviews) != list(splits.train.reviews)


@pytest.mark.parametrize("make_path, expected", [
    (lambda tmp: tmp / "missing.tar.gz", "does not exist"),
    (lambda tmp: tmp, "has no train/ folder"),
    (lambda tmp: _write(tmp / "junk.tar.gz", b"not an archive"), "not a readable .tar.gz"),
    (lambda tmp: write_archive(tmp / "empty.tar.gz", {"aclImdb/README": b"x"}),
     "no train reviews of both classes"),
])
def test_bad_data_path_names_the_flag(tmp_path, make_path, expected):
    path = make_path(tmp_path)
    with pytest.raises(UserError, match=expected) as error:
        data.read_aclimdb(str(path))
    assert "--data_path" in str(error.value)


def test_truncated_archive_is_reported(tmp_path, tiny_archive):
    truncated = _write(tmp_path / "cut.tar.gz", tiny_archive.read_bytes()[:600])
    with pytest.raises(UserError, match=r"truncated or corrupt|not a readable"):
        data.read_aclimdb(str(truncated))


@pytest.mark.parametrize("member", ["../evil.txt", "/etc/evil.txt", "aclImdb/../../x.txt"])
def test_archive_members_escaping_their_folder_are_refused(tmp_path, member):
    files = {**aclimdb_files(2), member: b"payload"}
    archive = write_archive(tmp_path / "hostile.tar.gz", files)
    with pytest.raises(UserError, match="outside its folder"):
        data.read_aclimdb(str(archive))
    assert not (tmp_path.parent / "evil.txt").exists()


def test_review_that_is_not_utf8_names_the_file(tmp_path):
    files = aclimdb_files(2)
    files["aclImdb/train/pos/0_8.txt"] = b"caf\xe9 latin-1 text"
    root = write_tree(tmp_path, files)
    with pytest.raises(UserError, match=r"train/pos/0_8.txt is not valid UTF-8"):
        data.read_aclimdb(str(root))


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


@pytest.mark.parametrize("padding, expected", [
    ("pre", [[0, 0, 0, 5, 6, 7], [1, 2, 3, 4, 5, 6]]),
    ("post", [[5, 6, 7, 0, 0, 0], [9, 1, 2, 3, 4, 5]]),
])
def test_batches_pad_and_truncate_on_the_padding_side(padding, expected):
    config = Config(max_len=6, padding=padding)
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
    splits = data.load(Config(data_source="keras_npz", data_path=str(path),
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
        data.read_keras_npz(str(path))


def test_tfds_source_reads_imdb_reviews():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=8):
        splits = data.load(Config(data_source="tfds", validation_split=0.25))
    assert len(splits.train) + len(splits.validation) == 8
    assert len(splits.test) == 8
    assert isinstance(splits.train.reviews[0], str)


def _write(path, content: bytes):
    path.write_bytes(content)
    return path
