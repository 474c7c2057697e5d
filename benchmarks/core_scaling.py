"""LeanLSTM on 1 core against 2 cores: how well its chains scale with the cores it may use.

Run from the repository's root (a few minutes; compare only numbers from one run)::

    python -m benchmarks.core_scaling --rounds=3 > benchmarks/results/core_scaling.json

Each round runs ``python -m benchmarks.lstm_kernel --rounds=1`` twice, confined
with ``taskset`` to core 0 and then to cores 0 and 1 (``--cores``), one after the
other, so that other work on the machine falls on both alike. On n cores,
``trainer.lstm.cpu_policy`` runs n chains of one thread each; the one-core run
is timed with one chain, the two-core run with two. Scaling efficiency is the
two-core examples/s over twice the one-core examples/s (1.0 = perfect), the
median over rounds, for each of ``lstm_kernel``'s shapes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from benchmarks.contenders import log

LAYER_FOR_CORES = {1: "lean_1_chain", 2: "lean_2_chains"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=10, help="Batches timed per round.")
    parser.add_argument("--batch_size", type=int, default=64, help="Rows per batch.")
    return parser.parse_args(argv)


def kernel_run(cores: int, batches: int, batch_size: int) -> dict:
    """One ``benchmarks.lstm_kernel`` round confined to the first ``cores`` cores."""
    command = ["taskset", "-c", ",".join(str(c) for c in range(cores)), sys.executable, "-m",
               "benchmarks.lstm_kernel", "--rounds=1", f"--batches={batches}",
               f"--batch_size={batch_size}"]
    process = subprocess.run(command, capture_output=True, text=True, check=False)
    if process.returncode:
        raise RuntimeError(f"{command} exited {process.returncode}:\n{process.stderr[-3000:]}")
    return json.loads(process.stdout)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rates: dict[str, dict[int, list[float]]] = {}
    for round_index in range(args.rounds):
        for cores, layer in LAYER_FOR_CORES.items():
            result = kernel_run(cores, args.batches, args.batch_size)
            for shape, numbers in result.items():
                if isinstance(numbers, dict):
                    rate = numbers[f"{layer}_examples_per_sec"]
                    rates.setdefault(shape, {1: [], 2: []})[cores].append(rate)
                    log(f"round {round_index + 1} {shape} {cores} core(s), {layer}: "
                        f"{rate:.0f} examples/s")
    summary = {"benchmark": "core_scaling", "rounds": args.rounds, "batch_size": args.batch_size,
               "layers": LAYER_FOR_CORES}
    for shape, by_cores in rates.items():
        summary[shape] = {
            "one_core_examples_per_sec": by_cores[1],
            "two_cores_examples_per_sec": by_cores[2],
            "scaling_efficiency": round(statistics.median(
                two / (2 * one) for one, two in zip(by_cores[1], by_cores[2], strict=True)), 3)}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
