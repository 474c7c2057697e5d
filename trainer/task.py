"""What the model is asked: which classes, its output head, loss, prediction and metrics.

One ``Task``, built from the class names, is the only place that knows how
many classes there are. Two classes are the article's task exactly: a
``Dense(1, sigmoid)`` head named ``positive`` giving P(class 1), binary
cross-entropy, and class 1 predicted when P > 0.5. Three or more get a
``Dense(K, softmax)`` head and sparse categorical cross-entropy.

Metrics stay exact across replicas, workers and partial batches: each batch
gives sums (the loss sum, the example count and a KxK confusion matrix, all
float64), the sums are added across replicas with ``ReduceOp.SUM``, and only
then are accuracy, macro-F1 and the per-class numbers derived, in Python.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from trainer.errors import UserError

BINARY_CLASS_NAMES = ("negative", "positive")  # IMDB: label 0 and label 1.
BINARY_HEAD_NAME = "positive"  # The article's output layer; checkpoints name its weights so.
HEAD_NAME = "probabilities"
# Serving outputs.
PROBABILITIES_KEY = "probabilities"  # [batch, K] float32, in class order (labels.txt).
LABEL_KEY = "label"  # [batch] tf.string: the predicted class's name.
POSITIVE_KEY = "positive_probability"  # [batch] float32, binary only: what clients read before.


class BatchSums(NamedTuple):
    """One batch's sums, added across replicas before any ratio is taken (float64)."""

    loss_sum: tf.Tensor  # []
    count: tf.Tensor  # []
    confusion: tf.Tensor  # [K, K]: rows the true class, columns the predicted one.


@dataclasses.dataclass(frozen=True)
class Task:
    """Classification into ``class_names`` (class id = position in the tuple).

    Attributes:
      class_names: one name per class, at least two, unique, each a non-empty
        single line (they become ``labels.txt``'s lines).
    """

    class_names: tuple[str, ...] = BINARY_CLASS_NAMES

    def __post_init__(self) -> None:
        names = tuple(str(name) for name in self.class_names)
        object.__setattr__(self, "class_names", names)
        if len(names) < 2:
            raise UserError(f"a classifier needs at least 2 classes; the data has {len(names)}: "
                            f"{list(names)}.")
        if len(set(names)) != len(names):
            raise UserError(f"class names must be unique; got {list(names)}.")
        if any(not name.strip() or "\n" in name or "\r" in name for name in names):
            raise UserError(f"class names must be non-empty single lines; got {list(names)}.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    @property
    def chance_loss(self) -> float:
        """The loss of uniform guessing, where training starts: ln K."""
        return math.log(self.num_classes)

    def head(self) -> keras.layers.Layer:
        """The output layer, float32 under any dtype policy (the softmax and loss need it)."""
        if self.binary:
            return keras.layers.Dense(1, activation="sigmoid", dtype="float32",
                                      name=BINARY_HEAD_NAME)
        return keras.layers.Dense(self.num_classes, activation="softmax", dtype="float32",
                                  name=HEAD_NAME)

    def per_example_loss(self, labels: tf.Tensor, outputs: tf.Tensor,
                         class_weight: Sequence[float] | tf.Tensor | None = None) -> tf.Tensor:
        """Cross-entropy of each example, ``[batch]``, optionally weighted by its true class.

        Args:
          labels: ``[batch]`` int class ids.
          outputs: the head's output (``[batch, 1]`` binary, ``[batch, K]`` else).
          class_weight: ``[K]`` weights, one per class; None weighs every class 1.
        """
        if self.binary:
            loss = keras.losses.binary_crossentropy(tf.cast(labels[:, None], outputs.dtype),
                                                    outputs)
        else:
            loss = keras.losses.sparse_categorical_crossentropy(labels, outputs)
        if class_weight is not None:
            loss = loss * tf.gather(tf.cast(class_weight, loss.dtype), tf.cast(labels, tf.int32))
        return loss

    def probabilities(self, outputs: tf.Tensor) -> tf.Tensor:
        """``[batch, K]`` probabilities in class order (binary: ``[1 - p, p]``)."""
        if self.binary:
            return tf.concat([1.0 - outputs, outputs], axis=1)
        return outputs

    def predicted(self, outputs: tf.Tensor) -> tf.Tensor:
        """``[batch]`` int32 class ids: binary p > 0.5, else the most probable class."""
        if self.binary:
            return tf.cast(outputs[:, 0] > 0.5, tf.int32)
        return tf.argmax(outputs, axis=1, output_type=tf.int32)

    def sums(self, labels: tf.Tensor, outputs: tf.Tensor, per_example_loss: tf.Tensor) -> BatchSums:
        """One replica's batch sums (see ``BatchSums``), to be SUM-reduced across replicas."""
        confusion = tf.math.confusion_matrix(tf.cast(labels, tf.int32), self.predicted(outputs),
                                             num_classes=self.num_classes, dtype=tf.float64)
        return BatchSums(loss_sum=tf.reduce_sum(tf.cast(per_example_loss, tf.float64)),
                         count=tf.cast(tf.size(labels), tf.float64), confusion=confusion)

    def serving_outputs(self, outputs: tf.Tensor) -> dict[str, tf.Tensor]:
        """The serving signature's outputs for a batch of head outputs."""
        outputs = tf.cast(outputs, tf.float32)
        label = tf.gather(tf.constant(self.class_names, tf.string), self.predicted(outputs))
        served = {PROBABILITIES_KEY: self.probabilities(outputs), LABEL_KEY: label}
        if self.binary:
            served[POSITIVE_KEY] = outputs[:, 0]
        return served


@dataclasses.dataclass
class Tally:
    """Sums over examples (after the cross-replica SUM), from which the metrics follow."""

    num_classes: int
    loss_sum: float = 0.0
    count: float = 0.0
    confusion: np.ndarray | None = None  # [K, K] float64; zeros if not given.

    def __post_init__(self) -> None:
        if self.confusion is None:
            self.confusion = np.zeros([self.num_classes] * 2, np.float64)

    def add(self, sums: BatchSums) -> None:
        self.loss_sum += float(sums.loss_sum)
        self.count += float(sums.count)
        self.confusion = self.confusion + np.asarray(sums.confusion, np.float64)

    def metrics(self, prefix: str) -> dict[str, float]:
        """``<prefix>/loss``, ``<prefix>/accuracy`` and ``<prefix>/macro_f1``."""
        count = max(self.count, 1.0)
        return {f"{prefix}/loss": self.loss_sum / count,
                f"{prefix}/accuracy": float(np.trace(self.confusion)) / count,
                f"{prefix}/macro_f1": macro_f1(self.confusion)}


def per_class(confusion: np.ndarray, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{name: {precision, recall, f1, support}}`` from a confusion matrix (rows = true).

    A class never predicted has precision 0, one without examples recall 0, and
    F1 is 0 where precision + recall is 0 (scikit-learn's ``zero_division=0``).
    """
    confusion = np.asarray(confusion, np.float64)
    true_positive = np.diag(confusion)
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive),
                          where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive),
                       where=support > 0)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)}


def macro_f1(confusion: np.ndarray) -> float:
    """The unweighted mean of the classes' F1: a majority-class guesser scores low."""
    confusion = np.asarray(confusion)
    scores = per_class(confusion, [str(i) for i in range(len(confusion))])
    return float(np.mean([score["f1"] for score in scores.values()]))


def report(tally: Tally, class_names: Sequence[str]) -> dict[str, Any]:
    """What metrics.json adds for the test split: per-class numbers and the matrix."""
    return {"per_class": per_class(tally.confusion, class_names),
            "confusion_matrix": np.rint(tally.confusion).astype(np.int64).tolist()}


def per_class_scalars(tally: Tally, class_names: Sequence[str], prefix: str) -> dict[str, float]:
    """``<prefix>/<metric>/<class>`` scalars for TensorBoard."""
    return {f"{prefix}/{metric}/{name}": float(value)
            for name, scores in per_class(tally.confusion, class_names).items()
            for metric, value in scores.items()}
