"""trainer/steps.py and the loop's plan: named step results, steps counted once, clipping."""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest
import tensorflow as tf

from trainer import checkpoints, loop, model, steps
from trainer.config import Config
from trainer.task import Task


def tiny(task: Task, **changes) -> tuple[Config, loop.Loop]:
    config = Config(**{**dict(vocab_size=30, max_len=6, embedding_dim=4, lstm_units=3,
                              batch_size=4, epochs=3, steps_per_loop=2), **changes})
    tf.keras.utils.set_random_seed(0)
    net = model.build(config, task=task)
    return config, loop.Loop(config, tf.distribute.get_strategy(), net,
                             model.make_optimizer(config, 100), config.batch_size, task=task)


def test_a_train_call_returns_named_sums_of_the_steps_it_ran():
    task = Task(("a", "b", "c"))
    _, trainer = tiny(task)
    ids = np.random.default_rng(0).integers(1, 30, size=(12, 6)).astype(np.int32)
    labels = (np.arange(12) % 3).astype(np.int32)
    iterator = iter(tf.data.Dataset.from_tensor_slices((ids, labels)).batch(4))
    first = trainer.train_steps(iterator, 2)
    assert isinstance(first, steps.TrainSums)
    assert (int(first.steps), int(first.count)) == (2, 8)
    assert 0 <= int(first.correct) <= 8 and float(first.loss_sum) > 0
    rest = trainer.train_steps(iterator, 2)  # Only one batch was left.
    assert (int(rest.steps), int(rest.count)) == (1, 4)
    assert int(trainer.train_steps(iterator, 2).steps) == 0
    assert trainer.step == 3


def test_a_one_step_call_runs_the_function_without_a_loop():
    """--steps_per_loop=1 (the default) never traces the loop: it slowed Keras' LSTM."""
    _, trainer = tiny(Task())
    ids = np.random.default_rng(0).integers(1, 30, size=(8, 6)).astype(np.int32)
    iterator = iter(tf.data.Dataset.from_tensor_slices((ids, np.arange(8) % 2)).batch(4))
    assert [int(trainer.train_steps(iterator, 1).steps) for _ in range(3)] == [1, 1, 0]
    assert trainer.step == 2
    assert trainer.steps.train.experimental_get_tracing_count() == 0
    assert trainer.steps.train_one.experimental_get_tracing_count() == 1


def test_the_plan_counts_whole_batches_and_the_steps_per_call_the_loop_uses():
    _, trainer = tiny(Task())
    plan = trainer.plan(train_examples=19)
    assert plan == loop.Plan(steps_per_epoch=4, total_steps=12, steps_per_call=2)
    assert steps.steps_per_call(trainer.config, replicas=1) == 2
    bucketed = trainer.config.replace(bucket_by_length=True, dense_embedding_gradient=False)
    assert steps.steps_per_call(bucketed, replicas=2) == 1
    trainer.config = bucketed
    trainer.strategy = types.SimpleNamespace(num_replicas_in_sync=2)
    assert trainer.plan(train_examples=19).steps_per_call == 1


def test_fit_on_four_classes_learns_and_records_validation_macro_f1(tmp_path):
    task = Task(("w", "x", "y", "z"))
    config, trainer = tiny(task, learning_rate=0.05, epochs=6)
    rng = np.random.default_rng(1)
    labels = (np.arange(48) % 4).astype(np.int32)
    # Class k's reviews use ids 5k+1 .. 5k+5: learnable.
    ids = np.stack([rng.integers(5 * k + 1, 5 * k + 6, size=6) for k in labels]).astype(np.int32)
    batches = tf.data.Dataset.from_tensor_slices((ids, labels))

    def epoch_batches(epoch: int) -> tf.data.Dataset:
        return batches.shuffle(48, seed=epoch).batch(4, drop_remainder=True)

    datasets = loop.Datasets(train=epoch_batches, train_examples=48,
                             evaluation={"val": batches.batch(4)})
    managers = checkpoints.make_managers(trainer.checkpoint, trainer.best_weights, config,
                                         str(tmp_path))

    class Quiet:  # A loop.Reporter that says nothing.
        def train_call(self, step):
            return contextlib.nullcontext()

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    result = trainer.fit(datasets, trainer.plan(48), Quiet(), *managers)
    assert [h["epoch"] for h in result.history] == list(range(1, 7))
    assert all("val/macro_f1" in h for h in result.history)
    assert result.history[-1]["val/macro_f1"] > result.history[0]["val/macro_f1"]
    assert result.history[-1]["val/accuracy"] > 0.5


def _embedding_and_dense_gradients(scale: float = 1.0) -> list:
    """An embedding gradient with token 2 twice (IndexedSlices) and a dense one."""
    slices = tf.IndexedSlices(tf.constant([[3.0, 0.0], [1.0, 0.0], [0.0, 4.0]]) * scale,
                              tf.constant([2, 5, 2]), tf.constant([6, 2]))
    return [slices, tf.constant([[0.0, 12.0]]) * scale]


def test_clipping_takes_the_norm_of_the_summed_gradient_and_keeps_it_sparse():
    gradients = _embedding_and_dense_gradients()
    # Dense, token 2's rows sum to [3, 4]: norm sqrt(9 + 16 + 1 + 144) = 13.04.
    dense = [tf.convert_to_tensor(g) for g in gradients]
    expected, norm = tf.clip_by_global_norm(dense, 1.3)
    assert float(norm) == pytest.approx(170 ** 0.5)
    clipped = steps.clip_by_global_norm(gradients, 1.3)
    assert isinstance(clipped[0], tf.IndexedSlices)  # Adam still gets the slices as they were.
    for got, want in zip(clipped, expected, strict=True):
        np.testing.assert_allclose(tf.convert_to_tensor(got), want, rtol=1e-6)
    # Below the threshold nothing changes; the loss scale is divided out of the norm.
    unchanged = steps.clip_by_global_norm(gradients, 20.0)
    np.testing.assert_array_equal(tf.convert_to_tensor(unchanged[1]), dense[1])
    scaled = steps.clip_by_global_norm(_embedding_and_dense_gradients(128.0), 1.3, scale=128.0)
    np.testing.assert_allclose(tf.convert_to_tensor(scaled[1]) / 128.0, expected[1], rtol=1e-6)


def test_clipping_lets_an_overflow_through_for_loss_scaling_to_see():
    gradients = [tf.constant([np.inf, 1.0]), tf.constant([2.0])]
    clipped = steps.clip_by_global_norm(gradients, 1.0)
    assert np.isinf(clipped[0].numpy()[0]) and clipped[1].numpy()[0] == 2.0
