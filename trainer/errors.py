"""Every way a run ends early, its exit code, and how the programs report it: one line.

| exit | exception | last line |
| --- | --- | --- |
| 1 | ``TrainingDivergedError`` | ``error: training loss ...`` |
| 2 | ``UserError`` | ``error: <flag or file>: ...`` |
| 2 | ``DiskFullError``, or any write failing for want of space | ``error: ... no space ...`` |
| 75 | ``Stopped`` by SIGTERM (``PreemptedError`` once saved) | ``preempted: ...`` |
| 75 | ``ClusterError`` | ``error: lost contact with another worker ...`` |
| 130 | ``Stopped`` by Ctrl-C | ``interrupted: ...`` |

75 is ``EX_TEMPFAIL``, "restart me": running the same command resumes. A full
disk is 2, not 75: restarting does not free space; once there is room, the same
command resumes from the last complete checkpoint.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
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


class DiskFullError(UserError):
    """A checkpoint or an output could not be written: its disk is full (exit 2).

    Nothing is retried (a restart would meet the same full disk); once there
    is room, the same command resumes from the last complete checkpoint.
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


# How a full disk reads in OSError and in TensorFlow's errors ("<path>; No space left on device").
_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = tuple(os.strerror(code) for code in _FULL)
OP_PREFIX = re.compile(r"^\{\{[^}]*\}\}\s*")  # TensorFlow's "{{function_node ...}} ".


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from or while handling, once each."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or one it came from) says a disk or quota is full.

    OSError carries ENOSPC or EDQUOT; TensorFlow's file and checkpoint ops
    raise ``ResourceExhaustedError`` (or another ``OpError``) whose message
    ends in the system's text for it.
    """
    return any((isinstance(e, OSError) and e.errno in _FULL)
               or any(text in str(e) for text in _FULL_TEXTS) for e in _chain(error))


def full_disk_folder(error: BaseException, default: str = "") -> str:
    """The folder whose write failed for want of space, as a person knows it.

    From the OSError's file name or TensorFlow's message, cut before the first
    temporary name (``.name.tmp-<pid>``, ``ckpt-3_temp``): what is left is the
    run's folder, or its ``checkpoints``, ``tensorboard`` or ``export`` folder.
    ``default`` when no path is named.
    """
    for e in _chain(error):
        path = getattr(e, "filename", None) if isinstance(e, OSError) else None
        if not path:
            text = OP_PREFIX.sub("", str(getattr(e, "message", None) or e).strip())
            path = text.split(";")[0].strip() if "/" in text.split(";")[0] else None
        if path:
            parts = str(path).split("/")[:-1]  # The file's folder...
            for i, part in enumerate(parts):  # ... above any temporary one.
                if (part.startswith(".") and part not in (".", "..")) or part.endswith("_temp"):
                    parts = parts[:i]
                    break
            return "/".join(parts) or "/"
    return default


def free_space(folder: str) -> str:
    """`` (12 MB free)`` on ``folder``'s disk; "" where that is unknown (gs://, a lost folder)."""
    try:
        return f" ({shutil.disk_usage(folder).free >> 20} MB free)"
    except OSError:
        return ""


def disk_full_message(folder: str) -> str:
    """The one line for a write that found ``folder``'s disk full (after ``error: ``)."""
    return (f"no space left on the disk of {folder}{free_space(folder)}; free some space (or "
            "move the run to a bigger disk), then run the same command to resume from the last "
            "complete checkpoint.")


_DEFERRED: list[UserError] = []


def defer(error: UserError) -> None:
    """Keeps ``error`` for the exit line: raised inside tf.data, it reaches the run as an OpError.

    A streamed row (``trainer.stream``) is read on one of tf.data's threads, where
    a Python exception becomes a TensorFlow error with a traceback in its text.
    """
    if not _DEFERRED:
        _DEFERRED.append(error)


def exit_code_and_line(error: BaseException, model_dir: str = "") -> tuple[int, str] | None:
    """The exit code and last line for one of this module's exceptions; None for others.

    Any error a full disk caused (an output, a TensorBoard file, a checkpoint
    written outside ``trainer.checkpoints``) is one line naming the folder,
    exit 2; ``model_dir`` is named when the error names no path.
    """
    if not isinstance(error, UserError | TrainingDivergedError | ClusterError | Stopped) and (
            is_disk_full(error)):
        return EXIT_USAGE, f"error: {disk_full_message(full_disk_folder(error, model_dir))}"
    if isinstance(error, UserError):
        return EXIT_USAGE, f"error: {error}"
    if _DEFERRED and type(error).__module__.startswith("tensorflow"):
        return EXIT_USAGE, f"error: {_DEFERRED[0]}"
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
