"""trainer/task.py: the classes, the head, the loss, and metrics that stay exact."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from trainer import model
from trainer.config import Config
from trainer.errors import UserError
from trainer.task import Tally, Task, macro_f1, per_class, report

REPO = Path(__file__).resolve().parents[1]
FOUR = Task(("world", "sports", "business", "science"))


def test_the_binary_head_is_the_articles_373301_parameter_model():
    binary = Task()
    assert (binary.num_classes, binary.binary) == (2, True)
    assert binary.chance_loss == pytest.approx(math.log(2))
    net = model.build(Config(), task=binary)
    assert net.count_params() == 373_301
    assert [layer.name for layer in net.layers] == ["embedding", "lstm", "positive"]
    head = net.get_layer("positive")
    assert (head.units, head.activation.__name__, head.dtype_policy.name) == (
        1, "sigmoid", "float32")


def test_a_four_class_head_and_its_loss():
    config = Config(vocab_size=50, max_len=8, embedding_dim=4, lstm_units=3)
    net = model.build(config, task=FOUR)
    head = net.get_layer("probabilities")
    assert (head.units, head.activation.__name__) == (4, "softmax")
    outputs = net(np.ones((3, 8), np.int32))
    assert outputs.shape == (3, 4) and outputs.dtype == tf.float32
    np.testing.assert_allclose(tf.reduce_sum(outputs, axis=1), 1.0, rtol=1e-6)
    labels = tf.constant([0, 2, 3])
    probabilities = tf.constant([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25],
                                 [0.1, 0.1, 0.1, 0.7]])
    loss = FOUR.per_example_loss(labels, probabilities).numpy()
    np.testing.assert_allclose(loss, -np.log([0.7, 0.25, 0.7]), rtol=1e-5)
    # A per-class weight multiplies each example's loss by its true class's weight.
    weighted = FOUR.per_example_loss(labels, probabilities, class_weight=[1.0, 1.0, 2.0, 0.5])
    np.testing.assert_allclose(weighted.numpy(), loss * [1.0, 2.0, 0.5], rtol=1e-6)
    assert FOUR.predicted(probabilities).numpy().tolist() == [0, 0, 3]  # Ties: the first.


def test_binary_loss_prediction_and_probabilities_are_the_articles():
    binary = Task()
    outputs = tf.constant([[0.9], [0.5], [0.2]])
    labels = tf.constant([1, 0, 0])
    np.testing.assert_allclose(binary.per_example_loss(labels, outputs).numpy(),
                               -np.log([0.9, 0.5, 0.8]), rtol=1e-5)
    assert binary.predicted(outputs).numpy().tolist() == [1, 0, 0]  # p > 0.5, not >=.
    np.testing.assert_allclose(binary.probabilities(outputs).numpy(),
                               [[0.1, 0.9], [0.5, 0.5], [0.8, 0.2]], rtol=1e-6)
    served = binary.serving_outputs(outputs)
    assert [label.decode() for label in served["label"].numpy()] == [
        "positive", "negative", "negative"]
    np.testing.assert_allclose(served["positive_probability"].numpy(), [0.9, 0.5, 0.2])


def test_macro_f1_and_per_class_numbers_from_a_known_confusion_matrix():
    # Rows: true class; columns: predicted. 10 world (8 right), 5 sports, 0 science.
    confusion = np.array([[8, 2, 0], [1, 4, 0], [0, 0, 0]], np.float64)
    scores = per_class(confusion, ("world", "sports", "science"))
    assert scores["world"] == pytest.approx(
        {"precision": 8 / 9, "recall": 0.8, "f1": 2 * (8 / 9) * 0.8 / (8 / 9 + 0.8),
         "support": 10})
    assert scores["sports"] == pytest.approx(
        {"precision": 4 / 6, "recall": 0.8, "f1": 2 * (4 / 6) * 0.8 / (4 / 6 + 0.8),
         "support": 5})
    assert scores["science"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert macro_f1(confusion) == pytest.approx(
        (scores["world"]["f1"] + scores["sports"]["f1"]) / 3)
    tally = Tally(3, loss_sum=7.5, count=15.0, confusion=confusion)
    assert tally.metrics("test") == pytest.approx(
        {"test/loss": 0.5, "test/accuracy": 12 / 15, "test/macro_f1": macro_f1(confusion)})
    assert report(tally, ("world", "sports", "science"))["confusion_matrix"] == [
        [8, 2, 0], [1, 4, 0], [0, 0, 0]]


def test_a_majority_guesser_has_high_accuracy_but_low_macro_f1():
    confusion = np.array([[90, 0], [10, 0]], np.float64)  # Always "negative".
    tally = Tally(2, count=100.0, confusion=confusion)
    metrics = tally.metrics("val")
    assert metrics["val/accuracy"] == 0.9
    assert metrics["val/macro_f1"] == pytest.approx((2 * 0.9 * 1.0 / 1.9) / 2)


@pytest.mark.parametrize("names, needle", [
    (("only",), "at least 2"), (("a", "a"), "unique"), (("a", ""), "single lines"),
    (("a", "b\nc"), "single lines")])
def test_bad_class_names_are_refused(names, needle):
    with pytest.raises(UserError, match=needle):
        Task(names)


# Two logical CPUs must be set before TensorFlow starts: a fresh interpreter does it.
MIRRORED_SUMS = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    cpu, = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from trainer import loop, model
    from trainer.config import Config
    from trainer.task import Task

    config = Config(vocab_size=40, max_len=6, embedding_dim=4, lstm_units=3, batch_size=8)
    task = Task(("a", "b", "c", "d"))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 40, size=(21, 6)).astype(np.int32)  # 21: a partial last batch.
    labels = (np.arange(21) % 4).astype(np.int32)
    batches = tf.data.Dataset.from_tensor_slices((ids, labels)).batch(8)
    out = {}
    for name, strategy in (("one", tf.distribute.get_strategy()),
                           ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
        keras.utils.set_random_seed(1)
        with strategy.scope():
            net = model.build(config, task=task)
            optimizer = model.make_optimizer(config, 100)
        trainer = loop.Loop(config, strategy, net, optimizer, 8, task=task)
        tally = trainer.tally(batches)
        out[name] = {"replicas": strategy.num_replicas_in_sync, "count": tally.count,
                     "loss_sum": tally.loss_sum, "confusion": tally.confusion.tolist(),
                     "metrics": tally.metrics("test")}
    print(json.dumps(out))
""")


def test_sums_across_two_mirrored_replicas_are_those_of_one_device():
    process = subprocess.run([sys.executable, "-c", MIRRORED_SUMS], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout.splitlines()[-1])
    one, mirrored = result["one"], result["mirrored"]
    assert (one["replicas"], mirrored["replicas"]) == (1, 2)
    assert one["count"] == mirrored["count"] == 21
    assert np.sum(one["confusion"]) == 21
    assert mirrored["confusion"] == one["confusion"]  # Counts: exactly equal.
    assert mirrored["loss_sum"] == pytest.approx(one["loss_sum"], rel=1e-6)
    assert mirrored["metrics"] == pytest.approx(one["metrics"], rel=1e-6)
