"""benchmarks/: the PyTorch contender learns; a missing PyTorch is skipped with a message."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import contenders, torch_contender
from tests.conftest import aclimdb_files, write_tree


@pytest.fixture
def tiny_reviews(tmp_path) -> contenders.Reviews:
    """128 training reviews (two batches of 64) whose cue words carry the label."""
    root = write_tree(tmp_path, aclimdb_files(per_class=64))
    return contenders.vectorize(contenders.load_splits(str(root), 0, 0, seed=1))


def test_the_torch_contender_trains_and_its_loss_falls(tiny_reviews):
    if why := torch_contender.available():
        pytest.skip(why)
    racer = torch_contender.TorchLSTM(tiny_reviews, seed=1)
    racer.warm_up()
    assert len(racer.losses) == 2
    epochs = []
    for _ in range(15):
        epoch, finished = racer.train_steps(10)
        assert finished and epoch.examples == 128  # Two full batches an epoch.
        epochs.append(epoch)
    losses = racer.losses[2:]
    assert len(losses) == 30
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    assert epochs[0].timesteps == sum(min(len(ids), 500) for ids in racer.train_ids)
    assert racer.test_accuracy() > 0.6
    assert racer.settings()["packed"] is True


def test_without_torch_the_contender_is_skipped_with_a_message(monkeypatch, capsys,
                                                                tiny_reviews):
    monkeypatch.setattr(torch_contender, "available", lambda: "skipping torch_lstm: no torch")
    racers = contenders.startable([contenders.TORCH], tiny_reviews.splits, seed=1)
    assert racers == []
    assert capsys.readouterr().err == "skipping torch_lstm: no torch\n"
