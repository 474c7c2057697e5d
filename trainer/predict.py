"""Score reviews with a trained run's export: ``python -m trainer.predict``.

Commands people type::

    python -m trainer.predict --model_dir=runs/smoke "A wonderful film." "Dull and far too long."
    cat reviews.txt | python -m trainer.predict --model_dir=runs/smoke    # one review a line
    python -m trainer.predict --model_dir=gs://bucket/run/export "Loved it."

Each review gives one line, in input order: the probability, the label, and
the review's first words. For a two-class run the probability is P(class 1)
(IMDB: P(positive)) and the label class 1's name above ``--threshold``, else
class 0's::

    0.9731  positive  "A wonderful film."

With more classes it is the most probable class and its probability. ``--all``
adds every class's probability, in labels.txt order, before the words::

    0.9731  positive  negative=0.0269  positive=0.9731  "A wonderful film."

Reviews are scored ``--batch_size`` at a time and stdin is read as it comes, so
memory stays flat however many reviews are piped in, and each batch's lines are
printed as soon as it is scored. stdin must be UTF-8, and stdout is UTF-8
whatever the locale; blank lines are skipped,
and a byte-order mark (U+FEFF, which Windows editors put first in a file) is
removed from the start of each line and argument, never scored as part of the
first word.

``--model_dir`` is a run's folder (the highest version in its ``export/`` is
loaded), an export folder, or one version folder. Only TensorFlow is needed:
the export holds the vocabulary and the text standardization.
"""

from __future__ import annotations

import itertools
import logging as py_logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

from trainer import tf_log

tf_log.import_tensorflow()  # First: TensorFlow's C++ start-up notes kept to errors.

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from trainer import export  # noqa: E402
from trainer.errors import UserError, exit_with, parse_flags  # noqa: E402

BOM = "\ufeff"  # The byte-order mark: no part of any review.
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
        "A training run's --model_dir (the highest version in its export/ folder is loaded), "
        "an export folder, or one version folder. Local or gs://.")
    flags.DEFINE_float(
        "threshold", 0.5,
        "Two-class runs: the probability of class 1 (IMDB: positive) above which a review "
        "gets its label (training's accuracy uses 0.5). Runs with more classes label each "
        "review with its most probable class.", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_bool(
        "all", False,
        "Also print every class's probability (name=probability, in labels.txt order).")
    flags.DEFINE_integer(
        "batch_size", 64,
        "Reviews scored at a time. Memory grows with it, not with the number of reviews; "
        "each batch's lines are printed once it is scored.", lower_bound=1)


def main(argv: list[str]) -> None:
    """Reads reviews from the arguments (or stdin), scores them, prints one line each."""
    if hasattr(sys.stdout, "reconfigure"):
        # UTF-8 out as in, whatever the locale says: a class name or a review in any
        # script prints, instead of a UnicodeEncodeError under an ASCII or Latin-1 locale.
        sys.stdout.reconfigure(encoding="utf-8")
    try:
        # First: a wrong folder is the likelier mistake.
        classifier = export.load(FLAGS.model_dir)
        reviews = read_reviews(argv[1:], sys.stdin.buffer)
        scored = 0
        for batch in batched(reviews, FLAGS.batch_size):
            for review, probabilities in zip(batch, classifier.probabilities(batch), strict=True):
                print(format_prediction(review, probabilities, classifier.class_names,
                                        threshold=FLAGS.threshold, every_class=FLAGS.all))
            sys.stdout.flush()  # A batch's lines as soon as it is scored, also into a pipe.
            scored += len(batch)
        if not scored:
            raise UserError("no reviews: stdin held no non-blank lines.")
    except UserError as error:
        exit_with(f"error: {error}")


def read_reviews(args: Sequence[str], stdin: BinaryIO) -> Iterator[str]:
    """The reviews: the arguments if any, else the non-blank lines of stdin, as they come.

    stdin is read as bytes and decoded line by line, so a bad byte is reported
    with its line number, and lines are yielded without reading ahead.

    Raises:
      UserError: stdin is a terminal (where waiting would look like a hang), or
        a line of it is not UTF-8 (raised when that line is reached).
    """
    if args:
        return (without_bom(arg) for arg in args)
    if stdin.isatty():
        raise UserError('no reviews: give them as arguments ("A wonderful film.") or as lines '
                        "on stdin (cat reviews.txt | python -m trainer.predict ...).")
    return _stdin_lines(stdin)


def _stdin_lines(stdin: BinaryIO) -> Iterator[str]:
    for number, raw in enumerate(stdin, start=1):
        try:
            line = without_bom(raw.decode("utf-8")).strip()
        except UnicodeDecodeError as error:
            raise UserError(f"stdin line {number} is not valid UTF-8 (byte {error.start + 1}: "
                            f"{raw[error.start:error.start + 1]!r}); convert the file, e.g. "
                            "iconv -f latin1 -t utf-8 reviews.txt.") from None
        if line:
            yield line


def without_bom(text: str) -> str:
    """``text`` without the byte-order mark(s) a file or its lines may start with.

    A file saved "UTF-8 with BOM" starts with U+FEFF; ``cat``-ing several
    such files puts one at the start of a line inside the stream.
    """
    return text.lstrip(BOM)


def batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    """``items`` in lists of ``size`` (the last one shorter), read lazily."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def format_prediction(review: str, probabilities: Sequence[float],
                      class_names: Sequence[str], *, threshold: float = 0.5,
                      every_class: bool = False) -> str:
    """One review's line: ``<probability>  <label>  [name=p ...]  "<first words>"``.

    Two classes: P(class 1), and class 1's name if it is above ``threshold``,
    else class 0's. More: the most probable class and its probability.

    Examples:
      ``format_prediction("Dull.", [0.9688, 0.0312], ("negative", "positive"))``
      -> ``0.0312  negative  "Dull."``.
    """
    if len(class_names) == 2:
        probability = float(probabilities[1])
        label = class_names[1] if probability > threshold else class_names[0]
    else:
        best = int(np.argmax(probabilities))
        probability, label = float(probabilities[best]), class_names[best]
    every = "".join(f"{name}={float(p):.4f}  "
                    for name, p in zip(class_names, probabilities, strict=True))
    return f"{probability:.4f}  {label}  {every if every_class else ''}{_preview(review)}"


def _preview(review: str) -> str:
    """The review's first PREVIEW_WORDS words, quoted."""
    words = review.split()
    preview = " ".join(words[:PREVIEW_WORDS]) + (" ..." if len(words) > PREVIEW_WORDS else "")
    return f'"{preview}"'


def run() -> None:
    """Console-script entry point (``imdb-predict``)."""
    py_logging.getLogger("tensorflow").setLevel(py_logging.WARNING)
    define_flags()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
