"""trainer/ema.py: the weights' moving average warms up, checkpoints like Adam, distributes."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import ema

MOMENTUM = 0.99
TARGET = np.array([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]], np.float32)


def warm_average(trajectory: list[np.ndarray], momentum: float) -> np.ndarray:
    """The closed form: each step's weights times their share of the warm-up average.

    Step k's weights (k = 1..N) enter with ``1 - m(k-1)`` and then decay by the
    momentum of every later step, ``m(t) = min(momentum, (1 + t) / (10 + t))``,
    ``m(0) = 0``.
    """
    def m(t: int) -> float:
        return 0.0 if t == 0 else min(momentum, (1 + t) / (10 + t))

    n = len(trajectory)
    shares = [(1 - m(k - 1)) * np.prod([m(j - 1) for j in range(k + 1, n + 1)])
              for k in range(1, n + 1)]
    assert np.isclose(sum(shares), 1.0)
    return sum(share * weights for share, weights in zip(shares, trajectory, strict=True))


def train(optimizer: keras.optimizers.Optimizer,
          steps: int) -> tuple[keras.Variable, list[np.ndarray]]:
    """Minimizes a quadratic with ``optimizer``; returns the variable and its trajectory.

    The gradients are scaled as the loss is (``scale_loss``: 1 but under loss scaling).
    """
    weights = keras.Variable(np.zeros_like(TARGET), name="w")
    optimizer.build([weights])
    scale = float(optimizer.scale_loss(1.0))
    trajectory = []
    for step in range(steps):
        # A gradient that changes direction, so that the average differs from the last weights.
        gradient = (weights.numpy() - TARGET) * (1.0 + 0.5 * np.sin(step))
        optimizer.apply([tf.constant(gradient * scale)], [weights])
        trajectory.append(weights.numpy().copy())
    return weights, trajectory


def average_of(optimizer: keras.optimizers.Optimizer, weights: keras.Variable) -> np.ndarray:
    before = weights.numpy().copy()
    optimizer.finalize_variable_values([weights])
    average = weights.numpy().copy()
    weights.assign(before)
    return average


@pytest.mark.parametrize("steps", [1, 10, 100])
def test_the_average_is_the_closed_form_warmup_average(steps):
    optimizer = ema.WarmAdam(learning_rate=0.05, use_ema=True, ema_momentum=MOMENTUM)
    weights, trajectory = train(optimizer, steps)
    np.testing.assert_allclose(average_of(optimizer, weights),
                               warm_average(trajectory, MOMENTUM), rtol=1e-5, atol=1e-6)


def test_without_the_warmup_keras_average_keeps_the_early_weights():
    """Why: after 100 steps Keras' average is still a third the first step's weights."""
    keras_adam = keras.optimizers.Adam(learning_rate=0.05, use_ema=True, ema_momentum=MOMENTUM)
    weights, trajectory = train(keras_adam, 100)
    keras_error = np.abs(average_of(keras_adam, weights) - trajectory[-1]).max()
    warm = ema.WarmAdam(learning_rate=0.05, use_ema=True, ema_momentum=MOMENTUM)
    weights, trajectory = train(warm, 100)
    warm_error = np.abs(average_of(warm, weights) - trajectory[-1]).max()
    assert warm_error < keras_error / 3


def test_inside_loss_scaling_the_average_is_the_same():
    optimizer = keras.optimizers.LossScaleOptimizer(
        ema.WarmAdam(learning_rate=0.05, use_ema=True, ema_momentum=MOMENTUM))
    weights, trajectory = train(optimizer, 10)
    assert float(optimizer.scale_loss(1.0)) > 1  # The gradients were scaled and unscaled.
    np.testing.assert_allclose(average_of(optimizer, weights),
                               warm_average(trajectory, MOMENTUM), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("writer, reader", [(keras.optimizers.Adam, ema.WarmAdam),
                                            (ema.WarmAdam, keras.optimizers.Adam)])
def test_checkpoints_are_adams_and_restore_both_ways(tmp_path, writer, reader):
    saved = writer(learning_rate=0.05, use_ema=True, ema_momentum=MOMENTUM)
    weights, _ = train(saved, 7)
    path = tf.train.Checkpoint(weights=weights, optimizer=saved).save(str(tmp_path / "ckpt"))

    restored = reader(learning_rate=0.05, use_ema=True, ema_momentum=MOMENTUM)
    fresh = keras.Variable(np.zeros_like(TARGET), name="w")
    restored.build([fresh])
    tf.train.Checkpoint(weights=fresh, optimizer=restored).restore(path).assert_consumed()
    assert int(restored.iterations.numpy()) == 7
    np.testing.assert_array_equal(fresh.numpy(), weights.numpy())
    for want, got in zip(saved.variables, restored.variables, strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=want.name)
    other = reader(learning_rate=0.05, use_ema=True, ema_momentum=MOMENTUM)
    other_weights, _ = train(other, 1)
    other_path = tf.train.Checkpoint(weights=other_weights, optimizer=other).save(
        str(tmp_path / "other"))
    # The same variables under the same names: the checkpoints are interchangeable.
    assert tf.train.list_variables(path) == tf.train.list_variables(other_path)


# Run in a process of its own: logical devices can only be set before TensorFlow starts.
_MIRRORED = r"""
import json, sys
import numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from trainer import ema
rng = np.random.default_rng(0)
ids = rng.integers(1, 50, size=(64, 12)).astype(np.int32)
labels = (ids[:, 0] > 25).astype(np.float32)

def averaged(strategy):
    keras.utils.set_random_seed(1)
    with strategy.scope():
        net = keras.Sequential([keras.Input((12,), dtype="int32"), keras.layers.Embedding(50, 4),
                                keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
        opt = ema.WarmAdam(learning_rate=0.05, use_ema=True, ema_momentum=0.99)
        opt.build(net.trainable_variables)
    batches = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((ids, labels)).batch(16).repeat(3))

    @tf.function
    def step(x, y):
        def replica(x, y):
            with tf.GradientTape() as tape:
                loss = tf.nn.compute_average_loss(
                    keras.losses.mean_squared_error(y[:, None], net(x)), global_batch_size=16)
            grads = tape.gradient(loss, net.trainable_variables)
            opt.apply_gradients(zip(grads, net.trainable_variables))
        strategy.run(replica, args=(x, y))

    for x, y in batches:
        step(x, y)
    opt.finalize_variable_values(net.trainable_variables)
    return [v.numpy().tolist() for v in net.trainable_variables], int(opt.iterations.numpy())

devices = [d.name for d in tf.config.list_logical_devices("CPU")]
one, steps = averaged(tf.distribute.OneDeviceStrategy(devices[0]))
two, mirrored_steps = averaged(tf.distribute.MirroredStrategy(devices))
print(json.dumps({"one": one, "two": two, "steps": [steps, mirrored_steps]}))
"""


def test_two_mirrored_replicas_average_as_one_device():
    process = subprocess.run([sys.executable, "-c", _MIRRORED], capture_output=True, text=True,
                             timeout=300, check=False)
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert result["steps"] == [12, 12]
    for one, two in zip(result["one"], result["two"], strict=True):
        np.testing.assert_allclose(np.array(two), np.array(one), rtol=1e-4, atol=1e-6)


def test_warmup_momentum_values():
    assert float(ema.warmup_momentum(0, 0.99)) == 0.0
    np.testing.assert_allclose(float(ema.warmup_momentum(1, 0.99)), 2 / 11, rtol=1e-6)
    np.testing.assert_allclose(float(ema.warmup_momentum(10_000, 0.99)), 0.99, rtol=1e-6)


def test_a_layers_learning_rate_scale_multiplies_only_its_weights_step():
    """--embedding_lr_scale: Adam's first step is lr * sign(g); the embedding's is 10x that."""
    embedding = keras.layers.Embedding(4, 2, name="embedding")
    dense = keras.layers.Dense(1, name="dense")
    model = keras.Sequential([keras.Input((3,), dtype="int32"), embedding,
                              keras.layers.Flatten(), dense])
    optimizer = ema.WarmAdam(learning_rate=0.01, lr_scales={"embedding": 10.0})
    before = [v.numpy().copy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(tf.constant([[1, 2, 3]])))
    optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    steps = {v.path: np.abs(v.numpy() - b).max()
             for v, b in zip(model.trainable_variables, before, strict=True)}
    assert steps[embedding.embeddings.path] == pytest.approx(0.1, rel=1e-3)
    assert steps[dense.kernel.path] == pytest.approx(0.01, rel=1e-3)
    assert ema.WarmAdam.from_config(optimizer.get_config()).lr_scales == {"embedding": 10.0}
