"""Train the IMDB sentiment LSTM: ``python -m trainer.main [flags]``.

Commands people type::

    # Prove the whole path in about a minute on a CPU.
    python -m trainer.main --smoke_test --data_path=../shared/data/aclImdb_v1_labeled.tar.gz

    # The article's model on all 25,000 training reviews.
    python -m trainer.main --data_path=aclImdb_v1.tar.gz --model_dir=runs/full

    # Two replicas on one CPU (MirroredStrategy over two logical devices).
    python -m trainer.main --smoke_test --data_path=... --cpu_replicas=2 --strategy=mirrored

    # Several machines: the same command on each, with its own TF_CONFIG.
    TF_CONFIG='{"cluster": {"worker": ["h0:2222", "h1:2222"]}, "task": {"type": "worker",
      "index": 0}}' python -m trainer.main --strategy=multi_worker --model_dir=gs://b/run

``--helpfull`` lists every flag; ``--flagfile=configs/smoke.flags`` reads a preset.
"""

from __future__ import annotations

import logging as py_logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow loads: C++ info noise.

from absl import app
from absl import logging as absl_logging

from trainer import distribute, flags, loop, preemption, train
from trainer.errors import UserError, exit_with, parse_flags

# EX_TEMPFAIL: stopped by SIGTERM after a checkpoint, or a worker of the cluster is missing
# or lost. Running the same command again (all workers, for a cluster) resumes.
EXIT_RESTART = 75


def main(argv: list[str]) -> None:
    """Parses nothing itself: flags -> Config -> train_and_evaluate."""
    try:
        if len(argv) > 1:
            raise UserError(f"unexpected arguments {argv[1:]}; every setting is a --flag "
                            "(see --helpfull).")
        train.train_and_evaluate(flags.to_config())
    except UserError as error:
        exit_with(f"error: {error}")
    except loop.TrainingDivergedError as error:
        exit_with(f"error: {error}", 1)
    except preemption.PreemptedError as error:
        exit_with(f"preempted: {error}", EXIT_RESTART)
    except distribute.ClusterError as error:
        exit_with(f"error: {error}", EXIT_RESTART)


def run() -> None:
    """Console-script entry point (``imdb-train``)."""
    # TensorFlow's Python INFO lines (per-reduce device placement) drown the progress.
    py_logging.getLogger("tensorflow").setLevel(py_logging.WARNING)
    _quiet_tensorflow_internals()
    app.run(main, flags_parser=parse_flags)


def _quiet_tensorflow_internals() -> None:
    """Hides TensorFlow's own absl INFO lines and its deprecation notes about itself.

    Multi-worker checkpoints log "Sharding callback duration" at INFO, and the
    preemption handler calls one of TensorFlow's deprecated properties; neither
    is anything a user can act on.
    """
    def keep(record: py_logging.LogRecord) -> bool:
        internal = f"{os.sep}tensorflow{os.sep}" in record.pathname
        return not internal or (record.levelno >= py_logging.WARNING
                                and not record.pathname.endswith("deprecation.py"))

    absl_logging.get_absl_handler().addFilter(keep)
    for handler in py_logging.getLogger("tensorflow").handlers:
        handler.addFilter(keep)


if __name__ == "__main__":
    run()
