"""The run's settings: one frozen, validated Config that every module takes.

Nothing past ``trainer.main`` reads absl FLAGS; it reads a Config. Values that
follow from the Config and the hardware (per-replica batch, steps) are
computed by the module that needs them, never written back here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trainer.errors import UserError

# Every reader in trainer.sources.READERS, plus auto (tests/test_sources.py checks they agree).
DATA_SOURCES = ("auto", "aclimdb", "tfds", "keras_npz", "csv", "tsv", "jsonl", "folders")
CLASS_WEIGHTS = ("", "balanced")
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
PADDINGS = ("pre", "post")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run. Field names and defaults match the flags.

    The defaults are the article's model and recipe (Adam 1e-3, batch 64, 500
    tokens) trained the fast way: reviews grouped by length, right-padded and
    masked, the gradient's norm clipped at 0.25, the embedding's gradient
    handed to Adam dense, the weights' moving average validated and kept, and
    on a CPU the LSTM's fused recurrence with one thread per op. In
    ``benchmarks/`` that trained 3.7-4.4x the article's examples/s and reached
    0.87 test accuracy after 2 epochs, 6-11x sooner than the article's code.
    ``--article_settings`` restores the article's exact recipe (pre-padding to
    500, no mask, no clipping, sparse embedding gradient, the last weights,
    Keras' own LSTM).
    See ``trainer/flags.py`` for what each field means.
    """

    # Data.
    data_source: str = "auto"
    data_path: str = ""
    tfds_data_dir: str = ""
    max_train_examples: int = 0
    max_test_examples: int = 0
    validation_split: float = 0.1
    test_data_path: str = ""
    test_split: float = 0.2
    text_column: str = "text"
    label_column: str = "label"
    class_weight: str = ""
    # Model.
    vocab_size: int = 10000
    max_len: int = 500
    embedding_dim: int = 32
    lstm_units: int = 100
    lean_lstm: bool = True
    padding: str = "post"
    mask_padding: bool = False
    bucket_by_length: bool = True
    bucket_window_batches: int = 100
    # Training.
    batch_size: int = 64
    epochs: int = 10
    learning_rate: float = 1e-3
    clip_norm: float = 0.25
    dense_embedding_gradient: bool = True
    ema_momentum: float = 0.99
    seed: int = 42
    early_stopping_patience: int = 2
    steps_per_loop: int = 1
    # Distribution.
    strategy: str = "auto"
    num_gpus: int = 0
    # Stop at start-up, before reading any data, when TensorFlow sees no GPU.
    require_gpu: bool = False
    cpu_replicas: int = 0
    cluster_timeout_secs: int = 600
    precision: str = "auto"
    intra_op_threads: int | None = None
    # Outputs.
    model_dir: str = ""
    checkpoint_dir: str = ""
    tensorboard_dir: str = ""
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 3
    log_every_steps: int = 50
    profile_steps: str = ""
    overwrite: bool = False
    smoke_test: bool = False
    article_settings: bool = False
    fast_settings: bool = False

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Returns every field, for metrics.json and the HParams table."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        """Returns a validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def profile_window(self) -> tuple[int, int] | None:
        """(first, last) training step to trace, from ``profile_steps``; None if unset."""
        if not self.profile_steps:
            return None
        first, last = (int(part) for part in self.profile_steps.split(","))
        return first, last

    @property
    def uses_mask(self) -> bool:
        """Whether the Embedding masks padding: asked for, or needed by length bucketing.

        Bucketed batches vary in width; the mask is what keeps a review's
        prediction the same whatever its batch is padded to.
        """
        return self.mask_padding or self.bucket_by_length

    @property
    def data_source_resolved(self) -> str:
        """The data source ``auto`` stands for, judged by what --data_path is.

        See ``trainer.sources.resolve``; imported here, since sources imports Config.
        """
        from trainer import sources

        return sources.resolve(self)


def _validate(config: Config) -> None:
    """Raises UserError naming the flag for the first invalid value."""
    choices = {
        "data_source": DATA_SOURCES,
        "strategy": STRATEGIES,
        "precision": PRECISIONS,
        "padding": PADDINGS,
        "class_weight": CLASS_WEIGHTS,
    }
    for name, allowed in choices.items():
        value = getattr(config, name)
        if value not in allowed:
            raise UserError(
                f"--{name}={value!r} is not one of {', '.join(allowed)}; pick one of those."
            )
    for name in ("vocab_size", "max_len", "embedding_dim", "lstm_units", "batch_size",
                 "epochs", "steps_per_loop", "keep_checkpoints", "log_every_steps",
                 "bucket_window_batches", "cluster_timeout_secs"):
        value = getattr(config, name)
        if value <= 0:
            raise UserError(f"--{name}={value} must be a positive integer.")
    for name in ("max_train_examples", "max_test_examples", "early_stopping_patience",
                 "num_gpus", "cpu_replicas", "checkpoint_every_steps"):
        value = getattr(config, name)
        if value < 0:
            raise UserError(f"--{name}={value} must be 0 or more (0 means {_ZERO[name]}).")
    if config.intra_op_threads is not None and config.intra_op_threads < 0:
        raise UserError(f"--intra_op_threads={config.intra_op_threads} must be 0 (TensorFlow's "
                        "choice: one per core) or more; leave it unset for the default.")
    if not 0.0 <= config.validation_split < 1.0:
        raise UserError(
            f"--validation_split={config.validation_split} must be in [0, 1): the fraction "
            "of training reviews held out for validation."
        )
    _validate_data(config)
    if config.early_stopping_patience and not config.validation_split:
        raise UserError(
            "--early_stopping_patience needs validation data: set --validation_split > 0, "
            "or --early_stopping_patience=0 to turn early stopping off."
        )
    if not config.learning_rate > 0:
        raise UserError(f"--learning_rate={config.learning_rate} must be positive.")
    if not 0.0 <= config.ema_momentum < 1.0:
        raise UserError(f"--ema_momentum={config.ema_momentum} must be in [0, 1): 0 turns the "
                        "weight average off, 0.99 averages about the last 100 steps.")
    if config.clip_norm < 0:
        raise UserError(f"--clip_norm={config.clip_norm} must be 0 (off) or positive.")
    if config.vocab_size < 3:
        raise UserError(
            f"--vocab_size={config.vocab_size} is too small: ids 0 and 1 are padding and "
            "out-of-vocabulary; use at least 3 (the article uses 10000)."
        )
    if config.profile_steps:
        parts = config.profile_steps.split(",")
        if (len(parts) != 2 or not all(p.strip().isdigit() for p in parts)
                or not 0 < int(parts[0]) <= int(parts[1])):
            raise UserError(f"--profile_steps={config.profile_steps!r} must be START,STOP: two "
                            "step numbers with 0 < START <= STOP, e.g. 10,15.")
    if config.max_train_examples == 1 or config.max_test_examples == 1:
        raise UserError(
            "--max_train_examples and --max_test_examples take 0 (all) or at least 2, "
            "so both classes are present."
        )


def _validate_data(config: Config) -> None:
    """Raises UserError for an invalid test split or column setting."""
    if not 0.0 <= config.test_split < 1.0:
        raise UserError(
            f"--test_split={config.test_split} must be in [0, 1): the fraction of the data held "
            "out as the test set when the source has no test split and no --test_data_path."
        )
    for name in ("text_column", "label_column"):
        parts = getattr(config, name).split(",")
        if not all(part.strip() for part in parts):
            raise UserError(f"--{name}={getattr(config, name)!r} must name a column (a name or "
                            "a 0-based index; several text columns joined by commas).")
    if "," in config.label_column:
        raise UserError(f"--label_column={config.label_column!r} must be one column.")


_ZERO = {
    "max_train_examples": "all",
    "max_test_examples": "all",
    "early_stopping_patience": "off",
    "num_gpus": "all visible GPUs",
    "cpu_replicas": "do not split the CPU",
    "checkpoint_every_steps": "only at epoch ends",
}
