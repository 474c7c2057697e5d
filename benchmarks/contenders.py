"""The contenders the benchmarks race, on the same reviews and the same token ids.

Each contender runs in a process of its own (``Isolated``), started the way its
users would start it: the article's code with TensorFlow's default threads,
the harness with the intra-op threads ``python -m trainer.main`` sets
(``trainer.distribute.intra_op_threads``). TensorFlow fixes those per process.
The benchmark's own process only reads the reviews, hands out the work, one
contender at a time, and collects the timings.

- ``article_code``: the article's own code: NumPy arrays pre-padded to 500 with
  ``keras.utils.pad_sequences``, the Sequential model, ``compile("adam",
  "binary_crossentropy", ["accuracy"])``, ``model.fit(x, y, batch_size=64)``.
- ``harness_article``: the harness's pipeline and loop under ``--article_settings``
  (pre-padding to 500, no mask, batch 64).
- ``harness_fast``: the harness's defaults (length
  bucketing, right padding, mask, clipping, a dense embedding gradient, the
  weights' moving average, LeanLSTM)
  with ``--steps_per_loop=20``.

Both harness contenders run ``trainer.train.epoch_batches`` and
``Loop.train_steps``, the path ``Loop.fit`` takes. ``torch_lstm`` and
``torch_lstm_padded`` (``benchmarks/torch_contender.py``) race where PyTorch is
installed. The archive is read once; each process adapts the vocabulary on the
same training reviews and vectorizes through ``trainer.data`` before any clock
starts, so every contender sees the same reviews as the same ids.
"""

from __future__ import annotations

import ast
import dataclasses
import multiprocessing
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from benchmarks import torch_contender
from trainer import data, distribute, loop, model, sources, train
from trainer.config import PRESETS, Config

# Training FLOPs of one LSTM timestep of one example: the forward pass is two matmuls,
# [input + units] x [4 units], at 2 FLOPs per multiply-add; the backward pass costs about
# twice the forward (gradients for the inputs/state and for the weights). Gate
# nonlinearities, the embedding and the dense layer are left out: they are under 2%.
FORWARD_FLOPS_PER_TIMESTEP = 2 * 4 * 100 * (32 + 100)
TRAIN_FLOPS_PER_TIMESTEP = 3 * FORWARD_FLOPS_PER_TIMESTEP

NAMES = ("article_code", "harness_article", "harness_fast")
TORCH = torch_contender.NAMES  # Only where PyTorch is installed (``startable`` skips them).


def log(message: str) -> None:
    """Progress goes to stderr; stdout carries only the JSON result."""
    print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Reviews:
    """The train and test reviews every contender uses, and the one vectorizer."""

    splits: data.Splits
    vectorizer: keras.layers.TextVectorization


def load_splits(data_path: str, train_reviews: int, test_reviews: int, seed: int) -> data.Splits:
    """Reads the archive once: no TensorFlow work, so the contenders' processes start clean.

    Args:
      data_path: an aclImdb folder or .tar.gz.
      train_reviews: class-balanced training subset (0 = all 25,000).
      test_reviews: class-balanced test subset (0 = all 25,000).
      seed: picks the subsets.

    Returns:
      All the training reviews (no validation split: the article has none).
    """
    return sources.load(Config(data_path=data_path, max_train_examples=train_reviews,
                            max_test_examples=test_reviews, validation_split=0.0,
                            early_stopping_patience=0, seed=seed))


def vectorize(splits: data.Splits) -> Reviews:
    """Adapts the vocabulary on the training reviews (the same in every process)."""
    return Reviews(splits, data.make_vectorizer(splits.train, Config()))


@dataclasses.dataclass(frozen=True)
class Epoch:
    """One timed pass of training."""

    seconds: float
    examples: int
    timesteps: int  # Sum over examples of the padded width the LSTM ran over.

    @property
    def examples_per_sec(self) -> float:
        return self.examples / self.seconds

    @property
    def lstm_gflops(self) -> float:
        """Achieved GFLOP/s of the LSTM's training work (``TRAIN_FLOPS_PER_TIMESTEP``)."""
        return TRAIN_FLOPS_PER_TIMESTEP * self.timesteps / self.seconds / 1e9


class ArticleCode:
    """The article's code, as written there, on the harness's token ids."""

    name = "article_code"

    def __init__(self, reviews: Reviews, seed: int) -> None:
        # The article's encoding: pad_sequences(maxlen=500), pre-padded and pre-truncated.
        self.max_len = 500
        encoding = Config(max_len=self.max_len, padding="pre", truncating="pre")
        self.x_train, self.y_train = _padded_arrays(reviews, reviews.splits.train, encoding)
        self.x_test, self.y_test = _padded_arrays(reviews, reviews.splits.test, encoding)
        keras.utils.set_random_seed(seed)
        self._rng = np.random.default_rng(seed)  # train_steps' epoch order.
        self._order: list[np.ndarray] = []
        self.model = keras.Sequential([
            keras.layers.Embedding(10000, 32),
            keras.layers.LSTM(100),
            keras.layers.Dense(1, activation="sigmoid"),
        ])
        self.model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])

    def warm_up(self) -> None:
        """Traces fit's train function on two batches, so rounds time training alone."""
        self.model.fit(self.x_train[:128], self.y_train[:128], batch_size=64, epochs=1,
                       verbose=0)

    def train_epoch(self) -> Epoch:
        start = time.perf_counter()
        self.model.fit(self.x_train, self.y_train, batch_size=64, epochs=1, verbose=0)
        seconds = time.perf_counter() - start
        return Epoch(seconds, len(self.x_train), len(self.x_train) * self.max_len)

    def train_steps(self, steps: int) -> tuple[Epoch, bool]:
        """Trains the next ``steps`` batches of the epoch (``model.fit`` on them, in order).

        The epoch's order is one shuffle, as ``model.fit`` draws; fit then runs
        on each slice of it unshuffled. Returns the work and whether the epoch ended.
        """
        if not self._order:
            order = self._rng.permutation(len(self.x_train))
            self._order = [order[i:i + 64] for i in range(0, len(order), 64)]
        rows = np.concatenate(self._order[:steps])
        del self._order[:steps]
        start = time.perf_counter()
        self.model.fit(self.x_train[rows], self.y_train[rows], batch_size=64, epochs=1,
                       shuffle=False, verbose=0)
        seconds = time.perf_counter() - start
        return Epoch(seconds, len(rows), len(rows) * self.max_len), not self._order

    def test_accuracy(self) -> float:
        return float(self.model.evaluate(self.x_test, self.y_test, verbose=0)[1])

    def settings(self) -> dict:
        return {"padding": "pre", "truncating": "pre", "max_len": self.max_len, "mask": False,
                "batch_size": 64,
                "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                "loop": "model.fit on NumPy arrays"}


def _padded_arrays(reviews: Reviews, split: data.Split,
                   config: Config) -> tuple[np.ndarray, np.ndarray]:
    ids = data.encode(split, reviews.vectorizer, config).ids.to_list()
    return (keras.utils.pad_sequences(ids, maxlen=config.max_len).astype(np.int32),
            split.labels.astype(np.float32))


# The harness's fastest settings: the defaults, and several steps per tf.function call
# (which changes no result, only how often Python runs).
FAST_CHANGES = {"steps_per_loop": 20}


def harness_config(name: str, seed: int, **changes: object) -> Config:
    """The Config of a harness contender: --article_settings, or the fastest settings.

    Both train on every training review (no validation split, no early
    stopping), as the article's code does.
    """
    preset = PRESETS["article_settings"] if name == "harness_article" else FAST_CHANGES
    return Config(validation_split=0.0, early_stopping_patience=0, seed=seed,
                  **{**preset, **changes})


class Harness:
    """The harness's pipeline and compiled loop under one Config."""

    def __init__(self, name: str, reviews: Reviews, config: Config) -> None:
        self.name = name
        self.config = config
        self.strategy = tf.distribute.get_strategy()  # What --strategy=auto picks on a CPU.
        self.train = data.encode(reviews.splits.train, reviews.vectorizer, config)
        self.test = data.encode(reviews.splits.test, reviews.vectorizer, config)
        keras.utils.set_random_seed(config.seed)
        plan = loop.make_plan(config, len(self.train), 1)
        with self.strategy.scope():
            net = model.build(config)
            optimizer = model.make_optimizer(config, plan.total_steps)
        self.loop = loop.Loop(config, self.strategy, net, optimizer, config.batch_size)
        self.epochs_done = 0
        self._in_memory: tf.data.Dataset | None = None
        self._iterator: Any = None  # train_steps' place in its epoch; None between epochs.
        self._widths: list[int] = []  # The padded widths of that epoch's batches still to go.

    def epoch_batches(self, epoch: int) -> tf.data.Dataset:
        """The batches ``Loop.fit`` trains on in ``epoch`` (same seed, same order)."""
        return train.epoch_batches(self.train, self.config)(epoch)

    def warm_up(self) -> None:
        """Traces the train function, so rounds time training alone."""
        self._steps(iter(self.strategy.experimental_distribute_dataset(
            self.epoch_batches(0).take(2))))

    def train_epoch(self, batches: tf.data.Dataset | None = None) -> Epoch:
        """Trains one epoch: the next epoch's batches, or ``batches`` if given."""
        if batches is None:
            self.epochs_done += 1
            batches = self.epoch_batches(self.epochs_done)
        # The widths the LSTM will run over; a separate pass, outside the clock.
        timesteps = sum(int(tf.size(ids)) for ids, _ in batches)
        start = time.perf_counter()  # Includes the pipeline's start: the epoch's order.
        examples, _ = self._steps(iter(self.strategy.experimental_distribute_dataset(batches)))
        return Epoch(time.perf_counter() - start, examples, timesteps)

    def train_steps(self, steps: int) -> tuple[Epoch, bool]:
        """Trains the next ``steps`` steps of the epoch (a new epoch when the last ended).

        Returns the work and whether the epoch ended.
        """
        if self._iterator is None:
            self.epochs_done += 1
            batches = self.epoch_batches(self.epochs_done)
            self._widths = [int(tf.size(ids)) for ids, _ in batches]  # Outside the clock.
            self._iterator = iter(self.strategy.experimental_distribute_dataset(batches))
        start = time.perf_counter()
        examples, done = self._steps(self._iterator, steps)
        seconds = time.perf_counter() - start
        timesteps = sum(self._widths[:done])
        del self._widths[:done]
        if not self._widths:
            self._iterator = None
        return Epoch(seconds, examples, timesteps), self._iterator is None

    def _steps(self, iterator: Any, most: int | None = None) -> tuple[int, int]:
        """Trains from ``iterator`` until it ends or ``most`` steps; (examples, steps)."""
        examples = done = 0
        while most is None or done < most:
            call = self.loop.steps_per_call if most is None else min(
                self.loop.steps_per_call, most - done)
            sums = self.loop.train_steps(iterator, call)
            if not int(sums.steps):
                break
            done += int(sums.steps)
            examples += int(sums.count)
        return examples, done

    def train_epoch_in_memory(self) -> Epoch:
        """Trains one epoch on batches held in memory: the same work, no input pipeline.

        The batches are those of an epoch the rounds never use, materialized on
        the first call.
        """
        if self._in_memory is None:
            self._in_memory = self.epoch_batches(epoch=10_000).cache()
            for _ in self._in_memory:  # Fill the cache.
                pass
        return self.train_epoch(self._in_memory)

    def test_accuracy(self) -> float:
        """Of the weights ``trainer.main`` would keep now: the moving average, if on."""
        with self.loop.averaged_weights():
            batches = train.evaluation_batches(self.test, self.config)
            return self.loop.evaluate(batches, "test")["test/accuracy"]

    def settings(self) -> dict:
        config = self.config
        return {"padding": config.padding, "truncating": config.truncating,
                "max_len": config.max_len, "mask": config.uses_mask,
                "bucket_by_length": config.bucket_by_length,
                "bucket_window_batches": config.bucket_window_batches,
                "batch_size": config.batch_size, "steps_per_loop": config.steps_per_loop,
                "ema_momentum": config.ema_momentum,
                "lstm": "trainer.lstm.LeanLSTM" if config.lean_lstm else "keras.layers.LSTM",
                "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                "loop": "trainer.loop.Loop.train_steps"}


def contender_config(name: str, seed: int, **changes: object) -> Config | None:
    """The Config of the harness contender called ``name``; None for ``article_code``.

    ``name`` is one of ``NAMES``, or a variant of a harness contender:
    ``harness_fast:bucket_window_batches=10`` (any Config fields, joined with
    ``+``; values are Python literals), e.g. ``lean_lstm=False`` for Keras' own
    LSTM instead of ``trainer.lstm.LeanLSTM``.

    Args:
      name: the contender, or ``base:field=value+field=value``.
      seed: initialization and shuffling.
      **changes: Config fields applied to every harness contender.
    """
    if name == "article_code" or name.partition(":")[0] in TORCH:
        return None
    base, _, spec = name.partition(":")
    if base not in NAMES[1:]:
        raise ValueError(f"Unknown contender {name!r}: use one of {NAMES}, or a variant "
                         "such as harness_fast:bucket_window_batches=10.")
    variant = {key: ast.literal_eval(value)
               for key, value in (item.split("=", 1) for item in spec.split("+") if item)}
    return harness_config(base, seed, **{**changes, **variant})


def startable(names: list[str], splits: data.Splits, seed: int,
              **changes: object) -> list[Isolated]:
    """An ``Isolated`` per name, skipping (with a message) PyTorch's contenders without it."""
    racers = []
    for name in names:
        if name.partition(":")[0] in TORCH and (why := torch_contender.available()):
            log(why)
            continue
        racers.append(Isolated(name, splits, seed, **changes))
    return racers


class Isolated:
    """A contender in a process of its own, driven through a pipe.

    The process starts at once (vectorizing its reviews, building the model)
    and answers one call at a time, so contenders never train at the same
    time. The methods are those of ``ArticleCode``, ``Harness`` and
    ``torch_contender.TorchLSTM``; ``train_epoch_in_memory`` is the harness's only.
    """

    def __init__(self, name: str, splits: data.Splits, seed: int, **changes: object) -> None:
        contender_config(name, seed, **changes)  # A bad name fails here, not in the child.
        self.name = name
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, name, splits, seed, changes),
                                        name=name, daemon=True)
        self._process.start()
        child.close()

    def warm_up(self) -> None:
        self._call("warm_up")

    def train_epoch(self) -> Epoch:
        return self._call("train_epoch")

    def train_epoch_in_memory(self) -> Epoch:
        return self._call("train_epoch_in_memory")

    def train_steps(self, steps: int) -> tuple[Epoch, bool]:
        return self._call("train_steps", steps)

    def test_accuracy(self) -> float:
        return self._call("test_accuracy")

    def settings(self) -> dict:
        return self._call("settings")

    def _call(self, method: str, *args: object) -> Any:
        self._conn.send((method, args))
        try:
            status, value = self._conn.recv()
        except EOFError:
            raise RuntimeError(f"{self.name}'s process died (exit code "
                               f"{self._process.exitcode}); see its output above.") from None
        if status != "ok":
            raise RuntimeError(f"{self.name} failed in its process:\n{value}")
        return value

    def close(self) -> None:
        """Stops the process."""
        if self._process.is_alive():
            self._conn.send("stop")
            self._process.join(timeout=60)
        if self._process.is_alive():
            self._process.kill()


def _serve(conn: Connection, name: str, splits: data.Splits, seed: int,
           changes: dict[str, object]) -> None:
    """A contender's process: sets TensorFlow up as its users would, then answers calls."""
    config = contender_config(name, seed, **changes)
    if config is not None:  # As trainer.main does, before any TensorFlow work.
        distribute.set_intra_op_threads(distribute.intra_op_threads(
            config, num_gpus=len(tf.config.list_physical_devices("GPU"))))
    reviews = vectorize(splits)
    base, _, spec = name.partition(":")
    if base in TORCH:  # torch_lstm_padded, or torch_lstm_padded:batch_size=32.
        batch = dict(item.split("=", 1) for item in spec.split("+") if item)
        racer = torch_contender.TorchLSTM(
            reviews, seed, packed=base == torch_contender.NAME,
            batch_size=int(batch.get("batch_size", torch_contender.BATCH)))
    else:
        racer = ArticleCode(reviews, seed) if config is None else Harness(name, reviews, config)
    while (message := conn.recv()) != "stop":
        method, args = message
        try:
            conn.send(("ok", getattr(racer, method)(*args)))
        except Exception:
            conn.send(("error", traceback.format_exc()))


def matmul_gflops(size: int = 2048, repeats: int = 10) -> float:
    """The machine's practical float32 peak: GFLOP/s of a dense ``size`` x ``size`` matmul."""
    a = tf.random.stateless_normal([size, size], seed=[1, 2])
    b = tf.random.stateless_normal([size, size], seed=[3, 4])
    tf.matmul(a, b).numpy()  # Warm up.
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tf.matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
