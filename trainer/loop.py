"""The outer training loop: epochs, cadence, validation, early stopping, history, checkpoints.

The compiled steps are ``trainer.steps``'; what is learned (classes, loss,
metrics) is ``trainer.task``'s; the batches are handed in (``Datasets``), so
this module reads no data. It runs the epochs as plain Python over the
compiled calls, and calls its hooks: the ``Reporter`` (progress lines,
summaries, the profiler window), the ``Checkpointer`` (the training state,
the best epoch's weights, which saves the loss has vouched for) and
``Preemption`` (SIGTERM on any worker). The state that lets a run resume
(model, optimizer and its step, the epoch, the position within it,
early-stopping bookkeeping, history) all lives in one ``tf.train.Checkpoint``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import keras
import tensorflow as tf

from trainer import checkpoints, cluster, steps
from trainer.config import Config
from trainer.errors import TrainingDivergedError
from trainer.preemption import SIGNALS, TRAINING, Preemption
from trainer.task import Tally, Task

# What the loop reads: a dataset of global batches, or (streamed shards) a function giving
# each worker its own dataset of per-replica batches (``distribute``).
Batches = tf.data.Dataset | Callable[[tf.distribute.InputContext], tf.data.Dataset]

# Divergence, judged on each training call's mean loss against chance's (where training
# starts; ln K for K classes): EXPLODED_FACTOR times above it in EXPLODED_CALLS of the
# last EXPLODED_WINDOW calls (far past any dip a run recovers from), or FAR_ABOVE times
# above it once, or not finite.
EXPLODED_FACTOR = 10.0
EXPLODED_CALLS, EXPLODED_WINDOW = 3, 5
FAR_ABOVE = 1000.0
VALIDATION = "val"  # The evaluation set early stopping and the best weights follow.


class Reporter(Protocol):
    """Receives progress; ``trainer.summaries`` prints it and writes TensorBoard."""

    def train_progress(self, step: int, epoch: int, epoch_step: int, steps_in_epoch: int,
                       metrics: dict[str, float]) -> None: ...

    def epoch_end(self, step: int, epoch: int, metrics: dict[str, float]) -> None: ...

    def train_call(self, step: int) -> contextlib.AbstractContextManager[bool | None]:
        """Wraps every call of the compiled steps (the profiler's window and step marker).

        Yields whether the call runs one step through ``Loop.train_step`` (around
        the profiler's window) instead of ``Plan.steps_per_call`` steps.
        """

    def early_stop(self, epoch: int, best_epoch: int, patience: int) -> None:
        """Early stopping ended the run after ``epoch``; ``best_epoch``'s weights are kept."""

    def evaluated(self, step: int, prefix: str, tally: Tally,
                  class_names: Sequence[str]) -> None:
        """An evaluation's exact sums (its confusion matrix) at ``step``, after ``epoch_end``."""


class Health:
    """Whether training still trains, judged on each call's mean loss.

    Args:
      chance_loss: the loss of a model that knows nothing (ln K for K classes).
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
    """Training sums over examples, so that averages are exact for any batch or replica split."""

    loss_sum: float = 0.0
    correct: float = 0.0
    count: float = 0.0

    def add(self, sums: steps.TrainSums) -> None:
        self.loss_sum += float(sums.loss_sum)
        self.correct += float(sums.correct)
        self.count += float(sums.count)

    def metrics(self, prefix: str) -> dict[str, float]:
        count = max(self.count, 1.0)
        return {f"{prefix}/loss": self.loss_sum / count,
                f"{prefix}/accuracy": self.correct / count}


@dataclasses.dataclass
class Datasets:
    """The batches the loop is handed.

    Attributes:
      train: ``epoch -> dataset`` of that epoch's training batches (epochs
        count from 1; a resumed epoch gets the same batches, and the loop skips
        the finished ones). Whole batches only: every step is one global batch.
      train_examples: training examples per epoch (the steps follow from it).
      evaluation: named sets evaluated after every epoch under their name as
        the metrics' prefix; ``VALIDATION`` ("val") also drives early stopping
        and the best weights.
    """

    train: Callable[[int], Batches]
    train_examples: int
    evaluation: Mapping[str, Batches]


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many steps, computed once: what progress lines, the profiler and schedules read.

    Attributes:
      steps_per_epoch: whole global batches in an epoch.
      total_steps: over all ``--epochs``, at most ``--max_steps`` (early stopping may
        end sooner).
      steps_per_call: training steps per compiled call (``steps.steps_per_call``).
    """

    steps_per_epoch: int
    total_steps: int
    steps_per_call: int


def make_plan(config: Config, train_examples: int, num_replicas: int,
              global_batch_size: int | None = None) -> Plan:
    """The step counts of ``train_examples`` per epoch, for ``--epochs``; needs no model.

    The optimizer's schedule is built from it before the ``Loop`` exists.
    """
    per_epoch = train_examples // (global_batch_size or config.batch_size)
    total = per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps) if total else config.max_steps
    return Plan(steps_per_epoch=per_epoch, total_steps=total,
                steps_per_call=steps.steps_per_call(config, num_replicas))


@dataclasses.dataclass
class FitResult:
    """What ``fit`` did, for metrics.json."""

    epochs_completed: int
    train_steps: int
    train_examples_per_sec: float
    best_epoch: int
    stopped_early: bool
    history: list[dict[str, Any]]
    # This attempt's seconds inside the training calls, and at each epoch's end after them
    # (evaluation, checkpoints, summaries): ``phases.Phases.split_training``.
    train_seconds: float = 0.0
    epoch_end_seconds: list[float] = dataclasses.field(default_factory=list)


class Checkpointer:
    """The checkpoint hook: saves the state, and remembers which saves are not yet vouched for.

    A call's loss is computed before each of its updates, so the weights a
    checkpoint holds are judged by the next call's loss; saves since the last
    healthy call are "unverified", and set aside if the run diverges.

    Args:
      manager: saves the training state.
      best_manager: saves the best validation epoch's weights; None without
        early stopping.
    """

    def __init__(self, manager: tf.train.CheckpointManager,
                 best_manager: tf.train.CheckpointManager | None) -> None:
        self.manager = manager
        self.best_manager = best_manager
        self.unverified: list[str] = []

    def save(self, health: Health) -> None:
        """Saves the training state, unless the loss is mid-explosion.

        Raises:
          UserError: the checkpoint could not be written (DiskFullError for a
            full disk; lost permissions); the last complete checkpoint is kept
            (``checkpoints.save``).
        """
        if not health.healthy:
            return
        self.unverified.append(checkpoints.save(self.manager))

    def vouch(self) -> None:
        """A healthy loss was seen: every save so far holds weights that train."""
        self.unverified.clear()

    def set_aside_unverified(self) -> str:
        """Moves the unverified saves to ``diverged/``; says what is kept, for the error."""
        directory = self.manager.directory
        checkpoints.set_aside(self.unverified, directory, checkpoints.DIVERGED_DIR)
        latest = tf.train.latest_checkpoint(directory)
        kept = os.path.basename(latest) if latest else "none: a rerun starts from step 0"
        if self.unverified:
            kept += (f"; {len(self.unverified)} newer one(s) moved to "
                     f"{checkpoints.DIVERGED_DIR}/")
        return kept

    def save_best(self, epoch: int) -> None:
        """Saves the best epoch's weights; a failed write is one line (``checkpoints.save``)."""
        if self.best_manager is not None:
            checkpoints.save(self.best_manager, checkpoint_number=epoch)

    def best(self) -> str | None:
        """The best epoch's weights, if early stopping saved any."""
        return self.best_manager.latest_checkpoint if self.best_manager is not None else None


class Loop:
    """The outer loop over ``steps.Steps``, and the checkpointed training state.

    Args:
      config: epochs, cadences (log, checkpoint), early stopping, seed.
      strategy: the tf.distribute strategy the model was built under.
      model: from ``model.build`` with ``task``'s head.
      optimizer: from ``model.make_optimizer``.
      global_batch_size: examples per step over all replicas.
      task: the classes; the IMDB binary task if None.
      class_weight: optional per-class loss weights, ``[K]``.
    """

    def __init__(self, config: Config, strategy: tf.distribute.Strategy, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer, global_batch_size: int,
                 task: Task | None = None, class_weight: Sequence[float] | None = None) -> None:
        self.config = config
        self.strategy = strategy
        self.model = model
        self.optimizer = optimizer
        self.global_batch_size = global_batch_size
        self.task = task or Task()
        self.steps = steps.Steps(config, strategy, model, optimizer, self.task,
                                 global_batch_size, class_weight)
        # Bookkeeping, identical on every replica and worker: plain variables. Their names
        # in the checkpoint are what existing checkpoints restore by: keep them.
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)  # Epochs completed.
        self.epoch_step = tf.Variable(0, dtype=tf.int64, trainable=False)  # Steps into it.
        # The epoch's training [loss sum, correct, examples] so far.
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

    @property
    def step(self) -> int:
        """Training steps taken so far (the optimizer's counter, checkpointed)."""
        return int(self.optimizer.iterations.numpy())

    @property
    def steps_per_call(self) -> int:
        """Steps per ``train_steps`` call (see ``steps.steps_per_call``)."""
        return steps.steps_per_call(self.config, self.strategy.num_replicas_in_sync)

    def plan(self, train_examples: int) -> Plan:
        """The run's step counts for ``train_examples`` training examples per epoch."""
        return make_plan(self.config, train_examples, self.strategy.num_replicas_in_sync,
                         self.global_batch_size)

    def train_steps(self, iterator: Any, num_steps: int) -> steps.TrainSums:
        """Runs up to ``num_steps`` training steps in one ``tf.function`` call.

        The hot path of ``fit``, public for ``benchmarks/``: Python runs once
        per call, never per step.

        A call of one step is ``train_step``, which has no loop: a
        ``tf.function`` loop around Keras' LSTM (its own ``tf.while_loop``) ran
        its steps slower on a CPU (``docs/performance.md``,
        "Keras' LSTM under --article_settings").

        Returns:
          The sums over the steps run (``TrainSums``, a tuple: ``[loss sum,
          correct, examples, steps]``); 0 steps means the iterator was exhausted.
        """
        if num_steps == 1:
            return self.train_step(iterator)
        return self.steps.train(iterator, tf.constant(num_steps))

    def train_step(self, iterator: Any) -> steps.TrainSums:
        """Runs one training step in a ``tf.function`` with no loop: what a profiled call runs.

        xprof takes a traced TF loop's iterations as its steps, ignoring the step
        markers (``summaries.ProfilerWindow``); otherwise as ``train_steps``.
        """
        return self.steps.train_one(iterator)

    def averaged_weights(self) -> contextlib.AbstractContextManager[None]:
        """Within it, the model holds its weights' moving average (``--ema_momentum``).

        What validation, the best-epoch checkpoint and ``benchmarks/`` measure.
        """
        return self.steps.averaged_weights()

    def tally(self, batches: Batches) -> Tally:
        """The exact sums (loss, count, confusion matrix) over every example of ``batches``."""
        tally = Tally(self.task.num_classes)
        for batch in distribute(self.strategy, batches):
            tally.add(self.steps.evaluate(batch))
        return tally

    def evaluate(self, batches: Batches, prefix: str) -> dict[str, float]:
        """``<prefix>/loss``, ``/accuracy`` and ``/macro_f1`` over every example of ``batches``."""
        return self.tally(batches).metrics(prefix)

    # --- Epochs -------------------------------------------------------------------------

    def fit(self, datasets: Datasets, plan: Plan, reporter: Reporter,
            manager: tf.train.CheckpointManager,
            best_manager: tf.train.CheckpointManager | None) -> FitResult:
        """Trains until --epochs or early stopping, from wherever the checkpoint left off.

        Afterwards the model holds the weights to keep: the best validation
        epoch's with early stopping, else the last epoch's; the moving average
        of either with ``--ema_momentum``.

        Args:
          datasets: the batches.
          plan: from ``plan(datasets.train_examples)``.
          reporter: receives progress lines and summaries.
          manager: saves the training state (every --checkpoint_every_steps and
            at each epoch end).
          best_manager: saves the weights of the best validation epoch; None
            without early stopping.

        Returns:
          What was done, over the whole run including earlier, resumed attempts.

        Raises:
          TrainingDivergedError: the loss became NaN or infinite, or exploded
            (see ``Health``); the saves it did not vouch for are set aside.
          PreemptedError: SIGTERM arrived (here or, with several workers, at any
            of them); every process saved the state after the same step.
        """
        # Created after the restore: see its doc.
        preemption = Preemption(self.strategy, manager, self.config.checkpoint_dir,
                                workers=cluster.num_workers(self.strategy))
        SIGNALS.enter(TRAINING)
        run = _Run(self, datasets, plan, reporter, Checkpointer(manager, best_manager),
                   preemption)
        result = run.fit()
        preemption.check_at_end()
        return result

    def track_best(self, epoch: int, val_loss: float, checkpointer: Checkpointer) -> None:
        """Early-stopping bookkeeping after a validation; saves a new best epoch's weights."""
        if val_loss < float(self.best_val_loss):
            self.best_val_loss.assign(val_loss)
            self.best_epoch.assign(epoch)
            self.bad_epochs.assign(0)
            checkpointer.save_best(epoch)
        else:
            self.bad_epochs.assign_add(1)

    def should_stop(self) -> bool:
        patience = self.config.early_stopping_patience
        return bool(patience) and int(self.bad_epochs) >= patience

    def keep_final_weights(self, checkpointer: Checkpointer) -> None:
        """Puts the weights to keep in the model: the best epoch's, else the last average."""
        best = checkpointer.best()
        if best:
            # Early stopping keeps the best epoch's weights (averaged, if so), not the last.
            self.best_weights.restore(best).expect_partial()
        elif self.config.ema_momentum:
            # The last epoch's average, as model.fit keeps it with use_ema.
            self.optimizer.finalize_variable_values(self.model.trainable_variables)


class _Run:
    """One ``fit`` call: the epoch loop and the hooks it calls, with this attempt's counters."""

    def __init__(self, loop: Loop, datasets: Datasets, plan: Plan, reporter: Reporter,
                 checkpointer: Checkpointer, preemption: Preemption) -> None:
        self.loop, self.datasets, self.plan, self.reporter = loop, datasets, plan, reporter
        self.checkpointer, self.preemption = checkpointer, preemption
        self.health = Health(chance_loss=loop.task.chance_loss)
        self.train_seconds = self.train_examples = 0.0
        self.epoch_end_seconds: list[float] = []

    def fit(self) -> FitResult:
        loop = self.loop
        while (int(loop.epoch) < loop.config.epochs and not loop.should_stop()
               and not self._steps_done()):
            self._epoch(int(loop.epoch) + 1)
        stopped_early = loop.should_stop()
        if stopped_early and int(loop.epoch) < loop.config.epochs:
            self.reporter.early_stop(int(loop.epoch), int(loop.best_epoch),
                                     loop.config.early_stopping_patience)
        loop.keep_final_weights(self.checkpointer)
        return FitResult(
            epochs_completed=int(loop.epoch), train_steps=loop.step,
            train_examples_per_sec=(self.train_examples / self.train_seconds
                                    if self.train_seconds else 0.0),
            best_epoch=int(loop.best_epoch), stopped_early=stopped_early,
            history=json.loads(loop.history.numpy().decode()),
            train_seconds=self.train_seconds, epoch_end_seconds=self.epoch_end_seconds)

    def _steps_done(self) -> bool:
        """Whether --max_steps steps are done."""
        return bool(self.loop.config.max_steps) and self.loop.step >= self.loop.config.max_steps

    def _epoch(self, epoch: int) -> None:
        """Trains the rest of ``epoch``, evaluates, records it in history, saves, reports."""
        loop = self.loop
        began = time.perf_counter()
        totals, seconds, examples = self._train(epoch)
        self.train_seconds += seconds
        self.train_examples += examples
        metrics = {**totals.metrics("train"),
                   "train/examples_per_sec": examples / max(seconds, 1e-9),
                   "train/epoch_seconds": seconds}
        tallies: dict[str, Tally] = {}
        if self.datasets.evaluation:
            with loop.averaged_weights():
                for name, batches in self.datasets.evaluation.items():
                    tallies[name] = loop.tally(batches)
                    metrics.update(tallies[name].metrics(name))
                if VALIDATION in self.datasets.evaluation:
                    loop.track_best(epoch, metrics[f"{VALIDATION}/loss"], self.checkpointer)
        history = json.loads(loop.history.numpy().decode())
        history.append({"epoch": epoch, "step": loop.step, **metrics})
        loop.history.assign(json.dumps(history))
        loop.epoch.assign(epoch)
        loop.epoch_step.assign(0)
        self.checkpointer.save(self.health)
        self.reporter.epoch_end(loop.step, epoch, metrics)
        for name, tally in tallies.items():
            self.reporter.evaluated(loop.step, name, tally, loop.task.class_names)
        # All but the training calls: the epoch's iterator made and let go, evaluation,
        # checkpoints, summaries.
        self.epoch_end_seconds.append(time.perf_counter() - began - seconds)
        self.preemption.check()

    def _train(self, epoch: int) -> tuple[Totals, float, int]:
        """Trains the rest of ``epoch``.

        Returns:
          The epoch's totals (resumed ones included), and this attempt's
          seconds and examples in it.
        """
        loop, config = self.loop, self.loop.config
        skip = int(loop.epoch_step)
        totals = Totals(*loop.epoch_totals.numpy()) if skip else Totals()
        iterator = iter(distribute(loop.strategy, self.datasets.train(epoch), skip))
        epoch_start = time.perf_counter()
        epoch_step = skip
        while True:
            call_start_step = loop.step
            calls = self.plan.steps_per_call
            if config.max_steps:
                calls = min(calls, config.max_steps - loop.step)
            if calls <= 0:
                break
            with self.reporter.train_call(call_start_step) as one_step:
                sums = (loop.train_step(iterator) if one_step
                        else loop.train_steps(iterator, calls))
            if not int(sums.steps):
                break
            self._check_health(float(sums.loss_sum) / float(sums.count), epoch)
            epoch_step += int(sums.steps)
            totals.add(sums)
            loop.epoch_step.assign(epoch_step)
            loop.epoch_totals.assign([totals.loss_sum, totals.correct, totals.count])
            if _crossed(call_start_step, loop.step, config.log_every_steps):
                seconds = time.perf_counter() - epoch_start
                self.reporter.train_progress(loop.step, epoch, epoch_step,
                                             self.plan.steps_per_epoch, {
                    **totals.metrics("train"),
                    "train/examples_per_sec": (epoch_step - skip)
                    * loop.global_batch_size / max(seconds, 1e-9)})
            if _crossed(call_start_step, loop.step, config.checkpoint_every_steps):
                self.checkpointer.save(self.health)
            self.preemption.check()
        return (totals, time.perf_counter() - epoch_start,
                (epoch_step - skip) * loop.global_batch_size)

    def _check_health(self, mean_loss: float, epoch: int) -> None:
        """Stops a diverged run, keeping only checkpoints whose weights were seen to train.

        Raises:
          TrainingDivergedError: the loss is non-finite, or exploded.
        """
        diverged = self.health.divergence(mean_loss)
        if diverged is None:
            if self.health.healthy:
                self.checkpointer.vouch()
            return
        kept = self.checkpointer.set_aside_unverified()
        raise TrainingDivergedError(
            f"{diverged} at step {self.loop.step} (epoch {epoch}); the last good checkpoint in "
            f"{self.loop.config.checkpoint_dir} is kept ({kept}). Try a lower --learning_rate.")


def distribute(strategy: tf.distribute.Strategy, batches: Batches, skip: int = 0) -> Any:
    """``batches`` over the strategy's replicas, the first ``skip`` global batches left out.

    A dataset is split by ``experimental_distribute_dataset``; a per-worker
    function (streamed shards, ``trainer.stream``) gives each worker its own
    dataset of per-replica batches, of which each global step takes one per
    local replica.
    """
    if isinstance(batches, tf.data.Dataset):
        return strategy.experimental_distribute_dataset(batches.skip(skip))

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        local = context.num_replicas_in_sync // context.num_input_pipelines
        return batches(context).skip(skip * local)

    return strategy.distribute_datasets_from_function(dataset_fn)


def _crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in (before, after]; never for every == 0."""
    return bool(every) and after // every > before // every
