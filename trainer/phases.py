"""Where a run's wall-clock goes, phase by phase, from the process's start.

``train`` marks the end of each phase with ``lap``; the training loop reports
its own split (training steps against the work between them: evaluation,
checkpoints, summaries). ``metrics.json``'s ``phases_sec`` and the run's last
log line come from here, so a user sees at once when something outside the
steps costs more than it should.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

# The phases in the order a run goes through them; "total" is from the process's start.
STARTUP = "startup"  # Interpreter, imports, TensorFlow, the strategy, folder checks.
READING = "reading"  # The data source read into splits.
VECTORIZING = "vectorizing"  # The vocabulary built and every split encoded.
MODEL = "model"  # The model and optimizer built, the checkpoint restored.
TRAINING_STEPS = "training_steps"  # The compiled training calls (progress lines included).
BETWEEN_STEPS = "between_steps"  # Each epoch's end: evaluation, checkpoints, summaries.
TEST = "test_evaluation"
OUTPUTS = "outputs"  # vocab, labels, model.keras, the export, the curves picture.
TOTAL = "total"


def process_start() -> float:
    """When this process started, as ``time.time()`` would have said then.

    Linux says how long ago in ``/proc`` (interpreter start-up and imports
    included); elsewhere this is now.
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            start_ticks = int(stat.read().rpartition(")")[2].split()[19])  # Field 22.
        with open("/proc/uptime", encoding="ascii") as uptime:
            up = float(uptime.read().split()[0])
        return time.time() - (up - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


class Phases:
    """Seconds per phase of one run, measured as laps of one clock.

    Args:
      started: when the run's clock starts (default: the process's start).
    """

    def __init__(self, started: float | None = None) -> None:
        self.started = process_start() if started is None else started
        self._last = self.started
        self.seconds: dict[str, float] = {}
        self.between_steps_per_epoch: list[float] = []

    def lap(self, name: str) -> None:
        """Adds the time since the last lap (or the start) to phase ``name``."""
        now = time.time()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now

    def split_training(self, train_seconds: float, between: Sequence[float]) -> None:
        """Turns the lap just taken for the training loop into steps and the work between.

        Args:
          train_seconds: the loop's seconds inside its training calls.
          between: each epoch end's seconds (evaluation, checkpoint, summaries),
            this attempt's.
        """
        loop_seconds = self.seconds.pop(TRAINING_STEPS, 0.0)
        self.seconds[TRAINING_STEPS] = train_seconds
        self.seconds[BETWEEN_STEPS] = max(loop_seconds - train_seconds, 0.0)
        self.between_steps_per_epoch = [round(value, 3) for value in between]

    def report(self) -> dict[str, float | list[float]]:
        """``{phase: seconds, ..., "total": seconds since the start}``, for metrics.json."""
        report: dict[str, float | list[float]] = {
            name: round(value, 3) for name, value in self.seconds.items()}
        report["between_steps_per_epoch"] = self.between_steps_per_epoch
        report[TOTAL] = round(time.time() - self.started, 3)
        return report

    def line(self) -> str:
        """``startup 6.1s | reading 3.0s | ... | total 92.4s``: the run's last log line."""
        parts = [f"{name} {value:.1f}s" for name, value in self.seconds.items()]
        return " | ".join([*parts, f"{TOTAL} {time.time() - self.started:.1f}s"])
