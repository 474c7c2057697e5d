"""What the run shows: progress lines, TensorBoard, the profiler window, the curves picture.

Metric names are the same everywhere: ``train/loss``, ``val/accuracy``,
``test/accuracy``... in the log line, in TensorBoard and in metrics.json.
The TensorBoard folder (``--tensorboard_dir``, default ``<model_dir>/tensorboard``)
is one TensorBoard run holding:

- every ``--log_every_steps``: ``train/loss``, ``train/accuracy`` (averages over
  the epoch so far), ``train/examples_per_sec``, ``train/step_seconds``,
  ``train/learning_rate``;
- at each epoch end, the epoch's values under ``epoch/``: ``epoch/train/loss``,
  ``epoch/val/loss``, ``epoch/val/accuracy``...;
- at the end, ``test/loss`` and ``test/accuracy``;
- the run's flags as HParams (so runs compare in one table) and the model's
  summary as text;
- with ``--profile_steps``, a profiler trace under ``plugins/profile/``.

Every scalar's x-axis is the training step. Only the chief writes TensorBoard
files and profiles; every process prints progress.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf
from absl import logging
from matplotlib.figure import Figure
from tensorboard.plugins.hparams import api as hp

from trainer.config import Config

EPOCH_PREFIX = "epoch/"
CURVES_FILE = "training_curves.png"  # In model_dir, for people who do not open TensorBoard.
MODEL_SUMMARY_TAG = "model/summary"


def format_metrics(metrics: dict[str, float]) -> str:
    """``train/loss 0.6931 | train/examples_per_sec 512 | ...``, each at a readable precision."""
    parts = []
    for name, value in metrics.items():
        if name.endswith("examples_per_sec"):
            parts.append(f"{name} {value:.0f}")
        elif name.endswith(("seconds", "learning_rate")):
            parts.append(f"{name} {value:.3g}")
        else:
            parts.append(f"{name} {value:.4f}")
    return " | ".join(parts)


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``: short enough for a progress line."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Summaries:
    """Implements ``loop.Reporter``: log lines, TensorBoard scalars and the profiler window.

    Args:
      config: the run's settings (tensorboard_dir, epochs, profile_steps, steps_per_loop).
      is_chief: whether this process writes TensorBoard files and profiles.
      model: the model, whose summary goes to TensorBoard's Text tab.
      optimizer: its learning rate is logged as ``train/learning_rate``.
      steps_per_call: training steps per call of the compiled loop
        (``loop.Loop.steps_per_call``, which may be 1 where
        ``--steps_per_loop`` cannot apply); None: ``config.steps_per_loop``.
      total_steps: the training steps the whole run would take without early
        stopping (steps per epoch x --epochs), for the ETA on each line; None
        prints no ETA.
    """

    def __init__(self, config: Config, is_chief: bool, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer, *,
                 steps_per_call: int | None = None, total_steps: int | None = None) -> None:
        self.config = config
        self.optimizer = optimizer
        self.total_steps = total_steps
        # (step, time) of this process's first training call: elapsed and ETA count from
        # there, so a resumed run's rate is its own, validation time included.
        self._training_start: tuple[int, float] | None = None
        self.writer = (tf.summary.create_file_writer(config.tensorboard_dir) if is_chief
                       else tf.summary.create_noop_writer())
        # Chief only: several processes tracing into one folder would mix their files.
        self.profiler = ProfilerWindow(
            config.profile_window if is_chief else None,
            config.steps_per_loop if steps_per_call is None else steps_per_call,
            config.tensorboard_dir)
        self._interval_start: tuple[int, float] | None = None  # (step, time) of the interval.
        if is_chief:
            self._write_run_description(model)

    @contextlib.contextmanager
    def train_call(self, step: int) -> Iterator[None]:
        """Wraps one call of the compiled training steps, made at training step ``step``.

        Starts the step-time interval, starts or stops the profiler window, and
        while tracing marks the call as step ``step`` for the profiler, without
        which TensorBoard's Profile tab finds no step and no step time.
        """
        now = time.perf_counter()
        if self._interval_start is None:
            self._interval_start = (step, now)
        if self._training_start is None:
            self._training_start = (step, now)
        self.profiler.before_train_steps(step)
        if self.profiler.started_at is None:
            yield
            return
        with tf.profiler.experimental.Trace("train", step_num=step, _r=1):
            yield

    def train_progress(self, step: int, epoch: int, epoch_step: int, steps_in_epoch: int,
                       metrics: dict[str, float]) -> None:
        metrics = {**metrics, **self._interval_metrics(step)}
        logging.info("epoch %d/%d | step %d/%d | %s%s", epoch, self.config.epochs, epoch_step,
                     steps_in_epoch, format_metrics(metrics), self._clock(step))
        self.scalars(step, metrics)

    def epoch_end(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        logging.info("epoch %d/%d done | step %d | %s%s", epoch, self.config.epochs, step,
                     format_metrics(metrics), self._clock(step))
        self.scalars(step, {EPOCH_PREFIX + name: value for name, value in metrics.items()})
        self._interval_start = None  # Validation time is not step time.

    def early_stop(self, epoch: int, best_epoch: int, patience: int) -> None:
        """Says that early stopping ended training after ``epoch``, and which epoch is kept."""
        logging.info("early stopping after epoch %d: the validation loss has not improved for "
                     "%d epoch(s) (--early_stopping_patience=%d); keeping epoch %d's weights, "
                     "the lowest validation loss", epoch, epoch - best_epoch, patience,
                     best_epoch)

    def _clock(self, step: int) -> str:
        """`` | elapsed 1m05s | eta 2m10s``: since training began here, and to the last step.

        The ETA assumes the rest of the run goes at this attempt's pace so far
        (validation included) and that early stopping does not end it sooner.
        """
        if self._training_start is None:
            return ""
        start_step, start_time = self._training_start
        elapsed = time.perf_counter() - start_time
        text = f" | elapsed {format_duration(elapsed)}"
        if self.total_steps and step > start_step:
            left = max(self.total_steps - step, 0)
            text += f" | eta {format_duration(left * elapsed / (step - start_step))}"
        return text

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        with self.writer.as_default(step=step):
            for name, value in metrics.items():
                tf.summary.scalar(name, value)
        self.writer.flush()

    def close(self) -> None:
        """Stops a profiler still running (with a warning) and closes the event file."""
        self.profiler.close()
        self.writer.close()

    def _interval_metrics(self, step: int) -> dict[str, float]:
        """Step time since the interval began, and the learning rate now."""
        learning_rate = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
        metrics = {"train/learning_rate": learning_rate}
        if self._interval_start is not None:
            start_step, start_time = self._interval_start
            if step > start_step:
                metrics["train/step_seconds"] = (time.perf_counter() - start_time) / (
                    step - start_step)
        self._interval_start = None
        return metrics

    def _write_run_description(self, model: keras.Model) -> None:
        """The flags for the HParams tab and the model summary for the Text tab, at step 0."""
        lines: list[str] = []
        model.summary(print_fn=lines.append)
        # Indented four spaces: Markdown shows it as code, keeping the table's columns.
        text = "\n".join("    " + line for line in "\n".join(lines).splitlines())
        with self.writer.as_default(step=0):
            hp.hparams(hparams(self.config))
            tf.summary.text(MODEL_SUMMARY_TAG, text)
        self.writer.flush()


def hparams(config: Config) -> dict[str, str | bool | int | float]:
    """The run's settings as HParams values (which must be str, bool, int or float).

    The values are the resolved ones (a preset's included); ``presets`` names
    the presets applied, comma-separated.
    """
    def value(item: Any) -> str | bool | int | float:
        if isinstance(item, str | bool | int | float):
            return item
        if isinstance(item, tuple | list):
            return ",".join(str(part) for part in item)
        return str(item)

    return {name: value(item) for name, item in config.to_dict().items()}


class ProfilerWindow:
    """Records a TensorFlow profiler trace of the training steps in a window.

    Steps are counted by the optimizer (the first step is 1). The compiled loop
    runs ``steps_per_loop`` steps per call, so the trace snaps outwards to
    those boundaries: it starts before the first call that runs a step in the
    window and stops after the call that runs its last step.

    Args:
      window: (first, last) step to trace; None records nothing.
      steps_per_loop: training steps per call of the compiled loop.
      logdir: the TensorBoard run folder; the trace lands in its
        ``plugins/profile/<time>/``, where the Profile tab looks.
    """

    def __init__(self, window: tuple[int, int] | None, steps_per_loop: int,
                 logdir: str) -> None:
        self.window = window
        self.steps_per_loop = steps_per_loop
        self.logdir = logdir
        self.started_at: int | None = None  # Step at which the running trace began.
        self.done = window is None
        self.steps_seen: tuple[int, int] | None = None  # (first, last) step this process saw.

    def before_train_steps(self, step: int) -> None:
        """Starts or stops the trace around the call that runs steps ``step + 1...``."""
        first_seen = self.steps_seen[0] if self.steps_seen else step
        self.steps_seen = (first_seen, step)
        if self.done:
            return
        first, last = self.window  # type: ignore[misc]
        if self.started_at is None and step < last and step + self.steps_per_loop >= first:
            self._start(step)
        elif self.started_at is not None and step >= last:
            self._stop(step)

    def close(self) -> None:
        """Warns if the window was not traced in full; stops a running trace."""
        if self.done:
            return
        first, last = self.window  # type: ignore[misc]
        if self.started_at is not None:
            end = self.steps_seen[1] if self.steps_seen else self.started_at
            logging.warning("--profile_steps=%d,%d: training ended at step %d, inside the "
                            "window; the trace covers steps %d-%d only.", first, last, end,
                            self.started_at + 1, end)
            self._stop(end)
            return
        trained = (f"trained steps {self.steps_seen[0] + 1}-{self.steps_seen[1]}"
                   if self.steps_seen else "ran no training steps")
        logging.warning("--profile_steps=%d,%d: no profiler trace recorded, the run %s; pick "
                        "steps inside the run (steps per epoch x --epochs).", first, last,
                        trained)
        self.done = True

    def _start(self, step: int) -> None:
        try:
            tf.profiler.experimental.start(self.logdir)
        except tf.errors.OpError as error:
            # Profiling is an extra: a busy profiler must not stop the training run.
            logging.warning("--profile_steps: could not start TensorFlow's profiler (%s); "
                            "training continues without a trace.", error.message)
            self.done = True
            return
        self.started_at = step
        logging.info("profiler: tracing from step %d", step + 1)

    def _stop(self, step: int) -> None:
        tf.profiler.experimental.stop()
        logging.info("profiler: traced steps %d-%d into %s/plugins/profile (TensorBoard's "
                     "Profile tab)", self.started_at + 1, step, self.logdir)
        self.started_at = None
        self.done = True


def write_training_curves(history: list[dict[str, Any]], path: str) -> None:
    """Draws loss and accuracy per epoch, train and validation, into a PNG at ``path``.

    Args:
      history: one dict per epoch with "epoch", "train/loss", "train/accuracy"
        and, with validation data, "val/loss" and "val/accuracy".
      path: where the PNG goes; local or gs://.
    """
    # A Figure without pyplot: no global state and no display backend (Agg renders it).
    figure = Figure(figsize=(10, 4), layout="constrained")
    epochs = [entry["epoch"] for entry in history]
    for axes, quantity in zip(figure.subplots(1, 2), ("loss", "accuracy"), strict=True):
        for split, label in (("train", "train"), ("val", "validation")):
            values = [entry.get(f"{split}/{quantity}") for entry in history]
            if all(value is not None for value in values):
                axes.plot(epochs, values, marker="o", label=label)
        axes.set(title=quantity, xlabel="epoch")
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buffer.getvalue())
