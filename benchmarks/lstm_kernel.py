"""The LSTM layer alone, forward and backward: Keras' LSTM against ``trainer.lstm.LeanLSTM``.

LeanLSTM runs twice: as one recurrence over the batch (``chains=1``) and as
two over its halves (``chains=2``, its default on 2 cores).

Run from the repository's root (about 2 minutes on 2 CPU cores)::

    python -m benchmarks.lstm_kernel

Both layers get the same weights and the same random inputs (batch 64, 32
features, 100 units), in two shapes: the article's (500 steps, no mask) and a
length-bucketed batch (217 steps, right-padded, masked). Every round times each
layer in turn, inside one ``tf.function`` each; the JSON on stdout holds the
median examples/s and the median ratio over rounds, and each layer's GFLOP/s as a
share of a 2048 x 2048 matmul's, timed in a process of its own with TensorFlow's
default threads (``contenders.matmul_gflops``, as ``benchmarks.throughput`` times
it): the layer alone is the ceiling for a whole training step's LSTM share.

TensorFlow's intra-op threads are set once for the process, to what
``python -m trainer.main`` uses without a GPU (1, ``--intra_op_threads``);
``--intra_op_threads=0`` shows TensorFlow's default (one per core).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow loads: C++ info noise.

import keras
import numpy as np
import tensorflow as tf

from benchmarks.contenders import TRAIN_FLOPS_PER_TIMESTEP, log
from trainer.lstm import LeanLSTM

FEATURES, UNITS = 32, 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10, help="Batches timed per round.")
    parser.add_argument("--batch_size", type=int, default=64,
                        help="Rows per batch (the article's 64; the defaults train at 32).")
    parser.add_argument("--intra_op_threads", type=int, default=1,
                        help="Threads per op for the whole process (0 = TensorFlow's choice).")
    return parser.parse_args(argv)


def training_step(layer: keras.layers.Layer) -> Callable[..., tf.Tensor]:
    """A compiled forward + backward pass of ``layer`` (the gradients, no update)."""

    @tf.function
    def step(inputs: tf.Tensor, mask: tf.Tensor | None) -> tf.Tensor:
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(layer(inputs, mask=mask, training=True))
        grads = tape.gradient(loss, [inputs, *layer.trainable_weights])
        return tf.add_n([tf.reduce_sum(g) for g in grads])

    return step


def matmul_gflops_all_cores() -> float:
    """``contenders.matmul_gflops`` in a fresh process: this one runs one thread per op."""
    code = "from benchmarks.contenders import matmul_gflops; print(matmul_gflops())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return float(done.stdout.split()[-1])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    peak = matmul_gflops_all_cores()
    log(f"2048 x 2048 matmul: {peak:.1f} GFLOP/s")
    tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    rng = np.random.default_rng(0)
    batch = args.batch_size
    layers = {"keras": keras.layers.LSTM(UNITS), "lean_1_chain": LeanLSTM(UNITS, chains=1),
              "lean_2_chains": LeanLSTM(UNITS, chains=2)}
    for layer in layers.values():
        layer.build((None, None, FEATURES))
        layer.set_weights(layers["keras"].get_weights())
    steps = {name: training_step(layer) for name, layer in layers.items()}
    lengths = rng.integers(150, 218, size=batch)  # Like a bucket of IMDB reviews.
    shapes = {
        "article_500_steps_no_mask": (500, None),
        "bucketed_217_steps_masked": (217, tf.constant(np.arange(217) < lengths[:, None])),
    }
    result: dict = {"benchmark": "lstm_kernel", "batch_size": batch, "rounds": args.rounds,
                    "batches_per_round": args.batches, "intra_op_threads": args.intra_op_threads,
                    "matmul_2048_gflops": round(peak, 1)}
    for shape_name, (width, mask) in shapes.items():
        inputs = tf.constant(rng.normal(size=(batch, width, FEATURES)).astype(np.float32))
        for step in steps.values():
            step(inputs, mask)  # Trace and warm up.
        rates: dict[str, list[float]] = {name: [] for name in steps}
        for round_index in range(args.rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                for _ in range(args.batches):
                    step(inputs, mask).numpy()
                rates[name].append(batch * args.batches / (time.perf_counter() - start))
            log(f"{shape_name} round {round_index + 1}: "
                + ", ".join(f"{name} {r[-1]:.0f} examples/s" for name, r in rates.items()))
        result[shape_name] = {
            **{f"{name}_examples_per_sec": round(statistics.median(r), 1)
               for name, r in rates.items()},
            **{f"{name}_vs_keras": round(statistics.median(
                rate / base for rate, base in zip(rates[name], rates["keras"], strict=True)), 3)
               for name in rates if name != "keras"},
            # Every row runs every padded step: FLOPs per example are the width's.
            **{f"{name}_fraction_of_matmul_peak": round(
                statistics.median(r) * width * TRAIN_FLOPS_PER_TIMESTEP / 1e9 / peak, 3)
               for name, r in rates.items()},
        }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
