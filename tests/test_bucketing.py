"""Length bucketing (trainer/data.py ``batches``) and what it must not change: predictions."""

from __future__ import annotations

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import config as config_lib
from trainer import data, loop, model
from trainer.config import Config

from .test_config import parse


def encoded_split(lengths: list[int], config: Config) -> data.Encoded:
    """Reviews whose ids are 3, 4, ... (never 0), of the given lengths, labelled by index."""
    reviews = np.empty(len(lengths), dtype=object)
    for i, length in enumerate(lengths):
        reviews[i] = np.arange(3, 3 + length, dtype=np.int32)
    labels = np.arange(len(lengths), dtype=np.int32) % 2
    return data.encode(data.Split(reviews, labels), None, config)


def lognormal_lengths(count: int, seed: int = 0) -> list[int]:
    """IMDB-like lengths: median about 170, a long tail, at least 1."""
    rng = np.random.default_rng(seed)
    return [max(1, int(x)) for x in rng.lognormal(np.log(170), 0.6, size=count)]


def as_lists(batches: tf.data.Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(ids.numpy(), labels.numpy()) for ids, labels in batches]


def real_length(row: np.ndarray) -> int:
    return int(np.count_nonzero(row))


# --- What the model computes ---------------------------------------------------------------

@pytest.mark.parametrize("padding", ["post", "pre"])
def test_a_reviews_prediction_does_not_depend_on_how_far_it_is_padded(padding):
    config = Config(bucket_by_length=True, padding=padding)
    assert config.uses_mask
    net = model.build(config)
    rng = np.random.default_rng(0)
    reviews = [rng.integers(1, config.vocab_size, size=n).astype(np.int32) for n in (7, 60, 120)]

    def predict(width: int) -> np.ndarray:
        ids = keras.utils.pad_sequences(reviews, maxlen=width, padding=padding)
        return net.predict(ids, verbose=0)[:, 0]

    at_120, at_500 = predict(120), predict(500)
    np.testing.assert_allclose(at_120, at_500, atol=1e-5)
    # Alone and unpadded, a review gets the same prediction as in its padded batch.
    alone = net.predict(reviews[0][None, :], verbose=0)[0, 0]
    assert abs(alone - at_500[0]) < 1e-5


def test_without_the_mask_padding_changes_the_prediction():
    # The article's settings: why bucketing needs the mask (and that the test above can fail).
    config = Config(bucket_by_length=False, padding="pre")
    assert not config.uses_mask
    keras.utils.set_random_seed(0)
    net = model.build(config)
    # Training gives the padding id an embedding like any other; a fresh one's is near zero,
    # which would make the effect as small as the rounding error.
    embeddings = net.get_layer("embedding").embeddings
    weights = embeddings.numpy()
    weights[0] = 0.5
    embeddings.assign(weights)
    review = [np.arange(3, 10, dtype=np.int32)]
    short, long = (net.predict(keras.utils.pad_sequences(review, maxlen=width), verbose=0)
                   for width in (7, 500))  # Unpadded, and padded as the article does.
    assert abs(float(short[0, 0]) - float(long[0, 0])) > 1e-3


# --- Batches -------------------------------------------------------------------------------

def test_training_batches_are_full_and_padded_on_the_right_to_their_longest_review():
    config = Config(bucket_by_length=True, padding="post", max_len=500, bucket_window_batches=4)
    lengths = lognormal_lengths(203)
    encoded = encoded_split(lengths, config)
    batches = as_lists(data.batches(encoded, config, global_batch_size=8, shuffle_seed=3,
                                    drop_remainder=True))
    assert len(batches) == 203 // 8
    seen = []
    for ids, labels in batches:
        assert ids.shape[0] == labels.shape[0] == 8
        row_lengths = [real_length(row) for row in ids]
        assert ids.shape[1] == max(row_lengths)  # Only as wide as its longest review.
        for row, length in zip(ids, row_lengths, strict=True):
            assert (np.diff(row[:length]) == 1).all()  # The review, in order,
            assert not row[length:].any()  # then padding on the right.
        seen.extend(row_lengths)
    assert len(seen) == 203 // 8 * 8  # Fewer than one batch of reviews left out.
    assert all(length <= 500 for length in seen)


def test_epoch_order_sorts_windows_by_length_and_leaves_the_partial_batch_last():
    config = Config(bucket_by_length=True, bucket_window_batches=2)
    lengths = tf.constant([5, 1, 4, 2, 3], tf.int64)

    def order(**kwargs) -> list[int]:
        return data.epoch_order(lengths, config, global_batch_size=2, **kwargs).numpy().tolist()

    assert order() == [1, 3, 2, 0, 4]  # Lengths 1, 2 | 4, 5 | 3: the docstring's example.
    assert order(drop_remainder=True) == [1, 3, 2, 0]
    shuffled = order(shuffle_seed=7)
    assert sorted(shuffled) == [0, 1, 2, 3, 4] and shuffled == order(shuffle_seed=7)
    unbucketed = config.replace(bucket_by_length=False)
    assert data.epoch_order(lengths, unbucketed, global_batch_size=2).numpy().tolist() == [
        0, 1, 2, 3, 4]


def test_evaluation_batches_keep_every_review_once():
    config = Config(bucket_by_length=True, bucket_window_batches=3)
    lengths = lognormal_lengths(101, seed=1)
    encoded = encoded_split(lengths, config)
    batches = data.batches(encoded, config, global_batch_size=8)
    assert int(batches.cardinality()) == 13  # ceil(101 / 8), known ahead for progress lines.
    got = as_lists(batches)
    assert len(got) == 13
    assert sorted(real_length(row) for ids, _ in got for row in ids) == sorted(
        min(length, config.max_len) for length in lengths)
    assert sum(len(labels) for _, labels in got) == 101


def test_bucketing_pads_far_less_than_max_len():
    config = Config(bucket_by_length=True, bucket_window_batches=20)
    lengths = [min(n, config.max_len) for n in lognormal_lengths(2000, seed=2)]
    batches = as_lists(data.batches(encoded_split(lengths, config), config,
                                    global_batch_size=16, shuffle_seed=1, drop_remainder=True))
    padded = sum(ids.size for ids, _ in batches)
    real = sum(real_length(row) for ids, _ in batches for row in ids)
    assert padded < 1.1 * real
    assert sum(len(ids) for ids, _ in batches) * config.max_len > 2 * real  # Without bucketing.


def test_bucketed_epochs_are_reproducible_per_seed_and_mix_lengths():
    config = Config(bucket_by_length=True, bucket_window_batches=50)
    encoded = encoded_split(lognormal_lengths(800, seed=3), config)

    def epoch(seed: int) -> list[list[int]]:
        """Each batch's review lengths, then its width."""
        batches = data.batches(encoded, config, global_batch_size=16, shuffle_seed=seed,
                               drop_remainder=True)
        return [[*(real_length(row) for row in ids), ids.shape[1]]
                for ids, _ in as_lists(batches)]

    first = epoch(1)
    assert first == epoch(1)  # Resuming mid-epoch relies on the same order.
    assert first != epoch(2)
    widths = [batch[-1] for batch in first]
    # Short and long batches alternate through the epoch instead of running in order.
    assert widths != sorted(widths) and widths != sorted(widths, reverse=True)
    assert max(widths[:25]) > np.median(widths) > min(widths[:25])


def test_pre_padding_puts_the_padding_on_the_left():
    config = Config(bucket_by_length=True, padding="pre", max_len=8)
    encoded = encoded_split([2, 5, 3], config)
    (ids, _), = as_lists(data.batches(encoded, config, global_batch_size=3))
    assert ids.tolist() == [[0, 0, 0, 3, 4], [0, 0, 3, 4, 5], [3, 4, 5, 6, 7]]


def test_evaluating_batches_of_many_widths_traces_the_step_at_most_a_few_times(tmp_path):
    config = Config(bucket_by_length=True, vocab_size=50, embedding_dim=4, lstm_units=3,
                    bucket_window_batches=1, max_len=60)
    encoded = encoded_split(list(range(1, 61)), config)
    strategy = tf.distribute.get_strategy()
    trainer = loop.Loop(config, strategy, model.build(config), model.make_optimizer(config, 15), 4)
    batches = data.batches(encoded, config, global_batch_size=4)  # 15 batches, 15 widths.
    metrics = trainer.evaluate(batches, "test")
    assert 0.0 <= metrics["test/accuracy"] <= 1.0
    assert trainer.steps.evaluate.experimental_get_tracing_count() <= 3


# --- Settings ------------------------------------------------------------------------------

def test_fast_settings_bucket_and_keep_the_lstm_cudnn_eligible(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    fast = parse("--fast_settings", "--model_dir=/tmp/x")
    assert fast.bucket_by_length and fast.uses_mask and fast.padding == "post"
    assert model.cudnn_blockers(model.build(fast), fast) == []
    assert model.build(fast).count_params() == 373_301
    with_pre = Config(bucket_by_length=True, padding="pre")
    assert any("--padding=post" in reason
               for reason in model.cudnn_blockers(model.build(with_pre), with_pre))


def test_the_fast_settings_are_the_default_and_the_articles_one_flag_away(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    default = parse("--model_dir=/tmp/x")
    assert (default.padding, default.bucket_by_length, default.uses_mask) == ("post", True, True)
    assert default.clip_norm == 0.25 and default.dense_embedding_gradient and default.lean_lstm
    assert default.ema_momentum == 0.99
    article = parse("--article_settings", "--model_dir=/tmp/x")
    assert (article.padding, article.max_len, article.batch_size) == ("pre", 500, 64)
    assert not article.bucket_by_length and not article.uses_mask and article.clip_norm == 0
    assert not article.dense_embedding_gradient and not article.lean_lstm
    assert article.ema_momentum == 0
    assert (article.embedding_lr_scale, article.adam_beta_2) == (1.0, 0.999)  # Keras' Adam.
    assert parse("--article_settings", "--clip_norm=1", "--model_dir=/tmp/x").clip_norm == 1
    smoke = parse("--smoke_test", "--model_dir=/tmp/x")
    assert smoke.bucket_by_length and smoke.max_len == config_lib.PRESETS["smoke_test"]["max_len"]
    assert smoke.presets == ("smoke_test",)


def test_the_mask_follows_from_the_settings_without_changing_them():
    assert Config(bucket_by_length=False, mask_padding=True).uses_mask
    assert not Config(bucket_by_length=False, mask_padding=False).uses_mask
    config = Config(bucket_by_length=True, mask_padding=False)
    assert config.uses_mask and not config.mask_padding  # Derived, not written back.


def test_several_replicas_run_bucketed_batches_one_step_per_call_if_the_gradient_is_sparse():
    # A collective inside one tf.function loop keeps its first shape; bucketed widths change
    # the shape of a sparse embedding gradient, never that of a dense one.
    config = Config(bucket_by_length=True, steps_per_loop=20, vocab_size=50, embedding_dim=4,
                    lstm_units=3, dense_embedding_gradient=False)
    trainer = loop.Loop(config, tf.distribute.get_strategy(), model.build(config),
                        model.make_optimizer(config, 100), 8)
    assert trainer.steps_per_call == 20
    trainer.strategy = types.SimpleNamespace(num_replicas_in_sync=2)
    assert trainer.steps_per_call == 1
    trainer.config = config.replace(bucket_by_length=False)
    assert trainer.steps_per_call == 20
    trainer.config = config.replace(dense_embedding_gradient=True)
    assert trainer.steps_per_call == 20
