"""trainer/model.py: the article's model, its optimizer and the cuDNN check."""

from __future__ import annotations

import keras
import numpy as np
import pytest

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
        assert isinstance(model.make_optimizer(config), keras.optimizers.LossScaleOptimizer)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert not isinstance(model.make_optimizer(Config()), keras.optimizers.LossScaleOptimizer)
