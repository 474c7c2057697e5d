"""Every command-line flag, grouped, and the one function that turns them into a Config.

Defaults live in ``trainer.config.Config``, presets in ``trainer.config.PRESETS``;
each flag reads its default from there so that a value is written down exactly
once. Each ``_section`` call starts a group (Data, Model, ...): ``help_text``
renders the groups in ``GROUPS`` order for ``--help``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import secrets
import sys

from absl import flags, logging

from trainer import config as config_lib
from trainer.errors import UserError

_D = config_lib.Config()  # The defaults, read once.

# The --help groups, in the order --help shows them.
GROUPS = ("Presets", "Data", "Model", "Training", "Distribution", "Outputs")
_SECTIONS: list[tuple[str, int]] = []  # (group, how many flags this module had defined before).


def _section(group: str) -> None:
    """Puts the flags defined from here to the next ``_section`` call into ``group``."""
    _SECTIONS.append((group, len(flags.FLAGS.get_flags_for_module(__name__))))


_section("Data")

# --- Data -------------------------------------------------------------------
flags.DEFINE_enum(
    "data_source", _D.data_source, config_lib.DATA_SOURCES,
    "Where the labeled texts come from. auto: judged by --data_path (an aclImdb folder or "
    ".tar.gz: aclimdb; .csv, .tsv, .jsonl, optionally .gz: that format; a folder of class "
    "folders: folders; .npz: keras_npz; none: tfds). aclimdb: an aclImdb folder or .tar.gz "
    "(read in place, nothing extracted). tfds: tensorflow-datasets imdb_reviews. keras_npz: "
    "a Keras imdb.npz of token ids. csv (RFC 4180), tsv (one row a line, quotes are text), "
    "jsonl (one JSON object a line): see --text_column and --label_column. folders: "
    "DIR/<class>/*.txt, or DIR/train/<class>/*.txt and DIR/test/<class>/*.txt.")
flags.DEFINE_string(
    "data_path", _D.data_path,
    "The data, local or gs://: an aclImdb folder or a .tar.gz of it, a .csv/.tsv/.jsonl file "
    "(optionally .gz), a folder of class folders, or an imdb.npz.")
flags.DEFINE_string(
    "test_data_path", _D.test_data_path,
    "A separate test file (or folder of class folders) in --data_path's format; its labels "
    "must all occur in --data_path. Without it, a source with no test split holds out "
    "--test_split of the data.")
flags.DEFINE_float(
    "test_split", _D.test_split,
    "Fraction of each class held out (seeded by --seed) as the test set when the source has "
    "no test split and --test_data_path is not given.")
flags.DEFINE_string(
    "text_column", _D.text_column,
    "csv/tsv/jsonl: the text's column, a header name (a JSON key) or a 0-based index; several, "
    "comma-separated, are joined with a space (e.g. title,description).")
flags.DEFINE_string(
    "label_column", _D.label_column,
    "csv/tsv/jsonl: the label's column, a header name (a JSON key) or a 0-based index. Labels "
    "may be strings or integers; class ids follow their sorted order (numeric if all are "
    "integers).")
flags.DEFINE_enum(
    "class_weight", _D.class_weight, config_lib.CLASS_WEIGHTS,
    "balanced: weight each class's loss by n_examples / (n_classes * its count) in training; "
    "empty: every example counts the same.")
flags.DEFINE_string(
    "tfds_data_dir", _D.tfds_data_dir,
    "Where tensorflow-datasets keeps imdb_reviews (default: its own, ~/tensorflow_datasets).")
flags.DEFINE_integer(
    "max_train_examples", _D.max_train_examples,
    "Use a reproducible, class-stratified subset of this many training examples (0 = all).")
flags.DEFINE_integer(
    "max_test_examples", _D.max_test_examples,
    "Use a reproducible, class-stratified subset of this many test examples (0 = all).")
flags.DEFINE_float(
    "validation_split", _D.validation_split,
    "Fraction of the training reviews held out for validation and early stopping "
    "(the test reviews are never used for either).")

# --- Model ------------------------------------------------------------------
_section("Model")
flags.DEFINE_integer("vocab_size", _D.vocab_size,
                     "Vocabulary size, including padding (0) and out-of-vocabulary (1) ids.")
flags.DEFINE_integer("max_len", _D.max_len,
                     "Tokens per review after padding or truncation (the article: 500).")
flags.DEFINE_integer("embedding_dim", _D.embedding_dim, "Embedding width (the article: 32).")
flags.DEFINE_integer("lstm_units", _D.lstm_units, "LSTM units (the article: 100).")
flags.DEFINE_bool(
    "lean_lstm", _D.lean_lstm,
    "On a CPU, run the LSTM through trainer.lstm.LeanLSTM: Keras' layer, weights and function "
    "(within 1e-5), its recurrence one fused BlockLSTM op per core (faster than Keras' loop: "
    "see benchmarks/README.md). On a GPU it is Keras' LSTM (cuDNN) either way. Off: "
    "keras.layers.LSTM everywhere, as the article.")
flags.DEFINE_enum(
    "padding", _D.padding, config_lib.PADDINGS,
    "Side on which short reviews are padded and long ones truncated. pre is the article's "
    "(Keras pad_sequences' default); post keeps a masked LSTM cuDNN-eligible on GPU.")
flags.DEFINE_bool(
    "mask_padding", _D.mask_padding,
    "Mask padding tokens (Embedding mask_zero) so the LSTM skips them. The article does not.")

flags.DEFINE_bool(
    "bucket_by_length", _D.bucket_by_length,
    "Batch reviews of similar length together, pad each batch (on the --padding side) only to "
    "its longest review and mask the padding: the LSTM runs fewer steps and computes the same "
    "prediction for each review. Implies the mask of --mask_padding.")
flags.DEFINE_integer(
    "bucket_window_batches", _D.bucket_window_batches,
    "With --bucket_by_length: batches per length-sorted window of shuffled reviews. Larger "
    "pads less; batches are shuffled within a window.")

# --- Training ---------------------------------------------------------------
_section("Training")
flags.DEFINE_integer("batch_size", _D.batch_size,
                     "GLOBAL batch size, split evenly across all replicas (the article: 64).")
flags.DEFINE_integer("epochs", _D.epochs, "Maximum number of passes over the training reviews.")
flags.DEFINE_float("learning_rate", _D.learning_rate, "Adam learning rate.")
flags.DEFINE_bool(
    "dense_embedding_gradient", _D.dense_embedding_gradient,
    "Give Adam the embedding's gradient dense, each token's slices summed, so Adam squares a "
    "token's gradient as its math says. Off, Keras' Adam gets the sparse slices and squares "
    "each occurrence separately, as the article's model.fit does.")
flags.DEFINE_float(
    "clip_norm", _D.clip_norm,
    "Clip the gradient's global norm to this before each Adam step; 0 turns clipping off.")
flags.DEFINE_float(
    "ema_momentum", _D.ema_momentum,
    "Validate, keep and export the exponential moving average of the weights (Keras' optimizer "
    "EMA, updated after every step: 0.99 averages about the last 100 steps) instead of the last "
    "step's weights. Training itself follows the raw weights. 0 turns it off (the article).")
flags.DEFINE_integer("seed", _D.seed, "Seed for subsets, splits, shuffling and initialization.")
flags.DEFINE_integer(
    "early_stopping_patience", _D.early_stopping_patience,
    "Stop after this many epochs without a lower validation loss, and keep the weights of the "
    "best epoch (0 = off: train all --epochs and keep the last weights).")
flags.DEFINE_integer(
    "steps_per_loop", _D.steps_per_loop,
    "Training steps run inside one tf.function call; more means less Python overhead.")

# --- Distribution and performance ---------------------------------------------
_section("Distribution")
flags.DEFINE_enum(
    "strategy", _D.strategy, config_lib.STRATEGIES,
    "tf.distribute strategy. auto: multi_worker when TF_CONFIG names several tasks, mirrored "
    "with several GPUs, one_device with one, the default strategy on CPU.")
flags.DEFINE_integer("num_gpus", _D.num_gpus,
                     "Use only the first N visible GPUs (0 = all of them).")
flags.DEFINE_bool(
    "require_gpu", _D.require_gpu,
    "Stop at once (exit 2, before any data is read) if TensorFlow sees no GPU, saying what it "
    "sees and what to check, instead of training on the CPU. For paid GPU machines; "
    "python -m trainer.doctor shows the same check.")
flags.DEFINE_integer(
    "cpu_replicas", _D.cpu_replicas,
    "Split the CPU into N logical devices, so --strategy=mirrored runs N replicas on a machine "
    "without GPUs (0 = do not split). For trying and testing distributed training.")
flags.DEFINE_integer(
    "cluster_timeout_secs", _D.cluster_timeout_secs,
    "Multi-worker: how long each worker waits for all the workers in TF_CONFIG to start before "
    "it stops with an error (a worker that dies later is noticed within seconds).")
flags.DEFINE_enum(
    "precision", _D.precision, config_lib.PRECISIONS,
    "Keras dtype policy. auto: mixed_float16 on a GPU, float32 on CPU (where mixed precision "
    "is no faster). The output layer always computes in float32.")

flags.DEFINE_integer(
    "intra_op_threads", _D.intra_op_threads,
    "Threads one TensorFlow op may split its work across (0 = TensorFlow's choice, one per "
    "core). Unset: 1 without a GPU when --lean_lstm runs, since LeanLSTM's recurrences, one "
    "per core, are the parallelism and splitting each small step across cores too costs more "
    "than it saves (see benchmarks/README.md); else TensorFlow's choice.")

# --- Outputs ----------------------------------------------------------------
_section("Outputs")
flags.DEFINE_string(
    "model_dir", _D.model_dir,
    "Where everything the run writes goes: metrics.json, vocabulary, model, checkpoints, "
    "TensorBoard logs. Local or gs://. Default: $AIP_MODEL_DIR if set (Vertex AI), else a new "
    "./runs/<date>-<time>-<random suffix>. Give an existing one to resume it.")
flags.DEFINE_string(
    "checkpoint_dir", _D.checkpoint_dir,
    "Checkpoints. Default: $AIP_CHECKPOINT_DIR if set, else <model_dir>/checkpoints.")
flags.DEFINE_string(
    "tensorboard_dir", _D.tensorboard_dir,
    "TensorBoard event files. Default: $AIP_TENSORBOARD_LOG_DIR if set, else "
    "<model_dir>/tensorboard.")
flags.DEFINE_integer(
    "checkpoint_every_steps", _D.checkpoint_every_steps,
    "Also checkpoint every N training steps, not only at epoch ends (0 = epoch ends only).")
flags.DEFINE_integer("keep_checkpoints", _D.keep_checkpoints, "Checkpoints kept on disk.")
flags.DEFINE_integer("log_every_steps", _D.log_every_steps,
                     "Print a progress line every N training steps within an epoch.")
flags.DEFINE_string(
    "profile_steps", _D.profile_steps,
    "START,STOP: record a TensorBoard profiler trace of these training steps (e.g. 10,15); "
    "empty = no profiling.")
flags.DEFINE_bool("overwrite", _D.overwrite,
                  "Start over in a --model_dir that holds a finished run, deleting its "
                  "checkpoints, instead of reporting it finished.")
flags.DEFINE_integer(
    "tf_log_level", None,
    "TensorFlow's C++ log level (TF_CPP_MIN_LOG_LEVEL), set before TensorFlow loads: 0 shows "
    "everything (its start-up notes included), 1 warnings and errors, 2 errors only, 3 "
    "nothing. Unset: $TF_CPP_MIN_LOG_LEVEL if set, else 2.", lower_bound=0, upper_bound=3)

# --- Presets ----------------------------------------------------------------
# Each switches on trainer.config.PRESETS[name]; flags given explicitly win over it.
_section("Presets")
flags.DEFINE_bool(
    "article_settings", False,
    "The article's exact recipe: every review pre-padded and pre-truncated to --max_len=500, "
    "no mask, no length bucketing, no gradient clipping, Adam 1e-3 on the sparse embedding "
    "gradient as model.fit gives it, the last weights (no average), Keras' own LSTM layer, "
    "batch 64. Flags given explicitly still win over the preset.")
flags.DEFINE_bool(
    "smoke_test", False,
    "Prove the whole path quickly: a few thousand reviews, short sequences, few epochs. Flags "
    "given explicitly still win over the preset.")
flags.DEFINE_bool(
    "fast_settings", False,
    "Deprecated, does nothing: the defaults are these settings (length bucketing, right "
    "padding, clipping, the dense embedding gradient, the weights' average, LeanLSTM).")

TF_QUIET_LEVEL = "2"  # TF_CPP_MIN_LOG_LEVEL by default: errors only, no start-up notes.


def set_tf_log_level(level: int | None) -> None:
    """Sets TF_CPP_MIN_LOG_LEVEL for TensorFlow, which reads it once, when it loads.

    Every program with these flags calls it after parsing them and before
    importing TensorFlow (or any module that does).

    Args:
      level: --tf_log_level; None keeps $TF_CPP_MIN_LOG_LEVEL, else TF_QUIET_LEVEL.
    """
    if level is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_QUIET_LEVEL)
    else:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = str(level)


def show_grouped_help(doc: str | None) -> None:
    """Makes ``--help`` print ``doc`` and then the project's flags in their groups.

    absl's ``--help`` prints the ``__main__`` module's docstring and then that
    module's own flags, which are none in the programs: the flags live here.
    ``--helpfull`` still lists every flag, absl's included.
    """
    text = (doc or "") + "\nflags (--helpfull lists absl's too):\n" + help_text()
    # absl fills in "%s" with the program's name: keep every other "%" as it is.
    sys.modules["__main__"].__doc__ = text.replace("%", "%%")


def help_text(flag_values: flags.FlagValues = flags.FLAGS) -> str:
    """This module's flags with their help, grouped in ``GROUPS`` order (for ``--help``)."""
    own = flag_values.get_flags_for_module(__name__)
    bounds = [start for _, start in _SECTIONS[1:]] + [len(own)]
    for (group, start), end in zip(_SECTIONS, bounds, strict=True):
        for flag in own[start:end]:
            flag_values.register_key_flag_for_module(group, flag)
    return "\n".join(flag_values.module_help(group) for group in GROUPS)


def to_config(flag_values: flags.FlagValues = flags.FLAGS) -> config_lib.Config:
    """Builds the run's Config from parsed flags, the presets and Vertex AI's env.

    Args:
      flag_values: parsed absl flags.

    Returns:
      The validated Config.

    Raises:
      UserError: a value is invalid.
    """
    values = {
        field.name: flag_values[field.name].value
        for field in dataclasses.fields(config_lib.Config) if field.name != "presets"
    }
    if _switched_on(flag_values, "fast_settings"):
        logging.warning("--fast_settings is deprecated and does nothing: the defaults are "
                        "those settings. Drop the flag.")
    values = config_lib.apply_presets(
        values, [name for name in config_lib.PRESETS if _switched_on(flag_values, name)],
        explicit={name for name in values if flag_values[name].present})
    # Vertex AI custom jobs name their output folders in these variables.
    model_dir = values["model_dir"] or os.environ.get("AIP_MODEL_DIR")
    if not model_dir:
        if _is_cluster():
            raise UserError(
                "--model_dir is required when TF_CONFIG is set: give every worker the same "
                "folder (on a shared file system or gs://) so they can checkpoint and resume.")
        model_dir = _new_run_dir()
    values["model_dir"] = model_dir.rstrip("/")
    values["checkpoint_dir"] = (values["checkpoint_dir"] or os.environ.get("AIP_CHECKPOINT_DIR")
                                or f"{values['model_dir']}/checkpoints").rstrip("/")
    values["tensorboard_dir"] = (values["tensorboard_dir"]
                                 or os.environ.get("AIP_TENSORBOARD_LOG_DIR")
                                 or f"{values['model_dir']}/tensorboard").rstrip("/")
    return config_lib.Config(**values)


def _switched_on(flag_values: flags.FlagValues, name: str) -> bool:
    """Whether a preset switch is on; False where ``flag_values`` lacks it (tests' copies)."""
    return name in flag_values and bool(flag_values[name].value)


def _is_cluster() -> bool:
    try:
        return bool(json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster"))
    except (ValueError, AttributeError):
        return False  # Malformed: trainer.cluster says precisely what is wrong.


def _new_run_dir() -> str:
    """``runs/<date>-<time>-<6 random hex digits>``: runs started in one second stay apart."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{stamp}-{secrets.token_hex(3)}")
