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
LR_SCHEDULES = ("constant", "cosine")


def setting(group: str, default: Any, help_text: str, *, choices: tuple[str, ...] = (),
            minimum: int | None = None, zero: str = "") -> Any:
    """A Config field with what its flag needs: the --help group and text, and its rules.

    ``trainer.flags`` defines one flag per setting from these; ``_validate``
    checks the rules, naming the flag.

    Args:
      group: the --help group (one of ``GROUPS``).
      default: the field's default, and the flag's.
      help_text: the flag's help.
      choices: the allowed values (an enum flag).
      minimum: the smallest allowed integer (0 or 1).
      zero: with ``minimum=0``, what 0 means (said when a value is below it).
    """
    return dataclasses.field(default=default, metadata={
        "group": group, "help": help_text, "choices": choices, "minimum": minimum,
        "zero": zero})


# The --help groups, in the order --help shows them (Presets are trainer.flags' own).
GROUPS = ("Presets", "Data", "Model", "Training", "Distribution", "Outputs")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run: its default, its flag's help and its rules, field by field.

    The defaults are the article's model (500 tokens, Adam 1e-3) trained the
    fast way: reviews grouped by length, right-padded and masked, batch 32
    (the article: 64), the gradient's norm clipped at 0.25, the embedding's
    gradient handed to Adam dense and its rows learning at 10x the rate, Adam's
    beta_2 0.99, the rate falling along a cosine to 0 at the last of --epochs
    (a short run on little data ends on small steps instead of overfitting at
    the full rate), the weights' moving average validated and kept, and on a
    CPU the LSTM's fused recurrence with one thread per op (measured in
    ``docs/performance.md``). ``PRESETS["article_settings"]`` is the article's
    exact recipe. A new field here is a new flag: ``trainer.flags`` defines one
    per field from its ``setting``.
    """

    data_source: str = setting(
        "Data", "auto",
        "Where the labeled texts come from. auto: judged by --data_path (an aclImdb folder or "
        ".tar.gz: aclimdb; .csv, .tsv, .jsonl, optionally .gz: that format; a folder of class "
        "folders: folders; .npz: keras_npz; none: tfds). aclimdb: an aclImdb folder or "
        ".tar.gz (read in place, nothing extracted). tfds: tensorflow-datasets imdb_reviews. "
        "keras_npz: a Keras imdb.npz of token ids. csv (RFC 4180), tsv (one row a line, quotes "
        "are text), jsonl (one JSON object a line): see --text_column and --label_column. "
        "folders: DIR/<class>/*.txt, or DIR/train/<class>/*.txt and DIR/test/<class>/*.txt.",
        choices=DATA_SOURCES)
    data_path: str = setting(
        "Data", "",
        "The data, local or gs://: an aclImdb folder or a .tar.gz of it, a .csv/.tsv/.jsonl "
        "file (optionally .gz) or a glob or folder of such shards (streamed, see --stream), "
        "a folder of class folders, or an imdb.npz.")
    test_data_path: str = setting(
        "Data", "",
        "A separate test file (or folder of class folders) in --data_path's format; its labels "
        "must all occur in --data_path. Without it, a source with no test split holds out "
        "--test_split of the data.")
    test_split: float = setting(
        "Data", 0.2,
        "Fraction of each class held out (seeded by --seed) as the test set when the source "
        "has no test split and --test_data_path is not given.")
    text_column: str = setting(
        "Data", "text",
        "csv/tsv/jsonl: the text's column, a header name (a JSON key) or a 0-based index; "
        "several, comma-separated, are joined with a space (e.g. title,description).")
    label_column: str = setting(
        "Data", "label",
        "csv/tsv/jsonl: the label's column, a header name (a JSON key) or a 0-based index. "
        "Labels may be strings or integers; class ids follow their sorted order (numeric if "
        "all are integers).")
    class_weight: str = setting(
        "Data", "",
        "balanced: weight each class's loss by n_examples / (n_classes * its count) in "
        "training; empty: every example counts the same.", choices=CLASS_WEIGHTS)
    tfds_data_dir: str = setting(
        "Data", "",
        "Where tensorflow-datasets keeps imdb_reviews (default: its own, "
        "~/tensorflow_datasets).")
    max_train_examples: int = setting(
        "Data", 0,
        "Use a reproducible, class-stratified subset of this many training examples "
        "(0 = all).", minimum=0, zero="all")
    max_test_examples: int = setting(
        "Data", 0,
        "Use a reproducible, class-stratified subset of this many test examples (0 = all).",
        minimum=0, zero="all")
    validation_split: float = setting(
        "Data", 0.1,
        "Fraction of the training reviews held out for validation and early stopping "
        "(the test reviews are never used for either), at most --max_validation_examples.")
    max_validation_examples: int = setting(
        "Data", 500,
        "Hold out at most this many training examples for validation: a validation loss "
        "needs a number of examples, not a share, and the rest train (0 = no cap).",
        minimum=0, zero="no cap")
    stream: str = setting(
        "Data", "auto",
        "Stream csv/tsv/jsonl rows through tf.data instead of holding them in memory "
        "(docs/data.md#data-of-any-size). auto: when --data_path is a glob or a folder of "
        "shards; on: also for one file; off: never.", choices=("auto", "on", "off"))
    classes: str = setting(
        "Data", "",
        "Streamed data: the class names in id order, comma-separated (default: the labels "
        "of the --stream_sample_rows sample, sorted).")
    stream_sample_rows: int = setting(
        "Data", 100_000,
        "Streamed data: rows read before training for the class names, the vocabulary and "
        "the split sizes.", minimum=1)
    vocab_file: str = setting(
        "Data", "",
        "Streamed data: a vocab.txt (one token a line, as a run writes it) to use instead of "
        "counting the sample's words.")

    vocab_size: int = setting(
        "Model", 10000,
        "Vocabulary size, including padding (0) and out-of-vocabulary (1) ids.", minimum=1)
    max_len: int = setting(
        "Model", 500, "Tokens per review after padding or truncation (the article: 500).",
        minimum=1)
    embedding_dim: int = setting("Model", 32, "Embedding width (the article: 32).", minimum=1)
    lstm_units: int = setting("Model", 100, "LSTM units (the article: 100).", minimum=1)
    lean_lstm: bool = setting(
        "Model", True,
        "On a CPU, run the LSTM through trainer.lstm.LeanLSTM: Keras' layer, weights and "
        "function (within 1e-5), its recurrence one fused BlockLSTM op per chain of rows "
        "(faster than Keras' loop: see docs/performance.md). On a GPU it is Keras' LSTM "
        "(cuDNN) either way. Off: keras.layers.LSTM everywhere, as the article.")
    padding: str = setting(
        "Model", "post",
        "Side on which short reviews are padded. pre is the article's (Keras pad_sequences' "
        "default); post keeps a masked LSTM cuDNN-eligible on GPU.",
        choices=PADDINGS)
    truncating: str = setting(
        "Model", "pre",
        "Side from which reviews longer than --max_len lose tokens: pre keeps each review's "
        "last --max_len tokens (Keras pad_sequences' default, and the article's), post its "
        "first. Either side works with either --padding.", choices=PADDINGS)
    mask_padding: bool = setting(
        "Model", False,
        "Mask padding tokens (Embedding mask_zero) so the LSTM skips them. The article does "
        "not.")
    bucket_by_length: bool = setting(
        "Model", True,
        "Batch reviews of similar length together, pad each batch (on the --padding side) "
        "only to its longest review and mask the padding: the LSTM runs fewer steps and "
        "computes the same prediction for each review. Implies the mask of --mask_padding.")
    bucket_window_batches: int = setting(
        "Model", 100,
        "With --bucket_by_length: batches per length-sorted window of shuffled reviews. "
        "Larger pads less; batches are shuffled within a window.", minimum=1)

    batch_size: int = setting(
        "Training", 32,
        "GLOBAL batch size, split evenly across all replicas (the article: 64).", minimum=1)
    epochs: int = setting(
        "Training", 3,
        "Maximum number of passes over the training reviews; the cosine schedule ends at "
        "the last (small data may want more).", minimum=1)
    max_steps: int = setting(
        "Training", 0,
        "Stop after this many training steps in all (the schedule ends there); what a job "
        "on data too large for whole epochs uses (0 = --epochs decide).", minimum=0,
        zero="--epochs decide")
    learning_rate: float = setting(
        "Training", 1e-3, "Adam learning rate; under --lr_schedule or --warmup_steps, the peak.")
    lr_schedule: str = setting(
        "Training", "cosine",
        "The learning rate after the warm-up: constant, or cosine (Keras' CosineDecay from "
        "--learning_rate down to 0 at the run's last step, --epochs times the steps per "
        "epoch).", choices=LR_SCHEDULES)
    warmup_steps: int = setting(
        "Training", 0,
        "Training steps over which the learning rate rises linearly from 0 to "
        "--learning_rate (0 = start at --learning_rate).", minimum=0, zero="no warm-up")
    dense_embedding_gradient: bool = setting(
        "Training", True,
        "Give Adam the embedding's gradient dense, each token's slices summed, so Adam "
        "squares a token's gradient as its math says. Off, Keras' Adam gets the sparse "
        "slices and squares each occurrence separately, as the article's model.fit does.")
    embedding_lr_scale: float = setting(
        "Training", 10.0,
        "The embedding's learning rate as a multiple of --learning_rate (1 = the same). Most "
        "of the weights are the embedding's rows, and a row learns only in the steps whose "
        "reviews hold its token.")
    adam_beta_2: float = setting(
        "Training", 0.99,
        "Adam's beta_2, the decay of its average of squared gradients (Keras and the "
        "article: 0.999).")
    clip_norm: float = setting(
        "Training", 0.25,
        "Clip the gradient's global norm to this before each Adam step; 0 turns clipping off.")
    ema_momentum: float = setting(
        "Training", 0.99,
        "Validate, keep and export the exponential moving average of the weights, updated "
        "after every step with momentum min(this, (1 + step) / (10 + step)) (0.99 averages "
        "about the last 100 steps) instead of the last step's weights. Training itself "
        "follows the raw weights. 0 turns it off (the article).")
    seed: int = setting("Training", 42,
                        "Seed for subsets, splits, shuffling and initialization.")
    early_stopping_patience: int = setting(
        "Training", 2,
        "Stop after this many epochs without a lower validation loss, and keep the weights "
        "of the best epoch (0 = off: train all --epochs and keep the last weights).",
        minimum=0, zero="off")
    steps_per_loop: int = setting(
        "Training", 1,
        "Training steps run inside one tf.function call; more means less Python overhead.",
        minimum=1)

    strategy: str = setting(
        "Distribution", "auto",
        "tf.distribute strategy. auto: multi_worker when TF_CONFIG names several tasks, "
        "mirrored with several GPUs, one_device with one, the default strategy on CPU.",
        choices=STRATEGIES)
    num_gpus: int = setting("Distribution", 0,
                            "Use only the first N visible GPUs (0 = all of them).",
                            minimum=0, zero="all visible GPUs")
    require_gpu: bool = setting(
        "Distribution", False,
        "Stop at once (exit 2, before any data is read) if TensorFlow sees no GPU, saying "
        "what it sees and what to check, instead of training on the CPU. For paid GPU "
        "machines; python -m trainer.doctor shows the same check.")
    cpu_replicas: int = setting(
        "Distribution", 0,
        "Split the CPU into N logical devices, so --strategy=mirrored runs N replicas on a "
        "machine without GPUs (0 = do not split). For trying and testing distributed "
        "training.", minimum=0, zero="do not split the CPU")
    cluster_timeout_secs: int = setting(
        "Distribution", 600,
        "Multi-worker: how long each worker waits for all the workers in TF_CONFIG to start "
        "before it stops with an error (a worker that dies later is noticed within "
        "seconds).", minimum=1)
    precision: str = setting(
        "Distribution", "auto",
        "Keras dtype policy. auto: mixed_float16 on a GPU, float32 on CPU (where mixed "
        "precision is no faster). The output layer always computes in float32.",
        choices=PRECISIONS)
    intra_op_threads: int | None = setting(
        "Distribution", None,
        "Threads one TensorFlow op may split its work across (0 = TensorFlow's choice, one "
        "per core). Unset: without a GPU when --lean_lstm runs, trainer.lstm.cpu_policy's "
        "choice for the cores this process may use; else TensorFlow's choice.")

    model_dir: str = setting(
        "Outputs", "",
        "Where everything the run writes goes: metrics.json, vocabulary, model, checkpoints, "
        "TensorBoard logs. Local or gs://. Default: $AIP_MODEL_DIR if set (Vertex AI), else "
        "a new ./runs/<date>-<time>-<random suffix>. Give an existing one to resume it.")
    checkpoint_dir: str = setting(
        "Outputs", "",
        "Checkpoints. Default: $AIP_CHECKPOINT_DIR if set, else <model_dir>/checkpoints.")
    tensorboard_dir: str = setting(
        "Outputs", "",
        "TensorBoard event files. Default: $AIP_TENSORBOARD_LOG_DIR if set, else "
        "<model_dir>/tensorboard.")
    checkpoint_every_steps: int = setting(
        "Outputs", 0,
        "Also checkpoint every N training steps, not only at epoch ends (0 = epoch ends "
        "only).", minimum=0, zero="only at epoch ends")
    keep_checkpoints: int = setting("Outputs", 3, "Checkpoints kept on disk.", minimum=1)
    log_every_steps: int = setting(
        "Outputs", 50, "Print a progress line every N training steps within an epoch.",
        minimum=1)
    profile_steps: str = setting(
        "Outputs", "",
        "START,STOP: record a TensorBoard profiler trace of these training steps (e.g. "
        "10,15); empty = no profiling.")
    overwrite: bool = setting(
        "Outputs", False,
        "Start over in a --model_dir that holds a finished run, deleting its checkpoints, "
        "instead of reporting it finished.")
    # The PRESETS that set the values above (a record for metrics.json and HParams; no flag).
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
        "truncating": "pre",
        "mask_padding": False,
        "bucket_by_length": False,
        "batch_size": 64,
        "learning_rate": 1e-3,
        "lr_schedule": "constant",
        "warmup_steps": 0,
        "clip_norm": 0.0,
        "dense_embedding_gradient": False,
        "embedding_lr_scale": 1.0,
        "adam_beta_2": 0.999,
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
    for field in dataclasses.fields(config):
        _check_rules(field, getattr(config, field.name))
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
    if not config.embedding_lr_scale > 0:
        raise UserError(f"--embedding_lr_scale={config.embedding_lr_scale} must be positive.")
    if not 0.0 <= config.adam_beta_2 < 1.0:
        raise UserError(f"--adam_beta_2={config.adam_beta_2} must be in [0, 1).")
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


def _check_rules(field: dataclasses.Field, value: Any) -> None:
    """Raises UserError if ``value`` breaks the choices or minimum of ``field``'s setting."""
    choices, minimum = field.metadata.get("choices"), field.metadata.get("minimum")
    if choices and value not in choices:
        raise UserError(f"--{field.name}={value!r} is not one of {', '.join(choices)}; pick "
                        "one of those.")
    if minimum is not None and value < minimum:
        raise UserError(f"--{field.name}={value} must be a positive integer." if minimum else
                        f"--{field.name}={value} must be 0 or more (0 means "
                        f"{field.metadata['zero']}).")


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

