"""trainer/lstm.py: LeanLSTM computes what keras.layers.LSTM computes, and saves like it."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import model
from trainer.config import Config
from trainer.lstm import MIN_ROWS_PER_CHAIN, LeanLSTM, cpu_policy, lstm_last_state, usable_cores

BATCH, STEPS, FEATURES, UNITS = 5, 9, 32, 100


def twin_layers(**kwargs: object) -> tuple[keras.layers.LSTM, LeanLSTM]:
    """Keras' LSTM and a LeanLSTM holding the same (non-default, asymmetric) weights."""
    rng = np.random.default_rng(0)
    reference, lean = keras.layers.LSTM(UNITS, **kwargs), LeanLSTM(UNITS, **kwargs)
    for layer in (reference, lean):
        layer.build((None, None, FEATURES))
    weights = [w + rng.normal(scale=0.2, size=w.shape).astype(np.float32)
               for w in reference.get_weights()]
    reference.set_weights(weights)
    lean.set_weights(weights)
    return reference, lean


def output_and_gradients(layer: keras.layers.Layer, inputs: np.ndarray, mask: np.ndarray | None,
                         training: bool) -> list[np.ndarray]:
    """The layer's output and the gradients of a weighted sum of it, in a tf.function."""
    inputs = tf.constant(inputs)

    @tf.function
    def run() -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs, mask=None if mask is None else tf.constant(mask),
                            training=training)
            # Uneven weights, so that a gradient sent to the wrong unit or row shows.
            loss = tf.reduce_sum(outputs * tf.reshape(tf.linspace(-1.0, 2.0, tf.size(outputs)),
                                                     tf.shape(outputs)))
        return [outputs, *tape.gradient(loss, [inputs, *layer.trainable_weights])]

    return [t.numpy() for t in run()]


def padding_mask(padding: str) -> np.ndarray | None:
    """True on the reviews' tokens; one row is all padding, one has none.

    ``holes`` masks steps in the middle too: Keras carries the state across them.
    """
    if padding == "none":
        return None
    lengths = np.array([STEPS, 0, 1, 4, 7])
    mask = np.arange(STEPS)[None, :] < lengths[:, None]
    if padding == "holes":
        mask[:, 1::3] = False
        return mask
    return mask if padding == "post" else mask[:, ::-1].copy()


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("padding", ["none", "post", "pre", "holes"])
def test_outputs_and_gradients_equal_keras_lstm(padding, training):
    inputs = np.random.default_rng(1).normal(size=(BATCH, STEPS, FEATURES)).astype(np.float32)
    reference, lean = twin_layers()
    assert lean.runs_lean(training)
    expected = output_and_gradients(reference, inputs, padding_mask(padding), training)
    actual = output_and_gradients(lean, inputs, padding_mask(padding), training)
    names = ["output", "d inputs", "d kernel", "d recurrent_kernel", "d bias"]
    for name, want, got in zip(names, expected, actual, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=name)


def test_settings_the_lean_loop_lacks_fall_back_to_keras():
    inputs = np.random.default_rng(2).normal(size=(BATCH, STEPS, FEATURES)).astype(np.float32)
    reference, lean = twin_layers(return_sequences=True)
    assert not lean.runs_lean()
    np.testing.assert_allclose(lean(inputs), reference(inputs), atol=1e-6)


def test_the_default_model_runs_lean_and_keeps_keras_weight_names_and_shapes():
    lstm = model.build(Config()).get_layer(model.LSTM_LAYER_NAME)
    assert isinstance(lstm, LeanLSTM) and lstm.runs_lean(training=True)
    assert model.cpu_lstm_kernel(model.build(Config())).startswith("LeanLSTM")
    keras_lstm = model.build(Config(lean_lstm=False)).get_layer(model.LSTM_LAYER_NAME)
    assert type(keras_lstm) is keras.layers.LSTM
    assert {w.path.split("/")[-1]: tuple(w.shape) for w in lstm.weights} == {
        "kernel": (32, 400), "recurrent_kernel": (100, 400), "bias": (400,)}


def test_model_keras_file_round_trip(tmp_path):
    config = Config(vocab_size=50, mask_padding=True, padding="post")
    net = model.build(config)
    ids = np.array([[3, 4, 5, 0, 0], [7, 0, 0, 0, 0]], np.int32)
    path = tmp_path / "model.keras"
    net.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer(model.LSTM_LAYER_NAME), LeanLSTM)
    np.testing.assert_allclose(loaded(ids), net(ids), atol=1e-6)


@pytest.mark.parametrize("policy, lean", [("mixed_float16", True), ("mixed_bfloat16", False)])
def test_mixed_precision_trains_and_bfloat16_falls_back_to_keras(policy, lean):
    try:
        keras.mixed_precision.set_global_policy(policy)
        config = Config(vocab_size=50, mask_padding=True, padding="post")
        net = model.build(config)
        assert net.get_layer(model.LSTM_LAYER_NAME).runs_lean(training=True) == lean
        ids = np.array([[3, 4, 5, 0, 0], [7, 8, 9, 10, 11]], np.int32)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(net(ids, training=True))
        grads = tape.gradient(loss, net.trainable_weights)
        assert all(np.isfinite(tf.convert_to_tensor(g).numpy().astype(np.float32)).all()
                   for g in grads)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("padding", ["post", "holes"])  # Steps in place, and moved first.
@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("chains", [1, 2, 3])
def test_splitting_the_batch_into_chains_changes_nothing(chains, batch, padding):
    inputs = np.random.default_rng(3).normal(size=(batch, STEPS, FEATURES)).astype(np.float32)
    reference, _ = twin_layers()
    lean = LeanLSTM(UNITS, chains=chains)
    lean.build((None, None, FEATURES))
    lean.set_weights(reference.get_weights())
    mask = padding_mask(padding)[:batch]
    expected = output_and_gradients(reference, inputs, mask, training=True)
    actual = output_and_gradients(lean, inputs, mask, training=True)
    for want, got in zip(expected, actual, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding", ["post", "pre"])
def test_returned_cell_state_and_its_gradient_equal_keras(padding):
    inputs = tf.constant(
        np.random.default_rng(4).normal(size=(BATCH, STEPS, FEATURES)).astype(np.float32))
    mask = tf.constant(padding_mask(padding))
    results = []
    for layer in twin_layers(return_state=True):
        assert not isinstance(layer, LeanLSTM) or layer.runs_lean(training=True)

        @tf.function
        def run(layer: keras.layers.Layer = layer) -> list[tf.Tensor]:
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                output, state_h, state_c = layer(inputs, mask=mask, training=True)
                # The cell state weighs in, so its gradient must flow back through the loop.
                loss = tf.reduce_sum(output * 0.5 + state_c * tf.linspace(-1.0, 2.0, UNITS))
            return [output, state_h, state_c,
                    *tape.gradient(loss, [inputs, *layer.trainable_weights])]

        results.append([t.numpy() for t in run()])
    names = ["output", "state h", "state c", "d inputs", "d kernel", "d recurrent_kernel",
             "d bias"]
    for name, want, got in zip(names, *results, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=name)


def test_a_batch_of_empty_reviews_returns_the_initial_state():
    _, lean = twin_layers()
    inputs = np.zeros((BATCH, STEPS, FEATURES), np.float32)
    output, *grads = output_and_gradients(lean, inputs, np.zeros((BATCH, STEPS), bool),
                                          training=True)
    np.testing.assert_array_equal(output, np.zeros((BATCH, UNITS), np.float32))
    assert all(np.isfinite(g).all() for g in grads)
    # No steps at all (Keras' layer refuses those before the recurrence is reached).
    state = tf.random.stateless_normal([BATCH, UNITS], seed=[1, 2])
    h, c = lstm_last_state(tf.zeros([BATCH, 0, FEATURES]), state, -state, None,
                           *[tf.constant(w) for w in lean.get_weights()], chains=2)
    np.testing.assert_array_equal(h, state)
    np.testing.assert_array_equal(c, -state)


@pytest.mark.parametrize("cores", [1, 2, 8, 16])
@pytest.mark.parametrize("rows", [8, 16, 32, 64, 128, 256, 512])
def test_cpu_policy_gives_a_core_a_chain_while_the_rows_allow(cores, rows):
    chains, threads = cpu_policy(cores, rows)
    assert 1 <= chains <= cores
    assert rows // chains >= min(rows, MIN_ROWS_PER_CHAIN)  # No chain too small to pay.
    # As many chains as the rows allow; never threads per op, which measured slower
    # (docs/performance.md#one-thread-per-op: one chain on 2 threads ran 4.6x and 5.4x
    # slower than on 1 at batch 32).
    assert chains == min(cores, max(1, rows // MIN_ROWS_PER_CHAIN))
    assert threads == 1


@pytest.mark.parametrize("cores, rows, replicas, expected", [
    (2, 64, 1, (2, 1)),     # This machine: two chains, one thread each, as measured.
    (2, 32, 1, (2, 1)),     # The defaults' batch 32: two chains of 16 rows.
    (1, 64, 1, (1, 1)),     # taskset -c 0.
    (16, 64, 1, (8, 1)),    # 8 rows a chain at most 8 chains; 8 cores left to the pipeline.
    (16, 8, 1, (1, 1)),     # One chain's worth of rows: one chain, one thread.
    (8, 512, 1, (8, 1)),
    (8, 32, 2, (4, 1)),     # Two mirrored replicas share the 8 cores: 4 each.
    (2, 32, 2, (1, 1)),
    (16, None, 1, (16, 1)),  # Rows unknown: a chain per core.
])
def test_cpu_policy_examples(cores, rows, replicas, expected):
    assert cpu_policy(cores, rows, replicas=replicas) == expected


def test_default_chains_follow_the_cores_this_process_may_use():
    lean = LeanLSTM(UNITS)
    assert lean.chains_for(64) == cpu_policy(usable_cores(), 64)[0]
    assert lean.chains_for(64) == min(usable_cores(), 64 // MIN_ROWS_PER_CHAIN)
    assert LeanLSTM(UNITS, chains=3).chains_for(64) == 3


def test_one_core_runs_one_chain_under_taskset():
    """A real process confined to one core (``taskset -c 0``) picks one chain."""
    code = ("from trainer.lstm import LeanLSTM, usable_cores; "
            "print(usable_cores(), LeanLSTM(4).chains_for(64))")
    process = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code],
                             capture_output=True, text=True, timeout=300, check=False)
    assert process.returncode == 0, process.stderr[-2000:]
    assert process.stdout.split() == ["1", "1"]
