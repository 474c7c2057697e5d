"""One training loop for every strategy: steps, epochs, validation, early stopping, checkpoints.

``model.fit`` fails under MultiWorkerMirroredStrategy in Keras 3 (DESIGN.md),
so the loop is written out: ``train_steps`` and ``evaluate`` run replica
functions through ``strategy.run`` inside ``tf.function``; the epoch loop is
plain Python over them. The state that lets a run resume (model, optimizer and
its step, the epoch, the position within it, early-stopping bookkeeping,
history) all lives in one ``tf.train.Checkpoint``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import keras
import tensorflow as tf

from trainer import checkpoints, data, distribute
from trainer.config import Config
from trainer.errors import TrainingDivergedError, UserError
from trainer.preemption import SIGNALS, TRAINING, Preemption

# Divergence, judged on each training call's mean loss against chance's (where training
# starts; ln 2 for two classes): EXPLODED_FACTOR times above it in EXPLODED_CALLS of the
# last EXPLODED_WINDOW calls (far past any dip a run recovers from), or FAR_ABOVE times
# above it once, or not finite.
EXPLODED_FACTOR = 10.0
EXPLODED_CALLS, EXPLODED_WINDOW = 3, 5
FAR_ABOVE = 1000.0


class Reporter(Protocol):
    """Receives progress; ``trainer.summaries`` prints it and writes TensorBoard."""

    def train_progress(self, step: int, epoch: int, epoch_step: int, steps_in_epoch: int,
                       metrics: dict[str, float]) -> None: ...

    def epoch_end(self, step: int, epoch: int, metrics: dict[str, float]) -> None: ...

    def train_call(self, step: int) -> contextlib.AbstractContextManager[None]:
        """Wraps every call of the compiled steps (the profiler's window and step marker)."""


class Health:
    """Whether training still trains, judged on each call's mean loss.

    Args:
      chance_loss: the loss of a model that knows nothing (ln 2 for two classes).
    """

    def __init__(self, chance_loss: float) -> None:
        self._chance_loss = chance_loss
        self._recent: collections.deque[bool] = collections.deque(maxlen=EXPLODED_WINDOW)

    @property
    def healthy(self) -> bool:
        """Whether the last call's loss was within EXPLODED_FACTOR of chance's."""
        return not self._recent or not self._recent[-1]

    def divergence(self, mean_loss: float) -> str | None:
        """Observes one call's mean loss; says how training diverged, or None."""
        if not math.isfinite(mean_loss):
            return f"training loss became {mean_loss}"
        chance = self._chance_loss
        self._recent.append(mean_loss > EXPLODED_FACTOR * chance)
        if mean_loss > FAR_ABOVE * chance or sum(self._recent) >= EXPLODED_CALLS:
            return (f"training loss exploded to {mean_loss:.4g} ({mean_loss / chance:.3g}x "
                    f"chance's {chance:.3g}, where training starts)")
        return None


@dataclasses.dataclass
class Totals:
    """Sums over examples, so that averages are exact for any batch or replica split."""

    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0

    def add(self, stats: tf.Tensor | list[float]) -> None:
        loss_sum, correct, count = (float(x) for x in stats)
        self.loss_sum += loss_sum
        self.correct += correct
        self.count += count

    def metrics(self, prefix: str) -> dict[str, float]:
        count = max(self.count, 1.0)
        return {f"{prefix}/loss": self.loss_sum / count,
                f"{prefix}/accuracy": self.correct / count}


@dataclasses.dataclass
class Datasets:
    """The encoded splits and the global batch size."""

    train: data.Encoded
    validation: data.Encoded | None
    test: data.Encoded
    global_batch_size: int


@dataclasses.dataclass
class FitResult:
    """What ``fit`` did, for metrics.json."""

    epochs_completed: int
    train_steps: int
    train_examples_per_sec: float
    best_epoch: int
    stopped_early: bool
    history: list[dict[str, Any]]


class Loop:
    """Owns the compiled step functions and the checkpointed training state."""

    def __init__(self, config: Config, strategy: tf.distribute.Strategy, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer, global_batch_size: int) -> None:
        self.config = config
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.global_batch_size = global_batch_size
        with strategy.scope():
            # Built now so that the checkpoint covers the slot variables from step 0.
            optimizer.build(model.trainable_variables)
        # Bookkeeping, identical on every replica and worker: plain variables.
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)  # Epochs completed.
        self.epoch_step = tf.Variable(0, dtype=tf.int64, trainable=False)  # Steps into it.
        self.epoch_totals = tf.Variable([0.0, 0.0, 0.0], dtype=tf.float64, trainable=False)
        self.best_val_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.history = tf.Variable("[]", dtype=tf.string, trainable=False)
        self.checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer, epoch=self.epoch, epoch_step=self.epoch_step,
            epoch_totals=self.epoch_totals, best_val_loss=self.best_val_loss,
            best_epoch=self.best_epoch, bad_epochs=self.bad_epochs, history=self.history)
        self.best_weights = tf.train.Checkpoint(model=model)
        self._train_steps = self._make_train_steps()
        self._eval_step = self._make_eval_step()

    @property
    def step(self) -> int:
        """Training steps taken so far (the optimizer's counter, checkpointed)."""
        return int(self.optimizer.iterations.numpy())

    @property
    def steps_per_call(self) -> int:
        """Steps per ``train_steps`` call: ``--steps_per_loop``, or 1 where it cannot work.

        With several replicas (mirrored or multi-worker) the embedding's sparse
        gradient is all-gathered, and inside one ``tf.function`` loop that
        collective keeps the shape of its first iteration ("Shape mismatch in
        the collective instance"), while length-bucketed batches change width
        every step. With ``dense_embedding_gradient`` the gradient is dense,
        all-reduced at a fixed shape, and the restriction goes away.
        """
        if (self.config.bucket_by_length and self.strategy.num_replicas_in_sync > 1
                and not self.config.dense_embedding_gradient):
            return 1
        return self.config.steps_per_loop

    def train_steps(self, iterator: Any, num_steps: int) -> tf.Tensor:
        """Runs up to ``num_steps`` training steps in one ``tf.function`` call.

        The hot path of ``fit``, public for ``benchmarks/``: Python runs once
        per call, never per step.

        Returns:
          ``[loss sum, correct, examples, steps]`` over the steps run; 0 steps
          means the iterator was exhausted.
        """
        return self._train_steps(iterator, tf.constant(num_steps))

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Within it, the model holds its weights' moving average (``--ema_momentum``).

        What validation, the best-epoch checkpoint and ``benchmarks/`` measure.
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

    # --- Compiled functions -------------------------------------------------------------

    def _make_train_steps(self) -> Callable[[Any, tf.Tensor], tf.Tensor]:
        model, optimizer, strategy = self.model, self.optimizer, self.strategy
        global_batch_size, clip_norm = self.global_batch_size, self.config.clip_norm
        dense_embedding_gradient = self.config.dense_embedding_gradient

        def replica_step(ids: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                probs = model(ids, training=True)
                per_example = keras.losses.binary_crossentropy(
                    tf.cast(labels[:, None], probs.dtype), probs)
                # Divide by the GLOBAL batch: the replicas' gradients are summed.
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
                scaled_loss = optimizer.scale_loss(loss)  # Loss scaling under mixed_float16.
            gradients = tape.gradient(scaled_loss, model.trainable_variables)
            if dense_embedding_gradient:
                # Repeated tokens' slices summed: Adam then squares the token's gradient,
                # not each occurrence's slice (which understates frequent tokens' second
                # moment and so overstates their steps).
                gradients = [tf.convert_to_tensor(g) for g in gradients]
            if clip_norm:
                gradients = clip_by_global_norm(gradients, clip_norm,
                                                scale=optimizer.scale_loss(1.0),
                                                replicas=strategy.num_replicas_in_sync)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            return _sums(per_example, probs, labels)

        @tf.function
        def train_steps(iterator: Any, num_steps: tf.Tensor) -> tf.Tensor:
            """Runs up to num_steps steps; returns [loss sum, correct, examples, steps]."""
            totals = tf.zeros([4], tf.float64)
            for _ in tf.range(num_steps):
                batch = iterator.get_next_as_optional()
                if not batch.has_value():
                    break
                sums = strategy.run(replica_step, args=batch.get_value())
                sums = strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)
                totals += tf.concat([sums, tf.ones([1], tf.float64)], axis=0)
            return totals

        return train_steps

    def _make_eval_step(self) -> Callable[[Any], tf.Tensor]:
        model, strategy = self.model, self.strategy

        def replica_step(ids: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
            probs = model(ids, training=False)
            per_example = keras.losses.binary_crossentropy(
                tf.cast(labels[:, None], probs.dtype), probs)
            return _sums(per_example, probs, labels)

        # Length-bucketed batches come in many widths: trace a shape-generic function once
        # or twice instead of once per width.
        @tf.function(reduce_retracing=True)
        def eval_step(batch: Any) -> tf.Tensor:
            sums = strategy.run(replica_step, args=batch)
            return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

        return eval_step

    # --- Epochs -------------------------------------------------------------------------

    def evaluate(self, encoded: data.Encoded, prefix: str) -> dict[str, float]:
        """Loss and accuracy over every example of an encoded split."""
        batches = data.batches(encoded, self.config, global_batch_size=self.global_batch_size)
        totals = Totals()
        for batch in self.strategy.experimental_distribute_dataset(batches):
            totals.add(self._eval_step(batch))
        return totals.metrics(prefix)

    def fit(self, datasets: Datasets, reporter: Reporter,
            manager: tf.train.CheckpointManager,
            best_manager: tf.train.CheckpointManager | None) -> FitResult:
        """Trains until --epochs or early stopping, from wherever the checkpoint left off.

        Afterwards the model holds the weights to keep: the best validation
        epoch's with early stopping, else the last epoch's; the moving average
        of either with ``--ema_momentum``.

        Args:
          datasets: encoded splits.
          reporter: receives progress lines and summaries.
          manager: saves the training state (every --checkpoint_every_steps and
            at each epoch end).
          best_manager: saves the weights of the best validation epoch; None
            without early stopping.

        Returns:
          What was done, over the whole run including earlier, resumed attempts.

        Raises:
          TrainingDivergedError: the loss became NaN or infinite (nothing is saved).
          PreemptedError: SIGTERM arrived (here or, with several workers, at any
            of them); every process saved the state after the same step.
        """
        # Created after the restore: see its doc.
        preemption = Preemption(self.strategy, manager, self.config.checkpoint_dir,
                                workers=distribute.num_workers(self.strategy))
        SIGNALS.enter(TRAINING)
        result = self._fit(datasets, reporter, manager, best_manager, preemption)
        preemption.check_at_end()
        return result

    def _fit(self, datasets: Datasets, reporter: Reporter,
             manager: tf.train.CheckpointManager,
             best_manager: tf.train.CheckpointManager | None,
             preemption: Preemption) -> FitResult:
        config = self.config
        health = Health(chance_loss=math.log(2.0))
        unverified: list[str] = []  # Checkpoints saved since the last healthy loss was seen.
        train_seconds, train_examples = 0.0, 0.0
        while int(self.epoch) < config.epochs and not self._should_stop():
            epoch = int(self.epoch) + 1
            skip = int(self.epoch_step)
            totals, seconds = self._train_epoch(datasets, reporter, manager, preemption, epoch,
                                                health, unverified)
            examples = (int(self.epoch_step) - skip) * self.global_batch_size
            train_seconds += seconds
            train_examples += examples
            metrics = {**totals.metrics("train"),
                       "train/examples_per_sec": examples / max(seconds, 1e-9),
                       "train/epoch_seconds": seconds}
            if datasets.validation is not None:
                with self.averaged_weights():
                    metrics.update(self.evaluate(datasets.validation, "val"))
                    self._track_best(epoch, metrics["val/loss"], best_manager)
            history = json.loads(self.history.numpy().decode())
            history.append({"epoch": epoch, "step": self.step, **metrics})
            self.history.assign(json.dumps(history))
            self.epoch.assign(epoch)
            self.epoch_step.assign(0)
            self._save(manager, health, unverified)
            reporter.epoch_end(self.step, epoch, metrics)
            preemption.check()
        stopped_early = self._should_stop()
        if best_manager is not None and best_manager.latest_checkpoint:
            # Early stopping keeps the best epoch's weights (averaged, if so), not the last.
            self.best_weights.restore(best_manager.latest_checkpoint).expect_partial()
        elif self.config.ema_momentum:
            # The last epoch's average, as model.fit keeps it with use_ema.
            self.optimizer.finalize_variable_values(self.model.trainable_variables)
        return FitResult(
            epochs_completed=int(self.epoch), train_steps=self.step,
            train_examples_per_sec=train_examples / train_seconds if train_seconds else 0.0,
            best_epoch=int(self.best_epoch), stopped_early=stopped_early,
            history=json.loads(self.history.numpy().decode()))

    def _train_epoch(self, datasets: Datasets, reporter: Reporter,
                     manager: tf.train.CheckpointManager, preemption: Preemption, epoch: int,
                     health: Health, unverified: list[str]) -> tuple[Totals, float]:
        """Trains the rest of ``epoch``; returns its totals and this attempt's seconds in it."""
        config = self.config
        steps_in_epoch = len(datasets.train) // self.global_batch_size
        skip = int(self.epoch_step)
        totals = Totals(*self.epoch_totals.numpy()) if skip else Totals()
        epoch_batches = data.batches(
            datasets.train, config, global_batch_size=self.global_batch_size,
            shuffle_seed=config.seed * 1000 + epoch, drop_remainder=True).skip(skip)
        iterator = iter(self.strategy.experimental_distribute_dataset(epoch_batches))
        epoch_start = time.perf_counter()
        epoch_step = skip
        while True:
            loop_start_step = self.step
            with reporter.train_call(loop_start_step):
                sums = self.train_steps(iterator, self.steps_per_call)
            steps_done = int(sums[3])
            if not steps_done:
                break
            self._check_health(health, float(sums[0]) / float(sums[2]), epoch, manager,
                               unverified)
            epoch_step += steps_done
            totals.add(sums[:3])
            self.epoch_step.assign(epoch_step)
            self.epoch_totals.assign([totals.loss_sum, totals.correct, totals.count])
            if _crossed(loop_start_step, self.step, config.log_every_steps):
                seconds = time.perf_counter() - epoch_start
                reporter.train_progress(self.step, epoch, epoch_step, steps_in_epoch, {
                    **totals.metrics("train"),
                    "train/examples_per_sec": (epoch_step - skip)
                    * self.global_batch_size / max(seconds, 1e-9)})
            if _crossed(loop_start_step, self.step, config.checkpoint_every_steps):
                self._save(manager, health, unverified)
            preemption.check()
        return totals, time.perf_counter() - epoch_start

    def _check_health(self, health: Health, mean_loss: float, epoch: int,
                      manager: tf.train.CheckpointManager, unverified: list[str]) -> None:
        """Stops a diverged run, keeping only checkpoints whose weights were seen to train.

        A call's loss is computed before each of its updates, so the weights a
        checkpoint holds are judged by the next call's loss: a checkpoint saved
        since the last healthy call is set aside when the run diverges.

        Raises:
          TrainingDivergedError: the loss is non-finite, or exploded.
        """
        diverged = health.divergence(mean_loss)
        if diverged is None:
            if health.healthy:
                unverified.clear()
            return
        checkpoints.set_aside(unverified, manager.directory, checkpoints.DIVERGED_DIR)
        latest = tf.train.latest_checkpoint(manager.directory)
        kept = os.path.basename(latest) if latest else "none: a rerun starts from step 0"
        raise TrainingDivergedError(
            f"{diverged} at step {self.step} (epoch {epoch}); the last good checkpoint in "
            f"{self.config.checkpoint_dir} is kept ({kept}"
            + (f"; {len(unverified)} newer one(s) moved to {checkpoints.DIVERGED_DIR}/"
               if unverified else "")
            + "). Try a lower --learning_rate.")

    def _save(self, manager: tf.train.CheckpointManager, health: Health,
              unverified: list[str]) -> None:
        """Saves the training state, unless the loss is mid-explosion.

        Raises:
          UserError: the checkpoint could not be written (a full disk, lost
            permissions); the last complete checkpoint is kept.
        """
        if not health.healthy:
            return
        try:
            unverified.append(manager.save())
        except (tf.errors.OpError, OSError) as error:
            text = getattr(error, "message", None) or str(error)
            raise UserError(
                f"could not write a checkpoint to {manager.directory} "
                f"({text.strip().splitlines()[0][:200] if text.strip() else type(error).__name__})"
                "; free some space or fix the folder, then run the same command to resume from "
                "the last complete checkpoint.") from None

    def _track_best(self, epoch: int, val_loss: float,
                    best_manager: tf.train.CheckpointManager | None) -> None:
        if val_loss < float(self.best_val_loss):
            self.best_val_loss.assign(val_loss)
            self.best_epoch.assign(epoch)
            self.bad_epochs.assign(0)
            if best_manager is not None:
                best_manager.save(checkpoint_number=epoch)
        else:
            self.bad_epochs.assign_add(1)

    def _should_stop(self) -> bool:
        patience = self.config.early_stopping_patience
        return bool(patience) and int(self.bad_epochs) >= patience


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


def _sums(per_example: tf.Tensor, probs: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """[sum of losses, correct predictions, examples] of one replica's batch, float64."""
    predicted = tf.cast(probs[:, 0] > 0.5, labels.dtype)
    correct = tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float64))
    return tf.stack([tf.reduce_sum(tf.cast(per_example, tf.float64)), correct,
                     tf.cast(tf.size(labels), tf.float64)])


def _crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in (before, after]; never for every == 0."""
    return bool(every) and after // every > before // every
