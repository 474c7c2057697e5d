"""Streamed shards at scale: peak memory, time to the first step, speed, two workers' split.

Run from the repository's root. On 2 CPU cores: about 3 minutes to write the
3 GB of shards the first time (reused after that), then roughly 10 minutes for
the runs (estimated: the full set's validation and test passes each read every
row, about a minute apiece; the two workers train about 800 steps); ``--quick``
takes under 3 minutes::

    python -m benchmarks.data_scale > benchmarks/results/data_scale.json
    python -m benchmarks.data_scale --quick    # checks the benchmark runs, not the numbers

It writes, outside the repository (``--work_dir``), ``--rows`` csv rows in
shards of ``--shard_rows`` (``part-00000.csv``, ..., header ``text,label``)
made from the IMDB training reviews: their order shuffled once, then row ``i``
is review ``i % 25000`` with its words shuffled (seeded per shard), so no two
rows are the same text. A folder holding a marker with the same settings is
reused. A tenth-size set links the full set's first shards.

Then each run is ``python -m trainer.main`` in a process of its own with a
fresh ``--model_dir`` and ``--max_steps=--steps``: the full set and the tenth
set streamed (``--test_split=0.01``), and the IMDB archive read into memory.
Per run: the child's peak RSS (``os.wait4``), its seconds from start to exit,
the seconds to the first training step (the start-up, reading, vectorizing and
model phases of its ``metrics.json``), training examples/s and test accuracy.
Last, ``launch/multiworker.sh 2`` trains one epoch on a small sharded set and
each worker's log says which shards it read and how many rows of each split.
The checks: the full set's peak RSS within 5% of the tenth's and under 3 GB,
its first step within 60 s, its examples/s within 10% of the in-memory run's,
and the two workers reading disjoint shards whose rows add up to all rows.

The shuffled words make the streamed runs' texts bags of words, so their test
accuracy is not the in-memory run's; the runs compare memory and speed.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "_data_scale.json"  # Underscore first: the trainer's folder listing skips it.
GENERATOR_VERSION = 1  # Bump when the rows a setting makes change.
TEST_SPLIT = 0.01  # Of the streamed rows, held out as the test set (by text hash).
LOG_EVERY_STEPS = 100
PROGRESS_SECONDS = 5.0
GB = 1024**3
# Worker lines of trainer.stream (absl adds a prefix before "data:").
_READS = re.compile(r"data: worker (\d+) of (\d+) reads (\d+) of (\d+) shards: (.*)$")
_READ = re.compile(r"data: worker (\d+) read (\S+): (.*)$")
_COUNT = re.compile(r"(\d+) (.+)")


def log(message: str) -> None:
    """Progress on stderr (stdout is the JSON); TensorFlow is loaded only to read the reviews."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path",
                        default=os.environ.get("IMDB_ARCHIVE",
                                               "../shared/data/aclImdb_v1_labeled.tar.gz"),
                        help="aclImdb folder or .tar.gz: the rows' reviews and the in-memory "
                             "run's data (default: $IMDB_ARCHIVE, else "
                             "../shared/data/aclImdb_v1_labeled.tar.gz).")
    parser.add_argument("--rows", type=int, default=2_500_000, help="Rows of the full set.")
    parser.add_argument("--shard_rows", type=int, default=25_000, help="Rows per shard.")
    parser.add_argument("--steps", type=int, default=600,
                        help="Training steps of each run (--max_steps).")
    parser.add_argument("--work_dir", default="/tmp/data_scale",
                        help="Where the shards, the runs' model_dirs and their logs go (outside "
                             "the repository; shards already there with the same settings are "
                             "reused).")
    parser.add_argument("--seed", type=int, default=42,
                        help="The rows' shuffles and the trainer's --seed.")
    parser.add_argument("--worker_shards", type=int, default=8,
                        help="Shards of the two-worker set.")
    parser.add_argument("--worker_shard_rows", type=int, default=4_000,
                        help="Rows per shard of the two-worker set.")
    parser.add_argument("--skip_workers", action="store_true",
                        help="Do not run the two-worker check.")
    parser.add_argument("--quick", action="store_true",
                        help="20,000 rows in shards of 2,500, 30 steps, 8 x 500 rows for the "
                             "workers: checks the benchmark runs, not the numbers.")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.shard_rows, args.steps = 20_000, 2_500, 30
        args.worker_shard_rows = 500
    if not os.path.exists(args.data_path):
        parser.error(f"--data_path={args.data_path} does not exist: name the aclImdb archive "
                     "or folder (or set $IMDB_ARCHIVE).")
    if min(args.rows // 10, args.shard_rows, args.steps, args.worker_shard_rows) < 1:
        parser.error("--rows must be at least 10; --shard_rows, --steps and "
                     "--worker_shard_rows at least 1.")
    if args.worker_shards < 2:
        parser.error("--worker_shards must be at least 2 (one a worker at least).")
    args.data_path = os.path.abspath(args.data_path)
    args.work_dir = os.path.abspath(args.work_dir)
    if os.path.commonpath([args.work_dir, REPO]) == REPO:
        parser.error(f"--work_dir={args.work_dir} is inside the repository; pick a folder "
                     "outside it (default /tmp/data_scale).")
    return args


# --- The shards -----------------------------------------------------------------------------

class Reviews:
    """The IMDB training reviews as word ids, in a seeded order: what every row is made of.

    Args:
      path: the aclImdb folder or .tar.gz.
      seed: the reviews' order.
    """

    def __init__(self, path: str, seed: int) -> None:
        from trainer import imdb  # TensorFlow: loaded only when shards are written.

        log(f"reading the training reviews of {path}")
        train, _ = imdb.read_aclimdb(path)
        order = np.random.default_rng(seed).permutation(len(train.labels))
        ids: dict[str, int] = {}
        self.words: list[np.ndarray] = []
        for index in order:
            self.words.append(np.array([ids.setdefault(word, len(ids))
                                        for word in train.reviews[index].split()], np.int32))
        self.labels = np.asarray(train.labels)[order]
        self.vocabulary = np.empty(len(ids), object)
        self.vocabulary[:] = list(ids)
        self.seed = seed
        log(f"{len(self.words)} reviews, {len(ids)} distinct words "
            f"({np.bincount(self.labels, minlength=2)[1]} positive)")

    def write_shard(self, path: str, shard: int, shard_rows: int, rows: int) -> None:
        """Writes the first ``rows`` rows of shard ``shard`` (of ``shard_rows`` rows) to ``path``.

        Row ``i`` (``shard * shard_rows + j``) is review ``i % len(reviews)`` with
        its words shuffled by the shard's own generator, so a shard's rows do not
        depend on how many shards the set has, and its first rows are those of
        the whole shard.
        """
        rng = np.random.default_rng([self.seed, shard_rows, shard])
        count = len(self.words)
        with open(path + ".tmp", "w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(("text", "label"))
            for j in range(rows):
                review = (shard * shard_rows + j) % count
                words = self.words[review]
                writer.writerow((" ".join(self.vocabulary[words[rng.permutation(len(words))]]),
                                 "positive" if self.labels[review] else "negative"))
        os.replace(path + ".tmp", path)


def shard_name(index: int) -> str:
    return f"part-{index:05d}.csv"


def ensure_shards(folder: str, rows: int, shard_rows: int, args: argparse.Namespace,
                  reviews: list[Reviews], link_from: str = "") -> dict[str, Any]:
    """Writes (or reuses) a set of ``rows`` rows in shards of ``shard_rows`` in ``folder``.

    Args:
      folder: the set's folder; a marker file names its settings once it is whole.
      rows, shard_rows: the set's size.
      args: the benchmark's settings (the seed and the reviews' path).
      reviews: a one-item cache of the Reviews (read on first need).
      link_from: a set with the same shard_rows whose whole shards are linked, not
        written again (the rows of shard k are the same in any set of that shard size).

    Returns:
      The set's folder, rows, shard count, bytes, and whether it was reused.
    """
    shards = -(-rows // shard_rows)
    settings = {"rows": rows, "shard_rows": shard_rows, "seed": args.seed,
                "reviews": args.data_path, "version": GENERATOR_VERSION}
    names = [shard_name(k) for k in range(shards)]
    marker = os.path.join(folder, MARKER)
    reused = False
    try:
        with open(marker, encoding="utf-8") as file:
            reused = json.load(file) == settings and all(
                os.path.exists(os.path.join(folder, name)) for name in names)
    except (OSError, ValueError):
        pass
    started = time.monotonic()
    if reused:
        log(f"reusing {rows:,} rows in {shards} shards in {folder}")
    else:
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):  # A set of other settings: no stray shard may remain.
            if name == MARKER or name.startswith("part-"):
                os.remove(os.path.join(folder, name))
        if not reviews:
            reviews.append(Reviews(args.data_path, args.seed))
        log(f"writing {rows:,} rows in {shards} shards of {shard_rows:,} to {folder}")
        written = 0
        writing = last = time.monotonic()
        for k, name in enumerate(names):
            path = os.path.join(folder, name)
            count = min(shard_rows, rows - k * shard_rows)
            source = os.path.join(link_from, name) if link_from else ""
            if source and count == shard_rows and os.path.exists(source):
                os.symlink(source, path)
            else:
                reviews[0].write_shard(path, k, shard_rows, count)
            written += count
            now = time.monotonic()
            if now - last >= PROGRESS_SECONDS or k == shards - 1:
                last = now
                log(f"  {written:,} of {rows:,} rows ({k + 1} shards), "
                    f"{written / max(now - writing, 1e-9):,.0f} rows/s")
        with open(marker, "w", encoding="utf-8") as file:
            json.dump(settings, file)
    size = sum(os.path.getsize(os.path.join(folder, name)) for name in names)
    return {"folder": folder, "rows": rows, "shards": shards, "shard_rows": shard_rows,
            "gb": round(size / GB, 3), "reused": reused,
            "seconds": round(time.monotonic() - started, 1)}


# --- The runs -------------------------------------------------------------------------------

def run_child(name: str, command: list[str], log_path: str,
              env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs ``command`` in the repository's root, its output teed to ``log_path`` and stderr.

    Returns:
      The process's seconds from start to exit and its peak RSS (that of its
      largest waited-for descendant when larger: the kernel reports the most).

    Raises:
      SystemExit: the command exited non-zero (its last lines are printed first).
    """
    log(f"{name}: {' '.join(command)}")
    tail: collections.deque[str] = collections.deque(maxlen=30)
    started = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log_file:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace")
        assert process.stdout is not None
        for line in process.stdout:
            log_file.write(line)
            tail.append(line.rstrip("\n"))
            print(f"  {name}| {line}", end="", file=sys.stderr, flush=True)
        process.stdout.close()
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    process.returncode = code = os.waitstatus_to_exitcode(status)  # Popen must not wait again.
    if code:
        print("\n".join(tail), file=sys.stderr)
        raise SystemExit(f"{name}: exited {code} after {seconds:.0f} s; its log: {log_path}")
    return {"process_seconds": round(seconds, 2),
            "peak_rss_gb": round(usage.ru_maxrss * 1024 / GB, 3)}  # ru_maxrss is in KB.


def fresh_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def trainer_run(name: str, data_path: str, flags: list[str],
                args: argparse.Namespace) -> dict[str, Any]:
    """One ``trainer.main`` process: its peak RSS, seconds and metrics.json's numbers."""
    model_dir = fresh_dir(os.path.join(args.work_dir, "runs", name))
    flags = [f"--data_path={data_path}", f"--model_dir={model_dir}", f"--max_steps={args.steps}",
             f"--seed={args.seed}", f"--log_every_steps={LOG_EVERY_STEPS}", *flags]
    result: dict[str, Any] = {"flags": flags}
    result.update(run_child(name, [sys.executable, "-m", "trainer.main", *flags],
                            os.path.join(args.work_dir, "logs", f"{name}.log")))
    with open(os.path.join(model_dir, "metrics.json"), encoding="utf-8") as file:
        metrics = json.load(file)
    phases = metrics["phases_sec"]
    result.update({
        "first_step_sec": round(sum(phases.get(phase, 0.0) for phase in
                                    ("startup", "reading", "vectorizing", "model")), 2),
        "train_examples_per_sec": round(metrics["train_examples_per_sec"], 1),
        "train_steps": metrics["train_steps"],
        "test_accuracy": round(metrics["test_accuracy"], 4),
        "data": metrics["data"],
        "phases_sec": phases})
    log(f"{name}: {result['process_seconds']:.1f} s, peak RSS {result['peak_rss_gb']:.2f} GB, "
        f"first step at {result['first_step_sec']:.1f} s, "
        f"{result['train_examples_per_sec']:.0f} examples/s, "
        f"test accuracy {result['test_accuracy']:.4f}")
    return result


def parse_worker_log(path: str) -> dict[str, Any]:
    """A worker's shards (as assigned and as read to their end) and its rows per split."""
    assigned: list[str] = []
    read: dict[str, collections.Counter] = {}
    repeats: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as file:
        for line in file:
            if match := _READS.search(line):
                assigned = [name.strip() for name in match.group(5).split(",")]
            elif match := _READ.search(line):
                shard = match.group(2)
                if shard in read:
                    repeats.append(shard)
                counts: collections.Counter = collections.Counter()
                for part in match.group(3).split(", "):
                    if count := _COUNT.fullmatch(part.strip()):
                        counts[count.group(2)] += int(count.group(1))
                read[shard] = counts
    by_split: collections.Counter = collections.Counter()
    for counts in read.values():
        by_split.update(counts)
    splits = {what: n for what, n in by_split.items() if not what.startswith("skipped")}
    return {"shards_assigned": assigned, "shards_read": sorted(read),
            "rows_read": sum(splits.values()), "rows_by_split": splits,
            "skipped": {what: n for what, n in by_split.items() if what.startswith("skipped")},
            "shards_read_twice": repeats}


def workers_run(folder: str, generated: int, shards: int,
                args: argparse.Namespace) -> dict[str, Any]:
    """One epoch on two local workers; which shards each read, and its rows."""
    model_dir = fresh_dir(os.path.join(args.work_dir, "runs", "workers"))
    flags = [f"--data_path={folder}/*.csv", f"--model_dir={model_dir}", "--epochs=1",
             "--test_split=0.1", "--max_validation_examples=500", f"--seed={args.seed}",
             f"--log_every_steps={LOG_EVERY_STEPS}"]
    command = ["bash", os.path.join("launch", "multiworker.sh"), "2", "--", *flags]
    result: dict[str, Any] = {"flags": flags}
    result.update(run_child("workers", command, os.path.join(args.work_dir, "logs",
                                                             "workers.log"),
                            env={**os.environ, "PYTHON": sys.executable}))
    result["peak_rss_gb_largest_worker"] = result.pop("peak_rss_gb")
    per_worker = [parse_worker_log(os.path.join(model_dir, f"worker-{i}.log")) for i in (0, 1)]
    with open(os.path.join(model_dir, "metrics.json"), encoding="utf-8") as file:
        metrics = json.load(file)
    names = {shard_name(k) for k in range(shards)}
    read = [set(worker["shards_read"]) for worker in per_worker]
    total = sum(worker["rows_read"] for worker in per_worker)
    result.update({
        "per_worker": per_worker, "rows_generated": generated, "rows_read": total,
        "every_row_read_once": total == generated,
        "shards_disjoint": not read[0] & read[1],
        "every_shard_read": read[0] | read[1] == names,
        "train_steps": metrics["train_steps"],
        "test_accuracy": round(metrics["test_accuracy"], 4)})
    log(f"workers: shards {per_worker[0]['shards_read']} and {per_worker[1]['shards_read']}; "
        f"{per_worker[0]['rows_read']:,} + {per_worker[1]['rows_read']:,} = {total:,} rows "
        f"read of {generated:,}")
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.monotonic()
    os.makedirs(os.path.join(args.work_dir, "logs"), exist_ok=True)
    reviews: list[Reviews] = []  # Read once, only if some set must be written.
    base = os.path.join(args.work_dir, f"rows{args.rows}-shard{args.shard_rows}")
    sets = {"full": ensure_shards(base, args.rows, args.shard_rows, args, reviews)}
    sets["tenth"] = ensure_shards(base + "-tenth", args.rows // 10, args.shard_rows, args,
                                  reviews, link_from=base)
    worker_folder = os.path.join(args.work_dir,
                                 f"workers{args.worker_shards}-shard{args.worker_shard_rows}")
    if not args.skip_workers:
        sets["workers"] = ensure_shards(worker_folder, args.worker_shards * args.worker_shard_rows,
                                        args.worker_shard_rows, args, reviews)
    del reviews[:]

    stream_flags = [f"--test_split={TEST_SPLIT}"]
    runs = {name: trainer_run(name, f"{sets[name]['folder']}/*.csv", stream_flags, args)
            for name in ("full", "tenth")}
    runs["memory"] = trainer_run("memory", args.data_path, [], args)
    full, tenth, memory = runs["full"], runs["tenth"], runs["memory"]
    ratio = full["train_examples_per_sec"] / memory["train_examples_per_sec"]
    checks: dict[str, Any] = {
        "peak_rss_gb": {"full": full["peak_rss_gb"], "tenth": tenth["peak_rss_gb"],
                        "memory": memory["peak_rss_gb"]},
        "full_rss_within_5pct_of_tenth": full["peak_rss_gb"] <= tenth["peak_rss_gb"] * 1.05,
        "full_rss_under_3gb": full["peak_rss_gb"] < 3,
        "first_step_sec": {name: run["first_step_sec"] for name, run in runs.items()},
        "full_first_step_under_60s": full["first_step_sec"] < 60,
        "examples_per_sec_ratio": round(ratio, 3),
        "examples_per_sec_within_10pct": abs(ratio - 1) <= 0.10,
    }
    summary: dict[str, Any] = {
        "command": "python -m benchmarks.data_scale " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "settings": {key: getattr(args, key) for key in (
            "data_path", "rows", "shard_rows", "steps", "work_dir", "seed", "worker_shards",
            "worker_shard_rows", "quick", "skip_workers")},
        "data": sets, "runs": runs}
    if not args.skip_workers:
        workers = workers_run(sets["workers"]["folder"], sets["workers"]["rows"],
                              sets["workers"]["shards"], args)
        summary["workers"] = workers
        checks["workers_split"] = {
            "rows_read": [worker["rows_read"] for worker in workers["per_worker"]],
            "rows_read_total": workers["rows_read"], "rows_generated": workers["rows_generated"],
            "every_row_read_once": workers["every_row_read_once"],
            "shards_disjoint": workers["shards_disjoint"],
            "every_shard_read": workers["every_shard_read"]}
    summary["checks"] = checks
    summary["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
