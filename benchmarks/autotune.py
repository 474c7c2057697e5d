"""tf.data's autotuning on and off: the defaults' examples/s epoch by epoch, side by side.

Run from the repository's root (about 4 minutes on 2 CPU cores)::

    python -m benchmarks.autotune --data_path=../shared/data/aclImdb_v1_labeled.tar.gz \\
        > benchmarks/results/autotune.json

Each round starts one process with the training pipeline's autotuning on and
one with it off (``trainer.data._options``; the trainer runs it off), in turn,
and each trains ``--epochs`` epochs of the defaults (``harness_fast``) on the
same reviews. With autotuning on, whole epochs ran at one slow speed, the same
to the unit every time; the rates show whether they still do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow loads: C++ info noise.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default=os.environ.get("IMDB_ARCHIVE", ""),
                        help="aclImdb folder or .tar.gz (default: $IMDB_ARCHIVE).")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8, help="Epochs per process.")
    parser.add_argument("--train_reviews", type=int, default=6400)
    parser.add_argument("--autotune", choices=("on", "off"), default=None,
                        help=argparse.SUPPRESS)  # One process's side: what main starts.
    args = parser.parse_args(argv)
    if not args.data_path:
        parser.error("--data_path (or $IMDB_ARCHIVE) is required")
    return args


def one_side(args: argparse.Namespace) -> list[float]:
    """In this process: the defaults' examples/s per epoch, autotuning as asked."""
    import tensorflow as tf

    from benchmarks import contenders
    from trainer import data

    trainers_options = data._options

    def options() -> tf.data.Options:  # The trainer's, autotuning as this side asks.
        chosen = trainers_options()
        chosen.autotune.enabled = args.autotune == "on"
        return chosen

    data._options = options
    splits = contenders.load_splits(args.data_path, args.train_reviews, 200, seed=1)
    racer = contenders.Harness("harness_fast", contenders.vectorize(splits),
                               contenders.harness_config("harness_fast", seed=1))
    racer.warm_up()
    return [round(racer.train_epoch().examples_per_sec, 1) for _ in range(args.epochs)]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.autotune:
        print(json.dumps(one_side(args)))
        return {}
    rates: dict[str, list[list[float]]] = {"on": [], "off": []}
    for round_ in range(args.rounds):
        for side in ("on", "off"):
            command = [sys.executable, "-m", "benchmarks.autotune", f"--data_path={args.data_path}",
                       f"--epochs={args.epochs}", f"--train_reviews={args.train_reviews}",
                       f"--autotune={side}"]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            rates[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1}, autotuning {side}: {rates[side][-1]}", file=sys.stderr,
                  flush=True)
    every = {side: [rate for process in runs for rate in process] for side, runs in rates.items()}
    result = {
        "command": "python -m benchmarks.autotune " + " ".join(argv or sys.argv[1:]),
        "contender": "harness_fast", "train_reviews": args.train_reviews,
        "examples_per_sec": rates,
        "median": {side: statistics.median(values) for side, values in every.items()},
        "slowest": {side: min(values) for side, values in every.items()},
        "epochs_below_700": {side: sum(rate < 700 for rate in values)
                             for side, values in every.items()},
        "epochs": {side: len(values) for side, values in every.items()},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
