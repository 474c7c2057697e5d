"""The one exception type that means "the user can fix this"."""


class UserError(Exception):
    """Bad input the user can correct: a flag, a file, TF_CONFIG.

    ``trainer.main`` prints its message as one line (no traceback) and exits
    non-zero, so the message must name the flag or file and say what to do.
    """
