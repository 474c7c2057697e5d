"""Time to a target test accuracy on the full data, side by side in one run.

Run from the repository's root (about 10-13 minutes per seed on 2 CPU cores)::

    nohup python -m benchmarks.time_to_accuracy \\
        --data_path=../shared/data/aclImdb_v1_labeled.tar.gz > /tmp/tta.json &

Each contender runs in its own process (``contenders.Isolated``), set up as its
users would run it. It trains on all 25,000 training reviews and is tested on all
25,000 test reviews every ``--eval_every_steps`` steps (so that a crossing within
an epoch shows) and after every epoch. The contenders take turns, a stretch of
steps each, so that noise from other work on the machine falls on all of them
alike. A contender stops once it has reached every ``--target_accuracy`` (e.g.
0.87 and 0.88) and trained at least ``--min_epochs`` (so that accuracies after the
same epochs can be compared), or after ``--max_epochs``. Seconds count training
only: the test evaluations are the benchmark's measurement, not the contender's
work; they are reported separately. ``torch_lstm_padded`` (PyTorch) races too where
PyTorch is installed, and is skipped with a message where it is not; ``torch_lstm``
(packed) is slower still and races when named.
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
    parser.add_argument("--target_accuracy", default="0.87,0.88",
                        help="Comma-separated test accuracies to time; the first is the one "
                             "the speed-ups are reported for.")
    parser.add_argument("--eval_every_steps", type=int, default=100,
                        help="Test every this many training steps too (0 = after epochs only).")
    parser.add_argument("--min_epochs", type=int, default=3,
                        help="Train every contender at least this long (the article: 3).")
    parser.add_argument("--max_epochs", type=int, default=6)
    parser.add_argument("--train_reviews", type=int, default=0, help="0 = all 25,000.")
    parser.add_argument("--test_reviews", type=int, default=0, help="0 = all 25,000.")
    parser.add_argument("--contenders", default="article_code,harness_fast,torch_lstm_padded",
                        help=f"Comma-separated, from {', '.join(contenders.NAMES)}, "
                             f"{', '.join(contenders.TORCH)}, or variants such as "
                             "harness_fast:bucket_window_batches=10.")
    parser.add_argument("--seeds", default="42",
                        help="Comma-separated; the race is run once per seed (initialization and "
                             "shuffling), and accuracies are also averaged over seeds.")
    parser.add_argument("--quick", action="store_true",
                        help="1,000 reviews each, 2 epochs, target 0.6: checks that it runs.")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_reviews, args.test_reviews = 1000, 1000
        args.min_epochs, args.max_epochs, args.target_accuracy = 1, 2, "0.6"
        args.eval_every_steps = 8
    if not args.data_path:
        parser.error("--data_path (or $IMDB_ARCHIVE) must name the aclImdb archive or folder.")
    args.targets = [float(t) for t in str(args.target_accuracy).split(",")]
    args.target_accuracy = args.targets[0]
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
    racers = contenders.startable(args.contenders.split(","), splits, seed)
    try:
        return _epochs(racers, seed, args)
    finally:
        for racer in racers:
            racer.close()


def _epochs(racers: list[contenders.Isolated], seed: int, args: argparse.Namespace) -> dict:
    runs = {racer.name: _Run(args.targets) for racer in racers}
    for epoch in range(1, args.max_epochs + 1):
        for racer in racers:
            run = runs[racer.name]
            if run.done(args):
                continue
            trained = _train_epoch(racer, run, epoch, args)
            accuracy = run.evals[-1]["test_accuracy"]
            run.add(epoch, trained, accuracy, args)
            log(f"seed {seed} epoch {epoch} {racer.name}: {trained.seconds:.0f} s "
                f"({trained.examples_per_sec:.0f} examples/s), test accuracy {accuracy:.4f}")
        _write_partial(runs, args)  # Partial results survive an interrupted run (stderr).
        if all(run.done(args) for run in runs.values()):
            break
    return {**_result(runs, args), "seed": seed}


def _train_epoch(racer: contenders.Isolated, run: _Run, epoch: int,
                 args: argparse.Namespace) -> contenders.Epoch:
    """One epoch in stretches of ``--eval_every_steps``, tested after each (off the clock)."""
    seconds = examples = timesteps = steps = 0
    finished = False
    while not finished:
        stretch, finished = racer.train_steps(args.eval_every_steps or 1_000_000)
        seconds, examples = seconds + stretch.seconds, examples + stretch.examples
        timesteps += stretch.timesteps
        steps += -(-stretch.examples // 64)
        eval_start = time.perf_counter()
        accuracy = racer.test_accuracy()
        run.evaluated(epoch, steps, stretch.seconds, accuracy, time.perf_counter() - eval_start,
                      args)
    return contenders.Epoch(seconds, examples, timesteps)


def _over_seeds(per_seed: dict[int, dict], args: argparse.Namespace) -> dict:
    """Mean test accuracy per epoch and mean seconds to target, over the seeds."""
    names = args.contenders.split(",")
    summary = {}
    for name in names:
        if any(name not in race["contenders"] for race in per_seed.values()):
            continue  # Skipped (PyTorch not installed).
        histories = [race["contenders"][name]["history"] for race in per_seed.values()]
        epochs = min(len(history) for history in histories)
        times = [race["contenders"][name]["seconds_to_target"] for race in per_seed.values()]
        summary[name] = {
            "mean_test_accuracy_by_epoch": {
                f"epoch_{e + 1}": round(statistics.mean(h[e]["test_accuracy"] for h in histories),
                                        4) for e in range(epochs)},
            "seconds_to_target": times,
            "seconds_to": {target: [race["contenders"][name]["seconds_to"][target]
                                    for race in per_seed.values()]
                           for target in per_seed_targets(per_seed)},
            "mean_train_seconds_per_epoch": round(statistics.mean(
                entry["train_seconds"] for h in histories for entry in h), 1)}
    return {"benchmark": "time_to_accuracy", "target_accuracy": args.target_accuracy,
            "seeds": list(per_seed), "over_seeds": summary,
            "per_seed": list(per_seed.values())}


def per_seed_targets(per_seed: dict[int, dict]) -> list[str]:
    """The targets timed (as the JSON's keys), from the first race."""
    first = next(iter(per_seed.values()))
    return list(next(iter(first["contenders"].values()))["seconds_to"])


class _Run:
    """One contender's evaluations and epochs so far."""

    def __init__(self, targets: list[float]) -> None:
        self.targets = targets
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self.seconds_to: dict[float, float] = {}  # Target -> training seconds to reach it.
        self.epochs_to_target: int | None = None

    @property
    def seconds_to_target(self) -> float | None:
        """Seconds to the first ``--target_accuracy``."""
        return self.seconds_to.get(self.targets[0])

    def evaluated(self, epoch: int, step: int, seconds: float, accuracy: float,
                  eval_seconds: float, args: argparse.Namespace) -> None:
        """Records a test after ``seconds`` more of training, ``step`` steps into ``epoch``."""
        self.train_seconds += seconds
        self.eval_seconds += eval_seconds
        self.evals.append({"epoch": epoch, "epoch_step": step,
                           "cumulative_train_seconds": round(self.train_seconds, 1),
                           "test_accuracy": round(accuracy, 4)})
        for target in args.targets:
            if target not in self.seconds_to and accuracy >= target:
                self.seconds_to[target] = self.train_seconds
                if target == args.targets[0]:
                    self.epochs_to_target = epoch

    def add(self, epoch: int, trained: contenders.Epoch, accuracy: float,
            args: argparse.Namespace) -> None:
        self.history.append({
            "epoch": epoch, "test_accuracy": round(accuracy, 4),
            "train_seconds": round(trained.seconds, 1),
            "cumulative_train_seconds": round(self.train_seconds, 1),
            "examples_per_sec": round(trained.examples_per_sec, 1),
            "eval_seconds": round(self.eval_seconds, 1)})
        self.eval_seconds = 0.0

    def done(self, args: argparse.Namespace) -> bool:
        epochs = len(self.history)
        return epochs >= args.max_epochs or (
            len(self.seconds_to) == len(args.targets) and epochs >= args.min_epochs)

    def summary(self) -> dict:
        return {"seconds_to_target": _round(self.seconds_to_target),
                "seconds_to": {f"{t:g}": _round(self.seconds_to.get(t)) for t in self.targets},
                "epochs_to_target": self.epochs_to_target,
                "best_test_accuracy": max(h["test_accuracy"] for h in self.evals),
                "history": self.history, "evaluations": self.evals}


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
