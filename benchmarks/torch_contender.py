"""PyTorch as a contender: the article's model as PyTorch users write it, on the same token ids.

``torch_lstm``: ``nn.Embedding(10000, 32) -> nn.LSTM(32, 100) -> nn.Linear(100, 1)``,
batches of 64 reviews (at most 500 tokens, the article's ``max_len``) shuffled each
epoch, each batch sorted by length and packed (``pack_padded_sequence``) so the LSTM
runs over each review's own tokens only, Adam at 1e-3, ``BCEWithLogitsLoss``. Denormals
are flushed to zero (``torch.set_flush_denormal``), as TensorFlow does on a CPU;
PyTorch's threads are its defaults. PyTorch is installed for the benchmarks only
(``pip install torch==2.13.0``); without it ``available()`` says why and the
benchmarks skip this contender.
"""

from __future__ import annotations

import time

import numpy as np

from trainer import data
from trainer.config import Config

NAME = "torch_lstm"
MAX_LEN, BATCH = 500, 64


def available() -> str | None:
    """None if PyTorch can be imported, else the message to skip the contender with."""
    try:
        import torch  # noqa: F401
    except ImportError as error:
        return f"skipping {NAME}: PyTorch is not installed ({error}); pip install torch==2.13.0"
    return None


class TorchLSTM:
    """The article's model in PyTorch, on ``reviews`` (a ``contenders.Reviews``)."""

    name = NAME

    def __init__(self, reviews: object, seed: int) -> None:
        import torch

        torch.set_flush_denormal(True)
        torch.manual_seed(seed)
        self.torch = torch
        self.rng = np.random.default_rng(seed)
        encoding = Config(max_len=MAX_LEN, padding="post")
        self.train_ids = _id_lists(reviews, reviews.splits.train, encoding)
        self.train_labels = reviews.splits.train.labels.astype(np.float32)
        self.test_ids = _id_lists(reviews, reviews.splits.test, encoding)
        self.test_labels = reviews.splits.test.labels.astype(np.float32)
        self.model = _Net(torch)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss = torch.nn.BCEWithLogitsLoss()
        self._order: list[np.ndarray] = []
        self.losses: list[float] = []  # Every training step's loss, in order.

    def warm_up(self) -> None:
        """Two steps, so that timed rounds start warm (a copy's weights are left alone)."""
        state = ({k: v.clone() for k, v in self.model.state_dict().items()},
                 self.optimizer.state_dict())
        for rows in (np.arange(BATCH), np.arange(BATCH, 2 * BATCH)):
            self._step(rows % len(self.train_ids))
        self.model.load_state_dict(state[0])
        self.optimizer = self.torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def train_epoch(self) -> object:
        """Trains one whole epoch; a ``contenders.Epoch``."""
        return self.train_steps(len(self.train_ids))[0]

    def train_steps(self, steps: int) -> tuple[object, bool]:
        """Trains up to ``steps`` batches of the current epoch (a new epoch when none is left).

        Returns:
          ``(contenders.Epoch, whether the epoch is finished)``.
        """
        from benchmarks.contenders import Epoch

        if not self._order:
            order = self.rng.permutation(len(self.train_ids))
            # Full batches only, as the harness (drop_remainder); the article keeps the rest.
            self._order = [order[i:i + BATCH] for i in range(0, len(order) - BATCH + 1, BATCH)]
        start, examples, timesteps = time.perf_counter(), 0, 0
        for _ in range(steps):
            if not self._order:
                break
            rows = self._order.pop(0)
            timesteps += self._step(rows)
            examples += len(rows)
        return Epoch(time.perf_counter() - start, examples, timesteps), not self._order

    def _step(self, rows: np.ndarray) -> int:
        torch = self.torch
        self.model.train()
        ids, lengths = _packed_batch(torch, [self.train_ids[r] for r in rows])
        labels = torch.from_numpy(self.train_labels[rows][np.argsort(-_lengths(
            [self.train_ids[r] for r in rows]), kind="stable")])
        self.optimizer.zero_grad()
        loss = self.loss(self.model(ids, lengths), labels)
        loss.backward()
        self.optimizer.step()
        self.losses.append(loss.item())
        return int(lengths.sum())

    def test_accuracy(self) -> float:
        torch = self.torch
        self.model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(self.test_ids), 256):
                batch = self.test_ids[start:start + 256]
                order = np.argsort(-_lengths(batch), kind="stable")
                ids, lengths = _packed_batch(torch, batch)
                logits = self.model(ids, lengths).numpy()
                labels = self.test_labels[start:start + 256][order]
                correct += int(((logits > 0) == (labels > 0.5)).sum())
        return correct / len(self.test_ids)

    def settings(self) -> dict:
        return {"framework": f"PyTorch {self.torch.__version__}", "max_len": MAX_LEN,
                "batch_size": BATCH, "packed": True, "flush_denormal": True,
                "intra_op_threads": self.torch.get_num_threads(),
                "loop": "a Python loop over packed, length-sorted batches"}


def _id_lists(reviews: object, split: data.Split, config: Config) -> list[np.ndarray]:
    ids = data.encode(split, reviews.vectorizer, config).ids.to_list()
    # A review with no known token still gets one step (packing needs a length >= 1).
    return [np.asarray(row or [0], dtype=np.int64) for row in ids]


def _lengths(rows: list[np.ndarray]) -> np.ndarray:
    return np.array([len(row) for row in rows])


def _packed_batch(torch: object, rows: list[np.ndarray]) -> tuple[object, object]:
    """Right-padded ids ``[batch, longest]`` and lengths, sorted longest first (for packing)."""
    lengths = _lengths(rows)
    order = np.argsort(-lengths, kind="stable")
    padded = np.zeros((len(rows), lengths.max()), np.int64)
    for index, row in enumerate(order):
        padded[index, :lengths[row]] = rows[row]
    return torch.from_numpy(padded), torch.from_numpy(lengths[order])


def _Net(torch: object) -> object:  # noqa: N802 (a factory standing in for the class)
    """The article's model: its users write this ``nn.Module``."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(10000, 32)
            self.lstm = torch.nn.LSTM(32, 100, batch_first=True)
            self.dense = torch.nn.Linear(100, 1)

        def forward(self, ids: object, lengths: object) -> object:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                self.embedding(ids), lengths, batch_first=True, enforce_sorted=True)
            _, (h, _) = self.lstm(packed)
            return self.dense(h[-1]).squeeze(-1)

    return Net()
