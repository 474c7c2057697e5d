"""The compiled steps: training (gradient clipping included) and evaluation, per replica.

``Steps`` runs replica functions through ``strategy.run`` inside
``tf.function``, the one path for every strategy (``model.fit`` fails under
MultiWorkerMirroredStrategy in Keras 3). Each replica divides its loss by the
GLOBAL batch and the replicas' gradients are summed, so one device, mirrored
replicas and several workers take the same step. Results come back as named
sums, already added across replicas.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import keras
import tensorflow as tf

from trainer.config import Config
from trainer.task import BatchSums, Task


class TrainSums(NamedTuple):
    """What one ``train`` call did, summed over its steps and replicas (float64 scalars)."""

    loss_sum: tf.Tensor
    correct: tf.Tensor
    count: tf.Tensor
    steps: tf.Tensor  # 0: the iterator was exhausted.


def steps_per_call(config: Config, replicas: int) -> int:
    """Steps per ``train`` call: ``--steps_per_loop``, or 1 where it cannot work.

    With several replicas (mirrored or multi-worker) the embedding's sparse
    gradient is all-gathered, and inside one ``tf.function`` loop that
    collective keeps the shape of its first iteration ("Shape mismatch in
    the collective instance"), while length-bucketed batches change width
    every step. With ``dense_embedding_gradient`` the gradient is dense,
    all-reduced at a fixed shape, and the restriction goes away.
    """
    if config.bucket_by_length and replicas > 1 and not config.dense_embedding_gradient:
        return 1
    return config.steps_per_loop


class Steps:
    """The compiled training and evaluation steps of one model and optimizer.

    Args:
      config: clip_norm, dense_embedding_gradient, ema_momentum.
      strategy: runs the replica functions.
      model: from ``model.build`` with ``task``'s head.
      optimizer: from ``model.make_optimizer``; built here, so that a
        checkpoint covers its slot variables from step 0.
      task: the loss, the prediction and the sums.
      global_batch_size: examples per step over all replicas.
      class_weight: optional ``[K]`` per-class loss weights (training only).
    """

    def __init__(self, config: Config, strategy: tf.distribute.Strategy, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer, task: Task, global_batch_size: int,
                 class_weight: Sequence[float] | None = None) -> None:
        self.config, self.strategy, self.model, self.optimizer = config, strategy, model, optimizer
        self.task, self.global_batch_size = task, global_batch_size
        self.class_weight = None if class_weight is None else tuple(class_weight)
        with strategy.scope():
            optimizer.build(model.trainable_variables)
        self.train, self.train_one = self._make_train()
        self.evaluate = self._make_evaluate()

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Within it, the model holds its weights' moving average (``--ema_momentum``).

        Leaving it puts back the weights training follows. Without the average
        it changes nothing.
        """
        if not self.config.ema_momentum:
            yield
            return
        variables = self.model.trainable_variables
        trained = [tf.identity(variable.value) for variable in variables]
        self.optimizer.finalize_variable_values(variables)  # Keras: the average, on every replica.
        try:
            yield
        finally:
            for variable, value in zip(variables, trained, strict=True):
                variable.assign(value)

    def _replica_train_step(self, ids: tf.Tensor, labels: tf.Tensor) -> BatchSums:
        model, optimizer, config = self.model, self.optimizer, self.config
        with tf.GradientTape() as tape:
            outputs = model(ids, training=True)
            per_example = self.task.per_example_loss(labels, outputs, self.class_weight)
            # Divide by the GLOBAL batch: the replicas' gradients are summed.
            loss = tf.nn.compute_average_loss(per_example,
                                              global_batch_size=self.global_batch_size)
            scaled_loss = optimizer.scale_loss(loss)  # Loss scaling under mixed_float16.
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        if config.dense_embedding_gradient:
            # Repeated tokens' slices summed: Adam then squares the token's gradient, not
            # each occurrence's slice (which understates frequent tokens' second moment
            # and so overstates their steps).
            gradients = [tf.convert_to_tensor(g) for g in gradients]
        if config.clip_norm:
            gradients = clip_by_global_norm(gradients, config.clip_norm,
                                            scale=optimizer.scale_loss(1.0),
                                            replicas=self.strategy.num_replicas_in_sync)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        # The unweighted loss is what is reported: comparable with or without weights.
        return self.task.sums(labels, outputs, self.task.per_example_loss(labels, outputs)
                              if self.class_weight is not None else per_example)

    def _make_train(self) -> tuple[Any, Any]:
        strategy = self.strategy

        def replica_vector(ids: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
            # One vector, so one all-reduce per step: [loss sum, correct, count].
            sums = self._replica_train_step(ids, labels)
            return tf.stack([sums.loss_sum, tf.linalg.trace(sums.confusion), sums.count])

        @tf.function
        def train_steps(iterator: Any, num_steps: tf.Tensor) -> TrainSums:
            """Runs up to num_steps steps; the sums of the steps it ran."""
            totals = tf.zeros([4], tf.float64)
            for _ in tf.range(num_steps):
                batch = iterator.get_next_as_optional()
                if not batch.has_value():
                    break
                sums = strategy.run(replica_vector, args=batch.get_value())
                sums = strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)
                totals += tf.concat([sums, tf.ones([1], tf.float64)], axis=0)
            return TrainSums(*tf.unstack(totals))

        @tf.function
        def train_one(iterator: Any) -> TrainSums:
            """Runs one step (none if exhausted) with no loop: what a profiled call runs.

            xprof takes a traced loop's iterations as its steps, not the step
            markers; see ``summaries.ProfilerWindow``.
            """
            batch = iterator.get_next_as_optional()

            def step() -> tf.Tensor:
                sums = strategy.run(replica_vector, args=batch.get_value())
                sums = strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)
                return tf.concat([sums, tf.ones([1], tf.float64)], axis=0)

            totals = tf.cond(batch.has_value(), step, lambda: tf.zeros([4], tf.float64))
            return TrainSums(*tf.unstack(totals))

        return train_steps, train_one

    def _make_evaluate(self) -> Any:
        model, strategy, task = self.model, self.strategy, self.task

        def replica_step(ids: tf.Tensor, labels: tf.Tensor) -> BatchSums:
            outputs = model(ids, training=False)
            return task.sums(labels, outputs, task.per_example_loss(labels, outputs))

        # Length-bucketed batches come in many widths: trace a shape-generic function once
        # or twice instead of once per width.
        @tf.function(reduce_retracing=True)
        def eval_step(batch: Any) -> BatchSums:
            sums = strategy.run(replica_step, args=batch)
            # Field by field: a multi-worker reduce of the structure would stack its parts.
            return BatchSums(*(strategy.reduce(tf.distribute.ReduceOp.SUM, part, axis=None)
                               for part in sums))

        return eval_step


def clip_by_global_norm(gradients: list[tf.Tensor | tf.IndexedSlices], clip_norm: float, *,
                        scale: tf.Tensor | float = 1.0,
                        replicas: int = 1) -> list[tf.Tensor | tf.IndexedSlices]:
    """Scales a replica's gradients so that the whole step's gradient has norm <= clip_norm.

    Keras' ``global_clipnorm`` clips each replica's share before the replicas'
    gradients are summed, which changes the answer with the number of replicas.
    Here the norm is that of the summed gradient (one extra all-reduce with
    several replicas), and every replica scales its share by the same factor,
    so one device, mirrored replicas and several workers take the same step.

    Args:
      gradients: this replica's gradients; the embedding's are IndexedSlices,
        whose repeated tokens are summed before the norm is taken.
      clip_norm: the largest norm let through.
      scale: the loss scale the gradients carry (mixed_float16), divided out of
        the norm.
      replicas: replicas in sync; above 1, call in a replica context.

    Returns:
      The gradients, scaled by ``min(1, clip_norm / norm)``. A non-finite norm
      leaves them as they are, so that loss scaling still sees the overflow.
    """
    dense = [tf.cast(tf.convert_to_tensor(g), tf.float32) for g in gradients]
    if replicas > 1:
        dense = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, dense)
    norm = tf.linalg.global_norm(dense) / tf.cast(scale, tf.float32)
    factor = tf.where(tf.math.is_finite(norm) & (norm > clip_norm), clip_norm / norm, 1.0)

    def scaled(gradient: tf.Tensor | tf.IndexedSlices) -> tf.Tensor | tf.IndexedSlices:
        if isinstance(gradient, tf.IndexedSlices):
            return tf.IndexedSlices(gradient.values * tf.cast(factor, gradient.values.dtype),
                                    gradient.indices, gradient.dense_shape)
        return gradient * tf.cast(factor, gradient.dtype)

    return [scaled(g) for g in gradients]
