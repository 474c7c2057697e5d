"""Training throughput, side by side in one run: the article's code against the harness.

Run from the repository's root::

    python -m benchmarks.throughput --data_path=../shared/data/aclImdb_v1_labeled.tar.gz
    python -m benchmarks.throughput --quick    # a few hundred reviews, to try it

Every contender runs in its own process (``contenders.Isolated``), set up as
its users would run it. Every round trains each contender one epoch over the
same reviews, in turn, so that noise from other work on the machine hits all
of them alike; ratios are taken within a round, and the median over rounds is
reported. The JSON on stdout holds examples/sec, the speed-up over the
article's code, the LSTM's achieved GFLOP/s against a dense matmul timed in
the same run, and whether the input pipeline keeps up (real pipeline vs the
same batches held in memory). ``torch_lstm`` and ``torch_lstm_padded`` (PyTorch,
``benchmarks/torch_contender.py``) race too where PyTorch is installed, and are skipped
with a message where it is not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow loads: C++ info noise.

from benchmarks import contenders
from benchmarks.contenders import log


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default=os.environ.get("IMDB_ARCHIVE", ""),
                        help="aclImdb folder or .tar.gz (default: $IMDB_ARCHIVE).")
    parser.add_argument("--train_reviews", type=int, default=6400,
                        help="Training reviews per epoch, class-balanced (0 = all 25,000).")
    parser.add_argument("--rounds", type=int, default=3, help="Timed epochs per contender.")
    parser.add_argument("--contenders",
                        default=",".join((*contenders.NAMES, *contenders.TORCH)),
                        help=f"Comma-separated, from {', '.join(contenders.NAMES)}, "
                             f"{', '.join(contenders.TORCH)}, or variants such as "
                             "harness_fast:bucket_window_batches=10.")
    parser.add_argument("--steps_per_loop", type=int, default=0,
                        help="Override the harness's --steps_per_loop (0 = its default).")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true",
                        help="512 reviews, 2 rounds: checks the benchmark runs, not the numbers.")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_reviews, args.rounds = 512, 2
    if not args.data_path:
        parser.error("--data_path (or $IMDB_ARCHIVE) must name the aclImdb archive or folder.")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    names = args.contenders.split(",")
    log(f"loading {args.train_reviews or 'all'} training reviews from {args.data_path}")
    splits = contenders.load_splits(args.data_path, args.train_reviews, 2, args.seed)
    changes = {"steps_per_loop": args.steps_per_loop} if args.steps_per_loop else {}
    racers = contenders.startable(names, splits, args.seed, **changes)
    try:
        return _race(racers, args, len(splits.train))
    finally:
        for racer in racers:
            racer.close()


def _race(racers: list[contenders.Isolated], args: argparse.Namespace, train_reviews: int) -> dict:
    for racer in racers:
        log(f"warming up {racer.name}")
        racer.warm_up()
    # This process runs at TensorFlow's default threads (all cores), while the contenders wait.
    peak = contenders.matmul_gflops()
    fast = next((r for r in racers if r.name == "harness_fast"), None)

    epochs: dict[str, list[contenders.Epoch]] = {r.name: [] for r in racers}
    for round_index in range(args.rounds):
        for racer in racers:
            epoch = racer.train_epoch()
            epochs[racer.name].append(epoch)
            log(f"round {round_index + 1}/{args.rounds} {racer.name}: "
                f"{epoch.examples_per_sec:.0f} examples/s, {epoch.seconds:.1f} s")
        if fast is not None:
            epoch = fast.train_epoch_in_memory()
            epochs.setdefault("harness_fast_in_memory", []).append(epoch)
            log(f"round {round_index + 1}/{args.rounds} harness_fast from memory: "
                f"{epoch.examples_per_sec:.0f} examples/s")
    peak = max(peak, contenders.matmul_gflops())  # Best of before and after.

    result = {
        "benchmark": "throughput",
        "train_reviews": train_reviews,
        "rounds": args.rounds,
        "matmul_2048_gflops": round(peak, 1),
        "lstm_flops_formula": "per example-timestep: 3 x 2 x 4 x units x (input + units) = "
                              f"{contenders.TRAIN_FLOPS_PER_TIMESTEP} (forward + 2x backward)",
        "contenders": {name: _summary(runs, peak) for name, runs in epochs.items()},
    }
    if "article_code" in epochs:
        result["speedup_vs_article_code"] = {
            name: _median_ratio(runs, epochs["article_code"])
            for name, runs in epochs.items() if name != "article_code"}
    if fast is not None:
        result["input_pipeline_vs_in_memory"] = _median_ratio(
            epochs["harness_fast"], epochs["harness_fast_in_memory"])
    result["settings"] = {r.name: r.settings() for r in racers}
    print(json.dumps(result, indent=2))
    return result


def _summary(runs: list[contenders.Epoch], peak: float) -> dict:
    rate = statistics.median(e.examples_per_sec for e in runs)
    gflops = statistics.median(e.lstm_gflops for e in runs)
    return {
        "examples_per_sec": round(rate, 1),
        "examples_per_sec_per_round": [round(e.examples_per_sec, 1) for e in runs],
        "seconds_per_epoch": round(statistics.median(e.seconds for e in runs), 2),
        "lstm_timesteps_per_example": round(runs[0].timesteps / runs[0].examples, 1),
        "lstm_gflops": round(gflops, 1),
        "lstm_fraction_of_matmul_peak": round(gflops / peak, 3),
    }


def _median_ratio(runs: list[contenders.Epoch], baseline: list[contenders.Epoch]) -> float:
    """Median over rounds of examples/s relative to ``baseline`` in the same round."""
    return round(statistics.median(
        run.examples_per_sec / base.examples_per_sec
        for run, base in zip(runs, baseline, strict=True)), 3)


if __name__ == "__main__":
    main()
