"""The README's main job as a user runs it: seconds from process start to metrics.json.

Run from the repository's root (about 2 minutes per seed on 2 CPU cores)::

    python -m benchmarks.wall_clock --data_path=../shared/data/aclImdb_v1_labeled.tar.gz \\
        --seeds=1,2,3 > benchmarks/results/wall_clock.json

Each seed runs ``python -m trainer.main --data_path=... --seed=S`` (plus
``--flags``) in a process of its own, with a fresh ``--model_dir``, exactly as
the README's command does. The total is timed from outside, from starting the
process to its exit (metrics.json is its last write); the phases come from the
run's own ``metrics.json`` (``phases_sec``: start-up, reading, vectorizing,
model, training steps, the work between them, the test, the outputs). With
``--article_epochs=N`` the article's own code then races for up to N epochs
toward the harness's mean test accuracy (``benchmarks.time_to_accuracy``'s
race, training seconds only), for the time it takes to the same accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def log(message: str) -> None:
    """Progress on stderr (stdout is the JSON); TensorFlow is not loaded in this process."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default=os.environ.get("IMDB_ARCHIVE", ""),
                        help="aclImdb folder or .tar.gz (default: $IMDB_ARCHIVE).")
    parser.add_argument("--seeds", default="1,2,3", help="Comma-separated; one run each.")
    parser.add_argument("--flags", default="",
                        help="Extra trainer flags, space-separated (default: none, the README's "
                             "main job).")
    parser.add_argument("--article_epochs", type=int, default=0,
                        help="Race the article's code for up to this many epochs to the mean "
                             "test accuracy reached (0 = do not).")
    args = parser.parse_args(argv)
    if not args.data_path:
        parser.error("--data_path (or $IMDB_ARCHIVE) is required")
    return args


def run_job(data_path: str, seed: int, flags: list[str]) -> dict:
    """One trainer process, timed from outside; its metrics.json's phases and accuracy."""
    with tempfile.TemporaryDirectory(prefix="wall_clock-") as folder:
        model_dir = os.path.join(folder, "run")
        command = [sys.executable, "-m", "trainer.main", f"--data_path={data_path}",
                   f"--seed={seed}", f"--model_dir={model_dir}", *flags]
        log(f"seed {seed}: {' '.join(command[1:])}")
        started = time.time()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.time() - started
        if done.returncode:
            raise SystemExit(f"seed {seed}: the trainer exited {done.returncode}: "
                             f"{done.stderr.strip().splitlines()[-1:]}")
        with open(os.path.join(model_dir, "metrics.json"), encoding="utf-8") as file:
            metrics = json.load(file)
    result = {"seed": seed, "process_seconds": round(seconds, 2),
              "test_accuracy": metrics["test_accuracy"],
              "epochs_completed": metrics["epochs_completed"],
              "best_epoch": metrics["best_epoch"], "phases_sec": metrics["phases_sec"],
              "train_examples_per_sec": round(metrics["train_examples_per_sec"], 1),
              "validation": [{key: round(entry[key], 4) for key in ("val/loss", "val/accuracy")
                              if key in entry} for entry in metrics["history"]]}
    phases = metrics["phases_sec"]
    result["between_steps_share"] = round(phases["between_steps"] / phases["training_steps"], 4)
    log(f"seed {seed}: {seconds:.1f} s, test accuracy {metrics['test_accuracy']:.4f}, "
        f"epochs {metrics['epochs_completed']} (best {metrics['best_epoch']}), "
        f"between steps {100 * result['between_steps_share']:.1f}% of the steps' time")
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    flags = args.flags.split()
    runs = [run_job(args.data_path, seed, flags) for seed in seeds]
    seconds = [run["process_seconds"] for run in runs]
    accuracies = [run["test_accuracy"] for run in runs]
    summary: dict = {
        "command": "python -m benchmarks.wall_clock " + " ".join(argv or sys.argv[1:]),
        "trainer_flags": flags, "runs": runs,
        "mean_process_seconds": round(statistics.mean(seconds), 2),
        "max_process_seconds": max(seconds),
        "mean_test_accuracy": round(statistics.mean(accuracies), 4),
        "mean_phases_sec": {name: round(statistics.mean(run["phases_sec"][name] for run in runs),
                                        2)
                            for name in runs[0]["phases_sec"]
                            if not isinstance(runs[0]["phases_sec"][name], list)},
        "max_between_steps_share": max(run["between_steps_share"] for run in runs),
    }
    if args.article_epochs:
        from benchmarks import time_to_accuracy

        target = summary["mean_test_accuracy"]
        race = time_to_accuracy.main([
            f"--data_path={args.data_path}", "--contenders=article_code",
            f"--target_accuracy={target}", f"--seeds={args.seeds}", "--min_epochs=1",
            f"--max_epochs={args.article_epochs}"])
        summary["article_code"] = {"target_accuracy": target, "race": race}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
