"""What the run shows while it trains: progress lines and TensorBoard scalars.

Metric names are the same everywhere: ``train/loss``, ``val/accuracy``,
``test/accuracy``... in the log line, in TensorBoard and in metrics.json.
Only the chief writes TensorBoard files; every process prints progress.
"""

from __future__ import annotations

import tensorflow as tf
from absl import logging

from trainer.config import Config


def format_metrics(metrics: dict[str, float]) -> str:
    """``train/loss 0.6931 | train/accuracy 0.5000 | ...``, rates and seconds shortened."""
    parts = []
    for name, value in metrics.items():
        if name.endswith("examples_per_sec"):
            parts.append(f"examples/sec {value:.0f}")
        elif name.endswith("seconds"):
            parts.append(f"seconds {value:.1f}")
        else:
            parts.append(f"{name} {value:.4f}")
    return " | ".join(parts)


class Summaries:
    """Implements ``loop.Reporter``: absl log lines plus TensorBoard scalars (chief only)."""

    def __init__(self, config: Config, is_chief: bool) -> None:
        self.config = config
        self.writer = (tf.summary.create_file_writer(config.tensorboard_dir) if is_chief
                       else tf.summary.create_noop_writer())

    def train_progress(self, step: int, epoch: int, epoch_step: int, steps_in_epoch: int,
                       metrics: dict[str, float]) -> None:
        logging.info("epoch %d/%d | step %d/%d | %s", epoch, self.config.epochs, epoch_step,
                     steps_in_epoch, format_metrics(metrics))
        self.scalars(step, metrics)

    def epoch_end(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        logging.info("epoch %d/%d done | step %d | %s", epoch, self.config.epochs, step,
                     format_metrics(metrics))
        self.scalars(step, {f"epoch/{name}": value for name, value in metrics.items()})

    def scalars(self, step: int, metrics: dict[str, float]) -> None:
        with self.writer.as_default(step=step):
            for name, value in metrics.items():
                tf.summary.scalar(name, value)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
