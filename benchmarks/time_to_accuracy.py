"""Time to a target test accuracy on the full data, side by side in one run.

Run from the repository's root (about 10-13 minutes per seed on 2 CPU cores)::

    nohup python -m benchmarks.time_to_accuracy \\
        --data_path=../shared/data/aclImdb_v1_labeled.tar.gz > /tmp/tta.json &

Each contender runs in its own process (``contenders.Isolated``), set up as its
users would run it. It trains on all 25,000 training reviews and is tested on all
25,000 test reviews after every epoch. The contenders take turns epoch by epoch,
so that noise from other work on the machine falls on all of them alike. A
contender stops once it has reached ``--target_accuracy`` and trained at least
``--min_epochs`` (so that accuracies after the same epochs can be compared), or
after ``--max_epochs``. Seconds count training only: the per-epoch test
evaluation is the benchmark's measurement, not the contender's work; it is
reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow loads: C++ info noise.

from benchmarks import contenders
from benchmarks.contenders import log
from trainer import data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default=os.environ.get("IMDB_ARCHIVE", ""),
                        help="aclImdb folder or .tar.gz (default: $IMDB_ARCHIVE).")
    parser.add_argument("--target_accuracy", type=float, default=0.87)
    parser.add_argument("--min_epochs", type=int, default=3,
                        help="Train every contender at least this long (the article: 3).")
    parser.add_argument("--max_epochs", type=int, default=6)
    parser.add_argument("--train_reviews", type=int, default=0, help="0 = all 25,000.")
    parser.add_argument("--test_reviews", type=int, default=0, help="0 = all 25,000.")
    parser.add_argument("--contenders", default="article_code,harness_fast",
                        help=f"Comma-separated, from {', '.join(contenders.NAMES)}, or variants "
                             "such as harness_fast:bucket_window_batches=10.")
    parser.add_argument("--seeds", default="42",
                        help="Comma-separated; the race is run once per seed (initialization and "
                             "shuffling), and accuracies are also averaged over seeds.")
    parser.add_argument("--quick", action="store_true",
                        help="1,000 reviews each, 2 epochs, target 0.6: checks that it runs.")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_reviews, args.test_reviews = 1000, 1000
        args.min_epochs, args.max_epochs, args.target_accuracy = 1, 2, 0.6
    if not args.data_path:
        parser.error("--data_path (or $IMDB_ARCHIVE) must name the aclImdb archive or folder.")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    # The reviews (subsets, vocabulary) stay fixed; seeds vary the training only.
    splits = contenders.load_splits(args.data_path, args.train_reviews, args.test_reviews,
                                    seed=42)
    log(f"{len(splits.train)} train and {len(splits.test)} test reviews, "
        f"loaded in {time.perf_counter() - start:.0f} s")
    per_seed = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        per_seed[seed] = _race(splits, seed, args)
    result = per_seed[seed] if len(per_seed) == 1 else _over_seeds(per_seed, args)
    print(json.dumps(result, indent=2))
    return result


def _race(splits: data.Splits, seed: int, args: argparse.Namespace) -> dict:
    """One race: every contender from scratch with ``seed``, epoch by epoch in turn."""
    racers = [contenders.Isolated(name, splits, seed) for name in args.contenders.split(",")]
    try:
        return _epochs(racers, seed, args)
    finally:
        for racer in racers:
            racer.close()


def _epochs(racers: list[contenders.Isolated], seed: int, args: argparse.Namespace) -> dict:
    runs = {racer.name: _Run() for racer in racers}
    for epoch in range(1, args.max_epochs + 1):
        for racer in racers:
            run = runs[racer.name]
            if run.done(args):
                continue
            trained = racer.train_epoch()
            eval_start = time.perf_counter()
            accuracy = racer.test_accuracy()
            run.add(epoch, trained, accuracy, time.perf_counter() - eval_start, args)
            log(f"seed {seed} epoch {epoch} {racer.name}: {trained.seconds:.0f} s "
                f"({trained.examples_per_sec:.0f} examples/s), test accuracy {accuracy:.4f}")
        _write_partial(runs, args)  # Partial results survive an interrupted run (stderr).
        if all(run.done(args) for run in runs.values()):
            break
    return {**_result(runs, args), "seed": seed}


def _over_seeds(per_seed: dict[int, dict], args: argparse.Namespace) -> dict:
    """Mean test accuracy per epoch and mean seconds to target, over the seeds."""
    names = args.contenders.split(",")
    summary = {}
    for name in names:
        histories = [race["contenders"][name]["history"] for race in per_seed.values()]
        epochs = min(len(history) for history in histories)
        times = [race["contenders"][name]["seconds_to_target"] for race in per_seed.values()]
        summary[name] = {
            "mean_test_accuracy_by_epoch": {
                f"epoch_{e + 1}": round(statistics.mean(h[e]["test_accuracy"] for h in histories),
                                        4) for e in range(epochs)},
            "seconds_to_target": times,
            "mean_train_seconds_per_epoch": round(statistics.mean(
                entry["train_seconds"] for h in histories for entry in h), 1)}
    return {"benchmark": "time_to_accuracy", "target_accuracy": args.target_accuracy,
            "seeds": list(per_seed), "over_seeds": summary,
            "per_seed": list(per_seed.values())}


class _Run:
    """One contender's epochs so far."""

    def __init__(self) -> None:
        self.history: list[dict] = []
        self.train_seconds = 0.0
        self.seconds_to_target: float | None = None
        self.epochs_to_target: int | None = None

    def add(self, epoch: int, trained: contenders.Epoch, accuracy: float, eval_seconds: float,
            args: argparse.Namespace) -> None:
        self.train_seconds += trained.seconds
        self.history.append({
            "epoch": epoch, "test_accuracy": round(accuracy, 4),
            "train_seconds": round(trained.seconds, 1),
            "cumulative_train_seconds": round(self.train_seconds, 1),
            "examples_per_sec": round(trained.examples_per_sec, 1),
            "eval_seconds": round(eval_seconds, 1)})
        if self.seconds_to_target is None and accuracy >= args.target_accuracy:
            self.seconds_to_target, self.epochs_to_target = self.train_seconds, epoch

    def done(self, args: argparse.Namespace) -> bool:
        epochs = len(self.history)
        return epochs >= args.max_epochs or (
            self.seconds_to_target is not None and epochs >= args.min_epochs)

    def summary(self) -> dict:
        return {"seconds_to_target": _round(self.seconds_to_target),
                "epochs_to_target": self.epochs_to_target,
                "best_test_accuracy": max(h["test_accuracy"] for h in self.history),
                "history": self.history}


def _result(runs: dict[str, _Run], args: argparse.Namespace) -> dict:
    result: dict = {
        "benchmark": "time_to_accuracy", "target_accuracy": args.target_accuracy,
        "train_reviews": args.train_reviews or 25000, "test_reviews": args.test_reviews or 25000,
        "contenders": {name: run.summary() for name, run in runs.items()}}
    if "article_code" in runs:
        result.update(compare(result["contenders"], args.target_accuracy, args.min_epochs))
    return result


def compare(contenders_: dict[str, dict], target: float, min_epochs: int) -> dict:
    """Every contender against ``article_code``, from their ``summary()`` dicts.

    Returns:
      ``time_to_target_speedup_vs_article_code``: the article's seconds to
      ``target`` over the contender's; ``">= x"`` when only the contender got
      there (x: the article's seconds for all its epochs).
      ``time_to_article_accuracy_speedup``: the article's seconds for
      ``min_epochs`` epochs over the contender's seconds to reach the test
      accuracy the article had then; the same learning, timed.
      ``test_accuracy_minus_article_code``: after the same epochs.
    """
    base = contenders_["article_code"]
    base_history = base["history"]
    base_seconds = base_history[-1]["cumulative_train_seconds"]
    matched = base_history[min(min_epochs, len(base_history)) - 1]
    speedups, matches, gaps = {}, {}, {}
    for name, run in contenders_.items():
        if name == "article_code":
            continue
        mine = run["seconds_to_target"]
        if base["seconds_to_target"] and mine:
            speedups[name] = round(base["seconds_to_target"] / mine, 2)
        elif mine:
            speedups[name] = f">= {base_seconds / mine:.2f}"
        reached = next((h for h in run["history"]
                        if h["test_accuracy"] >= matched["test_accuracy"]), None)
        matches[name] = {
            "article_epoch": matched["epoch"], "article_accuracy": matched["test_accuracy"],
            "article_seconds": matched["cumulative_train_seconds"],
            "epoch": reached and reached["epoch"],
            "seconds": reached and reached["cumulative_train_seconds"],
            "speedup": reached and round(matched["cumulative_train_seconds"]
                                         / reached["cumulative_train_seconds"], 2)}
        gaps[name] = {
            f"epoch_{m['epoch']}": round(m["test_accuracy"] - t["test_accuracy"], 4)
            for m, t in zip(run["history"], base_history, strict=False)}
    return {"time_to_target_speedup_vs_article_code": speedups,
            "time_to_article_accuracy_speedup": matches,
            "test_accuracy_minus_article_code": gaps}


def _write_partial(runs: dict[str, _Run], args: argparse.Namespace) -> None:
    log("partial: " + json.dumps(_result(runs, args)))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


if __name__ == "__main__":
    main()
