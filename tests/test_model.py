"""trainer/model.py: the article's model, its optimizer and the cuDNN check."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from trainer import config as config_lib
from trainer import model
from trainer.config import Config


def test_the_articles_model_has_373301_parameters():
    net = model.build(Config())
    assert net.count_params() == 373_301
    assert [layer.name for layer in net.layers] == ["embedding", "lstm", "positive"]


@pytest.mark.parametrize("changes, blocked_by", [
    ({}, None),
    ({"mask_padding": True, "padding": "post"}, None),
    ({"mask_padding": True, "padding": "pre"}, "--padding=post"),
])
def test_cudnn_eligibility_names_the_blocking_setting(changes, blocked_by):
    config = Config(**changes)
    blockers = model.cudnn_blockers(model.build(config), config)
    if blocked_by is None:
        assert blockers == []
    else:
        assert any(blocked_by in reason for reason in blockers)


def test_lstm_settings_that_break_cudnn_are_reported():
    config = Config()
    net = model.build(config)
    lstm = net.get_layer(model.LSTM_LAYER_NAME)
    lstm.cell.recurrent_dropout = 0.2
    assert "LSTM recurrent_dropout is not 0" in model.cudnn_blockers(net, config)


def test_mixed_precision_keeps_the_output_float32_and_scales_the_loss():
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        config = Config(vocab_size=50, max_len=8)
        net = model.build(config)
        out = net(np.ones((2, 8), np.int32))
        assert net.get_layer("lstm").compute_dtype == "float16"
        assert out.dtype == "float32"
        assert isinstance(model.make_optimizer(config, 100), keras.optimizers.LossScaleOptimizer)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert not isinstance(model.make_optimizer(Config(), 100), keras.optimizers.LossScaleOptimizer)


def test_the_embedding_rate_scale_and_beta_2_reach_adam_and_only_the_embedding():
    config = Config(vocab_size=50, embedding_lr_scale=10.0, adam_beta_2=0.99)
    net = model.build(config)
    optimizer = model.make_optimizer(config, 100)
    optimizer.build(net.trainable_variables)
    assert optimizer.beta_2 == 0.99
    assert optimizer._variable_lr_scales == [10.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # The embedding first.
    assert model.make_optimizer(Config(), 100).lr_scales == {"embedding": 10.0}  # The default.


def test_the_optimizer_is_named_adam_ahead_of_the_lstm_layer():
    """Keras' Adam's name: its ops sort before the "lstm" layer's.

    Named "warm_adam" (after "lstm"), Keras' LSTM loop trained
    slower on a 2-core CPU under --article_settings (docs/performance.md,
    "Keras' LSTM under --article_settings"). Checkpoints do not depend
    on it (test_ema restores Adam's into WarmAdam and back).
    """
    optimizer = model.make_optimizer(Config(), 100)
    assert optimizer.name == "adam" < model.LSTM_LAYER_NAME


def _rate_at(optimizer: keras.optimizers.Optimizer, step: int) -> float:
    optimizer.iterations.assign(step)
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def test_the_default_rate_is_a_cosine_over_the_run_and_the_articles_adams_constant():
    default = model.make_optimizer(Config(), total_steps=100)
    default.build([keras.Variable(0.0)])
    assert [_rate_at(default, step) for step in (0, 50, 100)] == pytest.approx(
        [1e-3, 5e-4, 0.0], abs=1e-9)
    article = Config(**config_lib.PRESETS["article_settings"])
    assert model.learning_rate_schedule(article, total_steps=100) == 1e-3
    assert model.learning_rate_schedule(Config(lr_schedule="constant"), total_steps=100) == 1e-3
    with pytest.raises(ValueError, match="needs the run's step count"):  # Else 0 after step 1.
        model.make_optimizer(Config(), total_steps=0)
    cosine = model.make_optimizer(Config(lr_schedule="cosine", warmup_steps=10,
                                         learning_rate=2e-3), total_steps=110)
    cosine.build([keras.Variable(0.0)])
    assert _rate_at(cosine, 0) == 0.0  # The warm-up starts from 0 ...
    assert _rate_at(cosine, 5) == pytest.approx(1e-3)  # ... rises linearly ...
    assert _rate_at(cosine, 10) == pytest.approx(2e-3)  # ... to the peak,
    assert _rate_at(cosine, 60) == pytest.approx(1e-3)  # then halves halfway down,
    assert _rate_at(cosine, 110) == pytest.approx(0.0, abs=1e-9)  # and ends at 0.
    warm = model.make_optimizer(Config(lr_schedule="constant", warmup_steps=4), total_steps=50)
    warm.build([keras.Variable(0.0)])
    assert [_rate_at(warm, step) for step in (2, 4, 50)] == pytest.approx([5e-4, 1e-3, 1e-3])
