"""Subsets and splits, in memory: every class in every split, the test set kept apart.

``split`` turns what a reader read (``trainer.sources``) into the run's train,
validation and test splits: a seeded, class-stratified test set held out when
the source has none, class-stratified subsets (``--max_*_examples``), and the
validation split. Each split must hold every class, and a test set mostly made
of training texts is refused. The streamed path (``trainer.stream``) splits by
a hash of each text instead, with ``validation_fraction``'s share.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from trainer.config import Config
from trainer.data import Split, Splits
from trainer.errors import UserError

# A test set at least this share of whose texts are training texts is refused: its accuracy
# would measure memory. Fewer are logged: a few repeated texts are common in real data.
_MOSTLY_SEEN = 0.5
# Sources whose test split is a published benchmark's: its repeats (IMDB: 123 of 25,000) are
# the benchmark's own, logged, never refused or warned about.
_PUBLISHED_SPLITS = ("aclimdb", "tfds")

def split(config: Config, source: str, train: Split, test: Split | None,
          class_names: tuple[str, ...]) -> Splits:
    """Subsets and splits what a reader read, reproducibly (``sources.load`` calls it).

    Args:
      config: the run's Config (data_path, test_data_path, test_split,
        max_*_examples, validation_split, seed).
      source: the resolved data source.
      train: the source's training rows (all its rows, without a test split).
      test: its test rows, or None.
      class_names: the classes in id order.

    Returns:
      Train, validation and test splits. A source without a test split (and no
      --test_data_path) gives up a seeded, class-stratified ``test_split`` of
      its data as the test set; validation comes out of the rest. The test
      texts are only ever used for the final evaluation.

    Raises:
      UserError: the source is unknown, missing, unreadable or malformed; a
        split (training, validation if asked for, test) has no rows of some
        class; or the test texts are mostly training texts.
    """
    where = (f"--data_path={config.data_path}" if config.data_path
             else f"--data_source={source}")
    every_class = functools.partial(_require_every_class, class_names, where)
    rng = np.random.default_rng(config.seed)
    held_out = test is None
    if test is None:
        if not config.test_split:
            raise UserError(f"--data_path={config.data_path} has no test split: give "
                            "--test_data_path, or --test_split > 0 to hold part of it out.")
        rows = np.bincount(train.labels, minlength=len(class_names))
        kept, held = stratified_split(train.labels, config.test_split, rng)
        train, test = train.take(kept), train.take(held)
        logging.info("data: no test split in the source: held out %d of %d examples "
                     "(--test_split=%g of each class, seed %d) as the test set", len(test),
                     len(train) + len(test), config.test_split, config.seed)
        every_class(test, "test", _holds_out("--test_split", config.test_split) +
                    ", or give --test_data_path", rows)
        every_class(train, "training", "--test_split takes every row of a class this small: "
                    "add rows, or lower --test_split", rows)
    else:
        test_where = (f"--test_data_path={config.test_data_path}" if config.test_data_path
                      else f"{where} (its own test split)")
        _require_every_class(class_names, test_where, test, "test", "a class without test "
                             "rows cannot be measured: add test rows of every class")
    logging.info("data: %d classes from %s: %s%s", len(class_names), source,
                 ", ".join(class_names[:20]), ", ..." * (len(class_names) > 20))
    train = train.take(balanced_subset(train.labels, config.max_train_examples, rng))
    test = test.take(balanced_subset(test.labels, config.max_test_examples, rng))
    for split, what, flag in ((train, "training", "--max_train_examples"),
                              (test, "test", "--max_test_examples")):
        every_class(split, what, f"{flag}={getattr(config, flag[2:])} keeps too few rows for "
                    f"{len(class_names)} classes: raise it")
    _refuse_test_in_training(train, test, config, source, held_out)
    rows = np.bincount(train.labels, minlength=len(class_names))
    train_idx, val_idx = stratified_split(train.labels, validation_fraction(config, len(train)),
                                          rng)
    train, validation = train.take(train_idx), train.take(val_idx)
    if config.validation_split:
        every_class(validation, "validation", _holds_out(
            "--validation_split", config.validation_split) + ", or set --validation_split=0 "
            "--early_stopping_patience=0", rows)
        every_class(train, "training", "--validation_split takes every training row of a "
                    "class this small: add rows, or lower --validation_split", rows)
    return Splits(train=train, validation=validation, test=test,
                  pretokenized=source == "keras_npz", source=source,
                  class_names=tuple(class_names), class_weight=config.class_weight)


def _holds_out(flag: str, fraction: float) -> str:
    """How ``flag`` holds rows out, and what a class needs to give one."""
    fewest = next(n for n in itertools.count(1) if round(fraction * n) >= 1)
    return (f"{flag}={fraction:g} holds out round({fraction:g} x n) rows of a class of n, so a "
            f"class needs at least {fewest} rows to give one: add rows, raise {flag}")


def _require_every_class(class_names: Sequence[str], where: str, split: Split, what: str,
                         fix: str, rows: np.ndarray | None = None) -> None:
    """Refuses a split that has no rows of some class: never accuracy over no examples.

    Args:
      class_names: the classes in id order.
      where: the flag and file the data came from, for the message.
      split: the split to check.
      what: its name (``training``, ``validation``, ``test``).
      fix: what to do, for the message.
      rows: each class's rows in the data the split was drawn from, for the message.
    """
    present = np.bincount(split.labels, minlength=len(class_names))
    missing = np.flatnonzero(present == 0)
    if not len(missing):
        return
    shown = ", ".join(f"{class_names[i]!r}" + (
        f" of {rows[i]} row{'s' * int(rows[i] != 1)}" if rows is not None else "")
        for i in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    raise UserError(f"{where}: the {what} set has no rows of {len(missing)} of "
                    f"{len(class_names)} classes ({shown}{more}); {fix}.")


def _refuse_test_in_training(train: Split, test: Split, config: Config, source: str,
                             held_out: bool) -> None:
    """Names test texts that are also training texts; refuses a test set mostly made of them.

    Accuracy on texts the model trained on measures memory, not how it does on
    new text. A few repeats are common in real data and are logged; a test set
    that is mostly training texts (the same file, a copy, a file joined with
    itself) is refused, except for the published IMDB splits, whose repeats
    are the benchmark's own. Only hashes of the training texts are held.
    """
    if source == "keras_npz" or not len(test):
        return
    seen = np.fromiter(map(hash, train.reviews), np.int64, len(train))
    tested = np.fromiter(map(hash, test.reviews), np.int64, len(test))
    shared = int(np.isin(tested, seen).sum())
    if not shared:
        return
    share = shared / len(test)
    what = (f"{shared} of {len(test)} test texts ({share:.{0 if share >= 0.01 else 1}%}) are "
            "also training texts")
    if share < _MOSTLY_SEEN or source in _PUBLISHED_SPLITS:
        log = logging.info if source in _PUBLISHED_SPLITS else logging.warning
        log("data: %s; their accuracy measures memory, not generalization", what)
        return
    why = "so test accuracy would measure memory, not generalization"
    if config.test_data_path:
        same = _same_file(config.test_data_path, config.data_path)
        raise UserError(f"--test_data_path={config.test_data_path} "
                        f"{'is the same file as' if same else 'repeats'} --data_path"
                        f"{'' if same else '=' + config.data_path}: {what}, {why}; give test "
                        "rows the model does not train on, or leave --test_data_path out to "
                        "hold --test_split of --data_path out.")
    if held_out:
        distinct = len(np.unique(np.concatenate([seen, tested])))
        column = (f", or --text_column={config.text_column} not the texts"
                  if source in ("csv", "tsv", "jsonl") else "")
        raise UserError(f"--data_path={config.data_path}: {what}: its {len(train) + len(test)} "
                        f"rows hold {distinct} distinct texts (a file joined with itself"
                        f"{column}?), {why}; remove the repeated rows.")
    raise UserError(f"--data_path={config.data_path}: {what} (its test split repeats its "
                    f"training data), {why}; keep the test texts out of the training data.")


def _same_file(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


# --- Subsets and splits -------------------------------------------------------------------

def balanced_subset(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``size`` examples, each class in its share, drawn with ``rng`` (0 = all).

    Class-stratified: class k gets ``size * n_k / n`` examples rounded down, and
    the examples left over go one each to the classes with the largest
    remainders (ties to the lower class id). Two balanced classes thus get
    ``size - size // 2`` and ``size // 2``, the same subset as the two-class
    code before it.

    Examples:
      ``balanced_subset([0, 0, 0, 1, 1, 1], 4, rng)`` -> two indices from
      {0, 1, 2} and two from {3, 4, 5}, in ascending order.
    """
    if not size or size >= len(labels):
        return np.arange(len(labels))
    return _draw_per_class(labels, lambda sizes: stratified_counts(sizes, size), rng)


def stratified_counts(class_counts: np.ndarray, size: int) -> np.ndarray:
    """How many of ``size`` examples each class gets: its share, largest remainders first.

    Examples:
      ``stratified_counts([5, 5], 3)`` -> ``[2, 1]``;
      ``stratified_counts([6, 3, 1], 5)`` -> ``[3, 2, 0]``.
    """
    quotas = np.asarray(class_counts, np.float64) * size / np.sum(class_counts)
    counts = np.floor(quotas).astype(np.int64)
    # Stable: among equal remainders the lower class id comes first.
    order = np.argsort(-(quotas - counts), kind="stable")
    counts[order[:size - int(counts.sum())]] += 1
    return counts


def validation_fraction(config: Config, rows: int) -> float:
    """The share of ``rows`` training rows held out for validation.

    --validation_split, or less where that would hold out more than
    --max_validation_examples (500 of IMDB's 25,000: 0.02).
    """
    cap = config.max_validation_examples
    if cap and config.validation_split * rows > cap:
        return cap / rows
    return config.validation_split


def stratified_split(labels: np.ndarray, fraction: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices into (kept, held out), holding out ``fraction`` of each class."""
    held = _draw_per_class(
        labels, lambda sizes: [round(fraction * int(n)) for n in sizes], rng)
    return np.setdiff1d(np.arange(len(labels)), held), held


def _draw_per_class(labels: np.ndarray,
                    counts: Callable[[np.ndarray], Sequence[int] | np.ndarray],
                    rng: np.random.Generator) -> np.ndarray:
    """Sorted int64 indices: ``counts(class sizes)[k]`` of class k, drawn without replacement.

    Classes are drawn in ascending id order, each from its members in index
    order, so a seed always gives the same indices.
    """
    classes, sizes = np.unique(labels, return_counts=True)
    chosen = [rng.choice(np.flatnonzero(labels == label), size=count, replace=False)
              for label, count in zip(classes, counts(sizes), strict=True)]
    return np.sort(np.concatenate([np.zeros(0, np.int64), *chosen])).astype(np.int64)


