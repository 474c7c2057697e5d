"""The run's settings: one frozen, validated Config that every module takes.

Nothing past ``trainer.main`` reads absl FLAGS; it reads a Config. Values that
follow from the Config and the hardware (per-replica batch, steps) are
computed by the module that needs them, never written back here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Container, Iterable
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
    on a CPU the LSTM's fused recurrence with one thread per op (measured in
    ``benchmarks/README.md``). ``PRESETS["article_settings"]`` is the article's
    exact recipe. Each field's comment says what it is; ``trainer/flags.py``
    has the longer help.
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
    vocab_size: int = 10000  # Token ids, padding (0) and out-of-vocabulary (1) included.
    max_len: int = 500  # Tokens a review keeps after truncation (and padding, unbucketed).
    embedding_dim: int = 32  # Embedding width.
    lstm_units: int = 100  # LSTM units.
    lean_lstm: bool = True  # On a CPU, LeanLSTM's fused recurrence instead of Keras' loop.
    padding: str = "post"  # Side reviews are padded and truncated on: pre or post.
    mask_padding: bool = False  # Mask padding tokens (implied by bucket_by_length).
    bucket_by_length: bool = True  # Batch reviews of similar length, padded to the longest.
    bucket_window_batches: int = 100  # Batches per length-sorted window when bucketing.
    # Training.
    batch_size: int = 64  # GLOBAL batch, split evenly over all replicas.
    epochs: int = 10  # Most passes over the training reviews.
    learning_rate: float = 1e-3  # Adam's learning rate.
    clip_norm: float = 0.25  # Clip the gradient's global norm to this; 0 = off.
    dense_embedding_gradient: bool = True  # Give Adam the embedding's gradient dense.
    ema_momentum: float = 0.99  # Keep the weights' moving average with this momentum; 0 = off.
    seed: int = 42  # Seeds subsets, splits, shuffles and initialization.
    early_stopping_patience: int = 2  # Epochs without a lower val loss before stopping; 0 = off.
    steps_per_loop: int = 1  # Training steps per tf.function call.
    # Distribution.
    strategy: str = "auto"  # tf.distribute strategy; auto looks at TF_CONFIG and the GPUs.
    num_gpus: int = 0  # Use only the first N GPUs; 0 = all.
    require_gpu: bool = False  # Stop at start-up, before reading data, if there is no GPU.
    cpu_replicas: int = 0  # Split the CPU into N logical devices; 0 = do not split.
    cluster_timeout_secs: int = 600  # How long workers wait for the whole cluster to start.
    precision: str = "auto"  # Keras dtype policy; auto: mixed_float16 on a GPU, else float32.
    intra_op_threads: int | None = None  # Threads per op; None: 1 for LeanLSTM on a CPU.
    # Outputs.
    model_dir: str = ""  # Where the run writes everything; resolved by trainer.flags.
    checkpoint_dir: str = ""  # Checkpoints; resolved to <model_dir>/checkpoints.
    tensorboard_dir: str = ""  # Event files; resolved to <model_dir>/tensorboard.
    checkpoint_every_steps: int = 0  # Also checkpoint every N steps; 0 = epoch ends only.
    keep_checkpoints: int = 3  # Checkpoints kept on disk.
    log_every_steps: int = 50  # A progress line every N training steps.
    profile_steps: str = ""  # START,STOP of a profiler trace; empty = none.
    overwrite: bool = False  # Start a finished --model_dir over instead of reporting it done.
    # The PRESETS that set the values above (a record for metrics.json and HParams).
    presets: tuple[str, ...] = ()

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


# Named sets of values, each switched on by its flag (--smoke_test, --article_settings).
# A preset, not a separate code path: the run is the same job with other values. Applied
# in this order, so where both set a value the smoke test's wins (--article_settings
# --smoke_test is the article's recipe on the smoke test's data).
PRESETS: dict[str, dict[str, Any]] = {
    # The article's code: keras pad_sequences(maxlen=500) (pre), no mask, model.fit at
    # batch 64, compile("adam") (1e-3, no clipping, the sparse embedding gradient), the last
    # weights, Keras' own LSTM layer.
    "article_settings": {
        "max_len": 500,
        "padding": "pre",
        "mask_padding": False,
        "bucket_by_length": False,
        "batch_size": 64,
        "learning_rate": 1e-3,
        "clip_norm": 0.0,
        "dense_embedding_gradient": False,
        "ema_momentum": 0.0,
        "lean_lstm": False,
    },
    # The whole path on a few thousand reviews, short sequences and few epochs (the
    # weights' average warms up, so the default momentum suits its 168 steps too).
    "smoke_test": {
        "max_train_examples": 4000,
        "max_test_examples": 2000,
        "max_len": 128,
        "epochs": 3,
        "early_stopping_patience": 0,
        "log_every_steps": 20,
    },
}


def apply_presets(values: dict[str, Any], presets: Iterable[str],
                  explicit: Container[str]) -> dict[str, Any]:
    """``values`` with the named presets applied under the explicitly given settings.

    Args:
      values: Config field values (the flags' values, defaults included).
      presets: names of PRESETS to apply, in any order.
      explicit: names of the settings given explicitly, which no preset overrides.

    Returns:
      A new dict of field values, ``presets`` recording the names applied.

    Raises:
      UserError: a name that is not in PRESETS.
    """
    wanted = set(presets)
    unknown = wanted - set(PRESETS)
    if unknown:
        raise UserError(f"unknown preset(s) {', '.join(sorted(unknown))}; the presets are "
                        f"{', '.join(PRESETS)}.")
    result = dict(values)
    applied = tuple(name for name in PRESETS if name in wanted)
    for name in applied:
        result.update({key: value for key, value in PRESETS[name].items()
                       if key not in explicit})
    result["presets"] = applied
    return result


def _validate(config: Config) -> None:
    """Raises UserError naming the flag for the first invalid value."""
    if set(config.presets) - set(PRESETS):
        raise UserError(f"presets={config.presets!r}: the presets are {', '.join(PRESETS)}.")
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
