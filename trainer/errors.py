"""Errors the user can fix, and how the command-line programs report them: one line."""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import flags

EXIT_USAGE = 2  # Bad flags, data, model folder or TF_CONFIG: fix the input, do not retry.


class UserError(Exception):
    """Bad input the user can correct: a flag, a file, TF_CONFIG.

    The programs print its message as one line (no traceback) and exit
    non-zero, so the message must name the flag or file and say what to do.
    """


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
