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
- at each epoch end, the validation confusion matrix as a picture,
  ``val/confusion_matrix``; at the end ``test/confusion_matrix``;
- at the end, ``test/loss`` and ``test/accuracy``;
- as HParams (so runs compare in one table) the settings that change what is
  learned (``hparams``); every setting, and the model's summary, as text;
- with ``--profile_steps``, a profiler trace under ``plugins/profile/``, each
  step in the window marked, so TensorBoard's Profile tab measures step time.

Every scalar's x-axis is the training step. Only the chief writes TensorBoard
files and profiles; every process prints progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import time
from collections.abc import Iterator, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboard.plugins.hparams import api as hp

from trainer import model as model_lib
from trainer import rundir, sources
from trainer.config import Config
from trainer.errors import UserError
from trainer.lstm import LeanLSTM
from trainer.task import Tally

EPOCH_PREFIX = "epoch/"
CURVES_FILE = "training_curves.png"  # In model_dir, for people who do not open TensorBoard.
MODEL_SUMMARY_TAG = "model/summary"
SETTINGS_TAG = "run/settings"  # Every setting, a Markdown table in the Text tab.
CONFUSION_TAG = "confusion_matrix"  # Under the evaluation's prefix: val/confusion_matrix.
# Settings of Config's Training group that change only the speed, not what is learned:
# left out of the HParams table (they stay in the Text tab's table).
SPEED_ONLY_SETTINGS = ("steps_per_loop",)


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
        self.is_chief = is_chief
        self.writer = (tf.summary.create_file_writer(config.tensorboard_dir) if is_chief
                       else tf.summary.create_noop_writer())
        # Every process runs the window's one-step calls (collectives need the same calls
        # everywhere); only the chief traces: several processes would mix their files.
        self.profiler = ProfilerWindow(
            config.profile_window,
            config.steps_per_loop if steps_per_call is None else steps_per_call,
            config.tensorboard_dir, trace=is_chief)
        self._interval_start: tuple[int, float] | None = None  # (step, time) of the interval.
        self._pictures: dict[tuple[str, ...], ConfusionPicture] = {}  # By class names.
        if is_chief:
            self._write_run_description(model)
            if config.profile_window and runs_keras_loop(model, config):
                logging.warning(
                    "--profile_steps: the LSTM runs Keras' generic kernel here, a TensorFlow "
                    "loop over the time steps, and TensorBoard's Profile tab (xprof) takes a "
                    "traced loop's iterations as the steps: its overview page will show no "
                    "step time (the trace viewer still marks each step, train <step>). The "
                    "fused kernels have no such loop: --lean_lstm on a CPU, cuDNN on a GPU.")

    @contextlib.contextmanager
    def train_call(self, step: int) -> Iterator[bool]:
        """Wraps one call of the compiled training steps, made at training step ``step``.

        Starts the step-time interval and starts or stops the profiler window.
        Yields whether the call is to run one step through the loop-free
        ``Loop.train_step`` (around the profiler's window, see
        ``ProfilerWindow``); while tracing, marks it as the step it runs
        (``train <step>``), without which TensorBoard's Profile tab finds no
        step and no step time.
        """
        now = time.perf_counter()
        if self._interval_start is None:
            self._interval_start = (step, now)
        if self._training_start is None:
            self._training_start = (step, now)
        one_step = self.profiler.one_step(step)
        self.profiler.before_train_steps(step)
        if self.profiler.started_at is None:
            yield one_step
            return
        with tf.profiler.experimental.Trace("train", step_num=step + 1, _r=1):
            yield one_step

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

    def evaluated(self, step: int, prefix: str, tally: Tally,
                  class_names: Sequence[str]) -> None:
        """Draws an evaluation's confusion matrix as ``<prefix>/confusion_matrix`` at ``step``.

        Called after ``epoch_end`` for each evaluation set (``val``), and once for
        the test split. Only the chief draws: the others' writer writes nothing.
        """
        if not self.is_chief:
            return
        names = tuple(class_names)
        if names not in self._pictures:
            self._pictures[names] = ConfusionPicture(names)
        accuracy = float(np.trace(tally.confusion)) / max(tally.count, 1.0)
        pixels = self._pictures[names].draw(
            tally.confusion, f"{prefix}: step {step}, accuracy {accuracy:.4f}")
        with self.writer.as_default(step=step):
            tf.summary.image(f"{prefix}/{CONFUSION_TAG}", pixels[None],
                             description="Rows: the true class; columns: the predicted one. "
                             "Each cell: its examples, and their share of the row (the "
                             "true class's recall on the diagonal), which sets its colour.")
        self.writer.flush()

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
        """At step 0: HParams, and every setting and the model summary for the Text tab."""
        lines: list[str] = []
        model.summary(print_fn=lines.append)
        # Indented four spaces: Markdown shows it as code, keeping the table's columns.
        text = "\n".join("    " + line for line in "\n".join(lines).splitlines())
        columns = hparams(self.config, precision=keras.mixed_precision.global_policy().name)
        with self.writer.as_default(step=0):
            hp.hparams(columns)
            tf.summary.text(SETTINGS_TAG, settings_table(self.config, columns))
            tf.summary.text(MODEL_SUMMARY_TAG, text)
        self.writer.flush()


def runs_keras_loop(model: keras.Model, config: Config) -> bool:
    """Whether the LSTM runs Keras' generic kernel (a TensorFlow while loop) on this machine.

    On a GPU: when a setting blocks cuDNN (``model.cudnn_blockers``); on a CPU:
    unless ``LeanLSTM`` runs its fused recurrence (``model.cpu_lstm_kernel``).
    """
    if tf.config.list_logical_devices("GPU"):
        return bool(model_lib.cudnn_blockers(model, config))
    lstm = model.get_layer(model_lib.LSTM_LAYER_NAME)
    return not (isinstance(lstm, LeanLSTM) and lstm.runs_lean(training=True))


def _hparam_value(item: Any) -> str | bool | int | float:
    """A setting as an HParams value (str, bool, int or float); a tuple comma-separated."""
    if isinstance(item, str | bool | int | float):
        return item
    if isinstance(item, tuple | list):
        return ",".join(str(part) for part in item)
    return str(item)


def hparams(config: Config, precision: str | None = None) -> dict[str, str | bool | int | float]:
    """The HParams table's columns: the settings that change what is learned.

    Chosen by what the settings are, so a new setting lands on the right side
    by itself: those that define the training state (``rundir.STATE_SETTINGS``:
    the data, its split, the batches, the model's shape, the seed) and Config's
    Training group (the optimizer, the schedule, clipping, the weights'
    average, epochs and early stopping), less the Training settings that change
    only the speed (``SPEED_ONLY_SETTINGS``). Paths, cadences, devices and
    outputs are left to the Text tab's table (``settings_table``).

    Args:
      config: the run's settings; the values are the resolved ones (a
        preset's included, ``data_source`` as ``auto`` resolved it).
      precision: the dtype policy the run computes in (``--precision=auto``
        resolved), added as ``precision``; None leaves it out.

    Returns:
      ``{name: value}`` in Config's order, then ``presets`` (the presets
      applied, comma-separated) and ``precision``.
    """
    columns = {}
    for field in dataclasses.fields(Config):
        learned = (field.name in rundir.STATE_SETTINGS
                   or field.metadata.get("group") == "Training")
        if learned and field.name not in SPEED_ONLY_SETTINGS:
            columns[field.name] = _hparam_value(getattr(config, field.name))
    with contextlib.suppress(UserError):  # A path auto cannot judge keeps "auto".
        columns["data_source"] = sources.resolve(config)
    columns["presets"] = _hparam_value(config.presets)
    if precision is not None:
        columns["precision"] = precision
    return columns


def settings_table(config: Config, columns: dict[str, Any] | None = None) -> str:
    """Every setting as a Markdown table (group, flag, value), for the Text tab.

    Args:
      config: the run's settings, in Config's order (grouped as ``--help`` is).
      columns: the HParams columns (``hparams``): marked ``yes`` in the last
        column, with the value resolved where it differs (``auto`` ->
        ``aclimdb``).
    """
    columns = columns or {}

    def cell(item: Any) -> str:
        if item is None:
            return "*(unset)*"
        text = str(_hparam_value(item))
        return f"`{text.replace('|', '&#124;')}`" if text else "*(empty)*"

    rows = ["| group | setting | value | in HParams |", "| --- | --- | --- | --- |"]
    for field in dataclasses.fields(Config):
        group = field.metadata.get("group", "")
        flag = f"--{field.name}" if group else field.name  # presets has no flag of its own.
        value = getattr(config, field.name)
        shown = ""
        if field.name in columns:
            resolved = columns[field.name]
            shown = "yes" if resolved == _hparam_value(value) else f"yes, as {cell(resolved)}"
        rows.append(f"| {group} | {flag} | {cell(value)} | {shown} |")
    return "\n".join(rows)


class ProfilerWindow:
    """Records a TensorFlow profiler trace of the training steps in a window, a step per call.

    Steps are counted by the optimizer (the first step is 1). TensorBoard's
    Profile tab (xprof) measures step time only over steps it can find: it
    groups a trace into steps by the ``train`` markers around each call
    (``tf.profiler.experimental.Trace("train", step_num=..., _r=1)``), unless
    the trace holds a TensorFlow loop's iterations, which it takes as the
    steps instead, with no marker in them, and then reports no step time. The
    compiled ``Loop.train_steps`` is such a loop (even for one step). So
    around the window, whatever ``steps_per_loop``, every call runs one step
    through the loop-free ``Loop.train_step``: from the first call whose
    steps would reach step ``first - 1`` (run untraced: the first call builds
    that function) to step ``last``. The trace covers exactly steps ``first``
    to ``last``, each marked ``train <step>``. (With more than 5 steps,
    xprof's overview leaves out the first and the last as maybe incomplete.)

    Which calls run one step depends only on the window, the step and
    ``steps_per_loop``, so it is the same on every worker, as the collectives
    of multi-worker training need.

    Args:
      window: (first, last) step to trace; None records nothing.
      steps_per_loop: training steps per call of the compiled loop.
      logdir: the TensorBoard run folder; the trace lands in its
        ``plugins/profile/<time>/``, where the Profile tab looks.
      trace: whether this process records the trace (the chief); the others
        still run the window's one-step calls.
    """

    def __init__(self, window: tuple[int, int] | None, steps_per_loop: int,
                 logdir: str, *, trace: bool = True) -> None:
        self.window = window
        self.steps_per_loop = steps_per_loop
        self.logdir = logdir
        self.started_at: int | None = None  # Step at which the running trace began.
        self.done = window is None or not trace
        self.steps_seen: tuple[int, int] | None = None  # (first, last) step this process saw.

    def one_step(self, step: int) -> bool:
        """Whether the call made at ``step`` runs one step through ``Loop.train_step``."""
        if self.window is None:
            return False
        first, last = self.window
        return step < last and step + self.steps_per_loop >= first - 1

    def before_train_steps(self, step: int) -> None:
        """Starts or stops the trace around the call that runs steps ``step + 1...``."""
        first_seen = self.steps_seen[0] if self.steps_seen else step
        self.steps_seen = (first_seen, step)
        if self.done:
            return
        first, last = self.window  # type: ignore[misc]
        if self.started_at is None and first - 1 <= step < last:
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


class ConfusionPicture:
    """Draws confusion matrices of one set of classes, reusing one figure (cheap per epoch).

    Rows are the true class, columns the predicted one. Each cell shows its
    count and its share of the row, which also sets its colour, so the
    diagonal reads as each class's recall whatever the class sizes. The
    figure is laid out once, on the first draw; later draws only change the
    numbers (about 20 ms for two classes).

    Args:
      class_names: the classes, in class-id order; named on both axes.
    """

    MAX_ANNOTATED = 20  # Classes beyond which the cells are too small for numbers.

    def __init__(self, class_names: Sequence[str]) -> None:
        count = len(class_names)
        # Inches; at 100 dpi 390 wide, 360 high for two classes; at most 1,630 x 1,600.
        side = min(2.4 + 0.6 * count, 16.0)
        # A Figure without pyplot: no global state and no display backend (Agg renders it).
        self.figure = Figure(figsize=(side + 0.3, side), dpi=100, layout="constrained")
        self.canvas = FigureCanvasAgg(self.figure)
        axes = self.figure.subplots()
        self.image = axes.imshow(np.zeros([count, count]), cmap="Blues", vmin=0.0, vmax=1.0)
        long_names = max(len(name) for name in class_names) > 8
        axes.set_xticks(range(count), class_names, rotation=30 if long_names else 0,
                        ha="right" if long_names else "center")
        axes.set_yticks(range(count), class_names)
        axes.set(xlabel="predicted class", ylabel="true class")
        self.title = axes.set_title(" ", fontsize=10)
        self.cells = ([[axes.text(column, row, "", ha="center", va="center", fontsize=9)
                        for column in range(count)] for row in range(count)]
                      if count <= self.MAX_ANNOTATED else [])
        self._laid_out = False

    def draw(self, confusion: np.ndarray, title: str) -> np.ndarray:
        """The picture of ``confusion`` (``[K, K]`` counts) as ``[height, width, 3]`` uint8."""
        confusion = np.asarray(confusion, np.float64)
        support = confusion.sum(axis=1, keepdims=True)
        share = np.divide(confusion, support, out=np.zeros_like(confusion), where=support > 0)
        self.image.set_data(share)
        self.title.set_text(title)
        for row, cells in enumerate(self.cells):
            for column, cell in enumerate(cells):
                cell.set_text(f"{confusion[row, column]:.0f}\n{share[row, column]:.1%}")
                cell.set_color("white" if share[row, column] > 0.6 else "black")
        self.canvas.draw()
        if not self._laid_out:  # Keep the first draw's layout: later draws skip the solver.
            self.figure.set_layout_engine("none")
            self._laid_out = True
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


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
