"""PyTorch as a contender: the article's model as PyTorch users write it, on the same token ids.

``nn.Embedding(10000, 32) -> nn.LSTM(32, 100) -> nn.Linear(100, 1)``, Adam at 1e-3,
``BCEWithLogitsLoss``, batches of 64 reviews (at most 500 tokens, the article's
``max_len``) in length-sorted batches: each epoch the reviews are shuffled, cut
into pools of ``POOL_BATCHES`` batches, each pool sorted by length and cut into
batches, and the batches shuffled (torchtext's ``BucketIterator``). Two ways to
feed the LSTM, two contenders:

- ``torch_lstm``: right-padded and packed (``pack_padded_sequence``), so the LSTM
  runs over each review's own tokens only: PyTorch's documented idiom.
- ``torch_lstm_padded``: left-padded to the batch's longest review and not packed,
  so the LSTM reads a few padding steps first (as the article's pre-padding does)
  and its last state follows the review's last token. On a CPU oneDNN's fused LSTM
  kernel takes only unpacked input or packed batches of one length; packed batches
  of several lengths run PyTorch's step-by-step kernel (``benchmarks/README.md``
  has the measured difference).

Denormals are flushed to zero (``torch.set_flush_denormal``), as TensorFlow does on
a CPU; PyTorch's threads are its defaults. PyTorch is installed for the benchmarks
only (``pip install torch==2.13.0``); without it ``available()`` says why and the
benchmarks skip these contenders.
"""

from __future__ import annotations

import time

import numpy as np

from trainer import data
from trainer.config import Config

NAME, PADDED = "torch_lstm", "torch_lstm_padded"
NAMES = (NAME, PADDED)
MAX_LEN, BATCH, POOL_BATCHES = 500, 64, 100


def available() -> str | None:
    """None if PyTorch can be imported, else the message to skip the contenders with."""
    try:
        import torch  # noqa: F401
    except ImportError as error:
        return (f"skipping {', '.join(NAMES)}: PyTorch is not installed ({error}); "
                "pip install torch==2.13.0")
    return None


class TorchLSTM:
    """The article's model in PyTorch, on ``reviews`` (a ``contenders.Reviews``).

    Args:
      reviews: the vectorized splits.
      seed: initialization and shuffling.
      packed: pack each batch (``torch_lstm``), or left-pad it (``torch_lstm_padded``).
      batch_size: reviews per step (the article's 64; ``torch_lstm_padded:batch_size=32``
        races at the harness defaults' batch).
    """

    def __init__(self, reviews: object, seed: int, packed: bool = True,
                 batch_size: int = BATCH) -> None:
        import torch

        torch.set_flush_denormal(True)
        torch.manual_seed(seed)
        self.torch, self.packed, self.batch_size = torch, packed, batch_size
        self.name = NAME if packed else PADDED
        self.rng = np.random.default_rng(seed)
        # The same tokens as every contender: each review's last MAX_LEN (pad_sequences').
        encoding = Config(max_len=MAX_LEN, padding="post", truncating="pre")
        self.train_ids = _id_lists(reviews, reviews.splits.train, encoding)
        self.train_labels = reviews.splits.train.labels.astype(np.float32)
        self.test_ids = _id_lists(reviews, reviews.splits.test, encoding)
        self.test_labels = reviews.splits.test.labels.astype(np.float32)
        self.model = _Net(torch, packed)
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
            self._order = length_sorted_batches(_lengths(self.train_ids), self.rng,
                                                batch=self.batch_size)
        start, examples, timesteps = time.perf_counter(), 0, 0
        for _ in range(steps):
            if not self._order:
                break
            rows = self._order.pop(0)
            timesteps += self._step(rows)
            examples += len(rows)
        return Epoch(time.perf_counter() - start, examples, timesteps), not self._order

    def _step(self, rows: np.ndarray) -> int:
        """One training step; returns the LSTM's timesteps (padding included)."""
        self.model.train()
        ids, lengths, order = padded_batch([self.train_ids[r] for r in rows], self.packed)
        labels = self.torch.from_numpy(self.train_labels[rows][order])
        self.optimizer.zero_grad()
        loss = self.loss(self.model(self.torch.from_numpy(ids), self.torch.from_numpy(lengths)),
                         labels)
        loss.backward()
        self.optimizer.step()
        self.losses.append(loss.item())
        return int(lengths.sum()) if self.packed else int(ids.size)

    def test_accuracy(self) -> float:
        """Accuracy on the test split, in batches of 256 sorted by length (fewer padded steps)."""
        torch = self.torch
        self.model.eval()
        by_length = np.argsort(_lengths(self.test_ids), kind="stable")
        correct = 0
        with torch.no_grad():
            for start in range(0, len(by_length), 256):
                rows = by_length[start:start + 256]
                ids, lengths, order = padded_batch([self.test_ids[r] for r in rows],
                                                   self.packed)
                logits = self.model(torch.from_numpy(ids), torch.from_numpy(lengths)).numpy()
                labels = self.test_labels[rows][order]
                correct += int(((logits > 0) == (labels > 0.5)).sum())
        return correct / len(self.test_ids)

    def settings(self) -> dict:
        return {"framework": f"PyTorch {self.torch.__version__}", "max_len": MAX_LEN,
                "batch_size": self.batch_size, "packed": self.packed,
                "padding": "post" if self.packed else "pre", "truncating": "pre",
                "length_sorted_pools_of_batches": POOL_BATCHES, "flush_denormal": True,
                "intra_op_threads": self.torch.get_num_threads(),
                "loop": "a Python loop over length-sorted batches"}


def length_sorted_batches(lengths: np.ndarray, rng: np.random.Generator,
                          batch: int = BATCH, pool_batches: int = POOL_BATCHES
                          ) -> list[np.ndarray]:
    """One epoch's batches of row indices, each of reviews of about one length.

    The rows are shuffled and cut into pools of ``pool_batches`` batches; each pool
    is sorted by length (stably) and cut into batches; the batches are shuffled.
    Full batches only, as the harness (``drop_remainder``).
    """
    order = rng.permutation(len(lengths))
    pool = batch * pool_batches
    sorted_ = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")]
                              for chunk in np.split(order, range(pool, len(order), pool))])
    batches = [sorted_[i:i + batch] for i in range(0, len(sorted_) - batch + 1, batch)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _id_lists(reviews: object, split: data.Split, config: Config) -> list[np.ndarray]:
    ids = data.encode(split, reviews.vectorizer, config).ids.to_list()
    # A review with no known token still gets one step (packing needs a length >= 1).
    return [np.asarray(row or [0], dtype=np.int64) for row in ids]


def _lengths(rows: list[np.ndarray]) -> np.ndarray:
    return np.array([len(row) for row in rows])


def padded_batch(rows: list[np.ndarray], packed: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ids ``[batch, longest]``, lengths, and the rows' order in them (NumPy, for torch).

    Packed: right-padded, sorted longest first (``pack_padded_sequence`` wants that).
    Not packed: left-padded, in the rows' own order.
    """
    lengths = _lengths(rows)
    order = np.argsort(-lengths, kind="stable") if packed else np.arange(len(rows))
    padded = np.zeros((len(rows), lengths.max()), np.int64)
    for index, row in enumerate(order):
        if packed:
            padded[index, :lengths[row]] = rows[row]
        else:
            padded[index, padded.shape[1] - lengths[row]:] = rows[row]
    return padded, lengths[order], order


def _Net(torch: object, packed: bool) -> object:  # noqa: N802 (a factory standing in for the class)
    """The article's model: its users write this ``nn.Module``."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(10000, 32)
            self.lstm = torch.nn.LSTM(32, 100, batch_first=True)
            self.dense = torch.nn.Linear(100, 1)

        def forward(self, ids: object, lengths: object) -> object:
            inputs = self.embedding(ids)
            if packed:
                inputs = torch.nn.utils.rnn.pack_padded_sequence(
                    inputs, lengths, batch_first=True, enforce_sorted=True)
            _, (h, _) = self.lstm(inputs)
            return self.dense(h[-1]).squeeze(-1)

    return Net()
