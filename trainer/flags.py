"""Every command-line flag, grouped, and the one function that turns them into a Config.

Each field of ``trainer.config.Config`` is a flag, defined here from the field:
its default, help, choices and --help group are written down once, beside the
field. Presets live in ``trainer.config.PRESETS``; here are only their switches
and the flags that are no setting of the run (``--tf_log_level``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import secrets
import sys
from collections.abc import Callable
from typing import Any

from absl import flags, logging

from trainer import config as config_lib
from trainer.errors import UserError

_DEFINE_BY_TYPE = {"str": flags.DEFINE_string, "int": flags.DEFINE_integer,
                   "int | None": flags.DEFINE_integer, "float": flags.DEFINE_float,
                   "bool": flags.DEFINE_bool}
_GROUP_OF: dict[str, str] = {}  # Flag name -> its --help group.


def _define(name: str, group: str, default: object, help_text: str,
            choices: tuple[str, ...] = (), define: Callable[..., Any] | None = None) -> None:
    """Defines one flag and files it under its --help group."""
    if choices:
        flags.DEFINE_enum(name, default, choices, help_text)
    else:
        define(name, default, help_text)
    _GROUP_OF[name] = group


# One flag per Config setting: its default, help and choices come from the field.
for _field in dataclasses.fields(config_lib.Config):
    if "help" in _field.metadata:
        _define(_field.name, _field.metadata["group"], _field.default, _field.metadata["help"],
                _field.metadata["choices"], _DEFINE_BY_TYPE[str(_field.type)])

# Flags that are not settings of the run.
flags.DEFINE_integer(
    "tf_log_level", None,
    "TensorFlow's C++ log level (TF_CPP_MIN_LOG_LEVEL), set before TensorFlow loads: 0 shows "
    "everything (its start-up notes included), 1 warnings and errors, 2 errors only, 3 "
    "nothing. Unset: $TF_CPP_MIN_LOG_LEVEL if set, else 2.", lower_bound=0, upper_bound=3)
_GROUP_OF["tf_log_level"] = "Outputs"
# Each switches on trainer.config.PRESETS[name]; flags given explicitly win over it.
_define(
    "article_settings", "Presets", False,
    "The article's exact recipe: every review pre-padded and pre-truncated to --max_len=500, "
    "no mask, no length bucketing, no gradient clipping, Adam at a constant 1e-3 (beta_2 "
    "0.999, one rate for every weight) on the sparse embedding gradient as model.fit gives "
    "it, the last weights (no average), Keras' own LSTM layer, batch 64. Flags given "
    "explicitly still win over the preset.", define=flags.DEFINE_bool)
_define(
    "smoke_test", "Presets", False,
    "Prove the whole path quickly: a few thousand reviews, short sequences, few epochs. Flags "
    "given explicitly still win over the preset.", define=flags.DEFINE_bool)
_define(
    "fast_settings", "Presets", False,
    "Deprecated, does nothing: the defaults are these settings (length bucketing, right "
    "padding, clipping, the dense embedding gradient, the weights' average, LeanLSTM).",
    define=flags.DEFINE_bool)

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
    for flag in flag_values.get_flags_for_module(__name__):
        flag_values.register_key_flag_for_module(_GROUP_OF[flag.name], flag)
    return "\n".join(flag_values.module_help(group) for group in config_lib.GROUPS)


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
