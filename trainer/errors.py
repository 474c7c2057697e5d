"""Every way a run ends early, its exit code, and how the programs report it: one line.

| exit | exception | last line |
| --- | --- | --- |
| 1 | ``TrainingDivergedError`` | ``error: training loss ...`` |
| 2 | ``UserError`` | ``error: <flag or file>: ...`` |
| 75 | ``Stopped`` by SIGTERM (``PreemptedError`` once saved) | ``preempted: ...`` |
| 75 | ``ClusterError`` | ``error: lost contact with another worker ...`` |
| 130 | ``Stopped`` by Ctrl-C | ``interrupted: ...`` |

75 is ``EX_TEMPFAIL``, "restart me": running the same command resumes.
"""

from __future__ import annotations

import signal
import sys
from typing import NoReturn

from absl import flags

EXIT_DIVERGED = 1  # The loss exploded: lower --learning_rate, then rerun.
EXIT_USAGE = 2  # Bad flags, data, model folder or TF_CONFIG: fix the input, do not retry.
EXIT_RESTART = 75  # EX_TEMPFAIL: the same command resumes.
EXIT_CTRL_C = 130  # 128 + SIGINT, what a shell reports for Ctrl-C.


class UserError(Exception):
    """Bad input the user can correct: a flag, a file, a folder, TF_CONFIG.

    The programs print its message as one line (no traceback) and exit 2, so
    the message must name the flag or file and say what to do.
    """


class TrainingDivergedError(RuntimeError):
    """The training loss became non-finite or exploded; the kept checkpoint predates it."""


class ClusterError(RuntimeError):
    """A worker did not start in time, or one was lost mid-run; restarting them all resumes."""


class Stopped(Exception):  # noqa: N818 (a stop, not a failure)
    """A signal stopped the run (see ``trainer.preemption``)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CTRL_C if self.signum == signal.SIGINT else EXIT_RESTART

    @property
    def label(self) -> str:
        """The last line's first word: ``preempted`` (SIGTERM) or ``interrupted`` (Ctrl-C)."""
        return "interrupted" if self.signum == signal.SIGINT else "preempted"


class PreemptedError(Stopped):
    """A signal arrived during training and the training state was saved."""


def exit_code_and_line(error: BaseException) -> tuple[int, str] | None:
    """The exit code and last line for one of this module's exceptions; None for others."""
    if isinstance(error, UserError):
        return EXIT_USAGE, f"error: {error}"
    if isinstance(error, TrainingDivergedError):
        return EXIT_DIVERGED, f"error: {error}"
    if isinstance(error, ClusterError):
        return EXIT_RESTART, f"error: {error}"
    if isinstance(error, Stopped):
        return error.exit_code, f"{error.label}: {error}"
    return None


def exit_with(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Prints ``message`` as the program's last line on stderr and exits with ``code``."""
    print(message, file=sys.stderr, flush=True)
    sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
    """Absl's flag parsing, with a bad flag reported in one line instead of a usage dump.

    Pass as ``app.run(main, flags_parser=parse_flags)``.
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        exit_with(f"error: {error} (see --helpfull)")
