"""Score reviews with a trained run's export: ``python -m trainer.predict``.

Commands people type::

    python -m trainer.predict --model_dir=runs/smoke "A wonderful film." "Dull and far too long."
    cat reviews.txt | python -m trainer.predict --model_dir=runs/smoke    # one review a line
    python -m trainer.predict --model_dir=gs://bucket/run/export "Loved it."

Each review gives one line: P(positive), the label, and the review's first words::

    0.9731  positive  "A wonderful film."

``--model_dir`` is a run's folder (its ``export/`` is loaded) or an export
folder itself. Only TensorFlow is needed: the export holds the vocabulary and
the text standardization.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow loads: C++ info noise.

from absl import app, flags

from trainer import export
from trainer.errors import UserError, exit_with, parse_flags

PREVIEW_WORDS = 8  # Words of each review echoed back, so a line says which review it scores.

FLAGS = flags.FLAGS


def define_flags() -> None:
    """This program's flags.

    Defined when the program runs, not on import: ``trainer.flags`` defines the
    trainer's own ``--model_dir``, and a process that imports both (a test
    session) would otherwise fail with a duplicate flag.
    """
    flags.DEFINE_string(
        "model_dir", "",
        "A training run's --model_dir (its export/ folder is loaded) or an export folder "
        "itself. Local or gs://.")
    flags.DEFINE_float(
        "threshold", 0.5,
        "Probability above which a review is labeled positive (training's accuracy uses 0.5).",
        lower_bound=0.0, upper_bound=1.0)


def main(argv: list[str]) -> None:
    """Reads reviews from the arguments (or stdin), scores them, prints one line each."""
    try:
        score = export.load(FLAGS.model_dir)  # First: a wrong folder is the likelier mistake.
        reviews = read_reviews(argv[1:], sys.stdin)
    except UserError as error:
        exit_with(f"error: {error}")
    for review, probability in zip(reviews, score(reviews), strict=True):
        print(format_line(review, float(probability), FLAGS.threshold), flush=True)


def read_reviews(args: Sequence[str], stdin: TextIO) -> list[str]:
    """The reviews: the arguments if any, else the non-blank lines of stdin.

    Raises:
      UserError: there are none (or stdin is a terminal, where waiting would look like a hang).
    """
    if args:
        return list(args)
    if stdin.isatty():
        raise UserError('no reviews: give them as arguments ("A wonderful film.") or as lines '
                        "on stdin (cat reviews.txt | python -m trainer.predict ...).")
    reviews = [line.strip() for line in stdin if line.strip()]
    if not reviews:
        raise UserError("no reviews: stdin held no non-blank lines.")
    return reviews


def format_line(review: str, probability: float, threshold: float) -> str:
    """``0.9731  positive  "A wonderful film, the acting ..."``.

    Examples:
      ``format_line("Dull.", 0.0312, 0.5)`` -> ``0.0312  negative  "Dull."``.
    """
    label = "positive" if probability > threshold else "negative"
    words = review.split()
    preview = " ".join(words[:PREVIEW_WORDS]) + (" ..." if len(words) > PREVIEW_WORDS else "")
    return f'{probability:.4f}  {label}  "{preview}"'


def run() -> None:
    """Console-script entry point (``imdb-predict``)."""
    py_logging.getLogger("tensorflow").setLevel(py_logging.WARNING)
    define_flags()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
