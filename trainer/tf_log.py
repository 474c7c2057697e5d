"""TensorFlow's C++ log level, set before TensorFlow loads, and its start-up lines kept to it.

``TF_CPP_MIN_LOG_LEVEL`` filters TensorFlow's C++ log lines, but TensorFlow 2.21
writes its start-up notes (``oneDNN custom operations are on``) through absl's C++
logging before anything initializes it, and absl then writes every line to
stderr, whatever the level, behind ``WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR``. So ``import_tensorflow``
imports TensorFlow with file descriptor 2 (where C++ writes, beneath Python's
``sys.stderr``) sent to a temporary file, and writes back the lines the level
keeps. Written by hand: absl's ``InitializeLog`` is not reachable from Python.
No TensorFlow import here, so programs call this first.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

QUIET_LEVEL = 2  # The default: errors only, no start-up notes.
_SEVERITIES = "IWEF"  # absl's C++ line prefixes, INFO to FATAL: level n hides the first n.
_LINE = re.compile(rb"^([IWEF])\d{4} ")
_BEFORE_INIT = b"All log messages before absl::InitializeLog() is called"


def set_level(level: int | None) -> int:
    """Sets TF_CPP_MIN_LOG_LEVEL for TensorFlow, which reads it once, when it loads.

    Args:
      level: ``--tf_log_level``; None keeps ``$TF_CPP_MIN_LOG_LEVEL``, else QUIET_LEVEL.

    Returns:
      The level in force (QUIET_LEVEL if the variable is not a number).
    """
    if level is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", str(QUIET_LEVEL))
    else:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = str(level)
    value = os.environ["TF_CPP_MIN_LOG_LEVEL"]
    return int(value) if value.isdigit() else QUIET_LEVEL


def import_tensorflow(level: int | None = None) -> None:
    """Imports TensorFlow at ``level`` (see ``set_level``), its start-up lines filtered.

    Lines of absl's C++ format below the level and absl's "before InitializeLog"
    notice are dropped; everything else written during the import (Python
    warnings, a C++ error) reaches stderr as it was, once the import ends.
    """
    keep_from = set_level(level)
    if "tensorflow" in sys.modules or keep_from == 0:
        import tensorflow
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured if _kept(line, keep_from)]
            if kept:
                os.write(2, b"".join(kept))


def _kept(line: bytes, keep_from: int) -> bool:
    if _BEFORE_INIT in line:
        return False
    match = _LINE.match(line)
    return match is None or _SEVERITIES.index(match[1].decode()) >= keep_from
