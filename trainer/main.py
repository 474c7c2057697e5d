"""Train the IMDB sentiment LSTM: ``python -m trainer.main [flags]``.

Commands people type::

    # Prove the whole path quickly on a CPU.
    python -m trainer.main --smoke_test --data_path=../shared/data/aclImdb_v1_labeled.tar.gz

    # The article's model on all 25,000 training reviews.
    python -m trainer.main --data_path=aclImdb_v1.tar.gz --model_dir=runs/full

    # Two replicas on one CPU (MirroredStrategy over two logical devices).
    python -m trainer.main --smoke_test --data_path=... --cpu_replicas=2 --strategy=mirrored

    # Several machines: the same command on each, with its own TF_CONFIG.
    TF_CONFIG='{"cluster": {"worker": ["h0:2222", "h1:2222"]}, "task": {"type": "worker",
      "index": 0}}' python -m trainer.main --strategy=multi_worker --model_dir=gs://b/run

``--help`` lists the project's flags by group, ``--helpfull`` every flag;
``--flagfile=configs/smoke.flags`` reads a preset.
"""

from __future__ import annotations

import os
import signal
import sys

_EARLY: list[int] = []  # Signals that came while the imports below ran.
for _signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_signum, lambda signum, frame: _EARLY.append(signum))

import logging as py_logging  # noqa: E402

from trainer.errors import Stopped  # noqa: E402
from trainer.preemption import SIGNALS  # noqa: E402 (no TensorFlow: it answers from here on)


def _stopped_outside_main(kind: type, error: BaseException, traceback: object) -> None:
    """A signal while the imports below or absl's start-up run: the same one line."""
    if not isinstance(error, Stopped):
        sys.__excepthook__(kind, error, traceback)
        return
    print(f"{error.label}: {error}", file=sys.stderr, flush=True)
    os._exit(error.exit_code)


sys.excepthook = _stopped_outside_main
SIGNALS.install()
for _signum in _EARLY[:1]:
    os.kill(os.getpid(), _signum)  # Answered now, as one in the starting stage.

from absl import app  # noqa: E402 (after the signal handler above)
from absl import flags as absl_flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from trainer import flags, tf_log  # noqa: E402 (no TensorFlow: it loads after --tf_log_level)
from trainer.errors import UserError, exit_code_and_line, exit_with, parse_flags  # noqa: E402


def main(argv: list[str]) -> None:
    """Parses nothing itself: flags -> Config -> train_and_evaluate; one line on any stop.

    Exit codes (README, "What ends a run"): 0 finished, 1 diverged, 2 bad input or a
    full disk, 75 stopped by SIGTERM or a lost worker (run the same command again),
    130 Ctrl-C. Once the code is decided, a late SIGTERM cannot change it
    (``Signals.end``).
    """
    model_dir = ""
    try:
        if len(argv) > 1:
            raise UserError(f"unexpected arguments {argv[1:]}; every setting is a --flag "
                            "(see --help).")
        config = flags.to_config()  # Bad flags stop here, before TensorFlow's seconds.
        model_dir = config.model_dir
        tf_log.import_tensorflow(absl_flags.FLAGS.tf_log_level)  # At its C++ log level.
        from trainer import train

        _quiet_tensorflow_internals()
        train.train_and_evaluate(config)
    except Exception as error:
        ending = exit_code_and_line(error, model_dir)  # A full disk anywhere: one line too.
        if ending is None:
            raise
        SIGNALS.end()
        exit_with(ending[1], ending[0])
    SIGNALS.end()


def run() -> None:
    """Console-script entry point (``imdb-train``)."""
    # TensorFlow's Python INFO lines (per-reduce device placement) drown the progress.
    py_logging.getLogger("tensorflow").setLevel(py_logging.WARNING)
    flags.show_grouped_help(__doc__)
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
