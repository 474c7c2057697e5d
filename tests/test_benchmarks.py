"""benchmarks/: the PyTorch contender learns; a missing PyTorch is skipped with a message."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import contenders, torch_contender
from tests.conftest import REPO, aclimdb_files, trainer_env, write_tree


@pytest.fixture
def tiny_reviews(tmp_path) -> contenders.Reviews:
    """128 training reviews (two batches of 64) whose cue words carry the label."""
    root = write_tree(tmp_path, aclimdb_files(per_class=64))
    return contenders.vectorize(contenders.load_splits(str(root), 0, 0, seed=1))


@pytest.mark.parametrize("packed", [True, False], ids=["torch_lstm", "torch_lstm_padded"])
def test_the_torch_contenders_train_and_their_loss_falls(tiny_reviews, packed):
    if why := torch_contender.available():
        pytest.skip(why)
    racer = torch_contender.TorchLSTM(tiny_reviews, seed=1, packed=packed)
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
    real_steps = sum(min(len(ids), 500) for ids in racer.train_ids)
    if packed:  # The LSTM ran over each review's own tokens only.
        assert epochs[0].timesteps == real_steps
    else:  # Left-padded to each batch's longest: a few padding steps more.
        assert real_steps < epochs[0].timesteps < 2 * real_steps
    assert racer.test_accuracy() > 0.6
    assert racer.settings()["packed"] is packed
    assert racer.name == ("torch_lstm" if packed else "torch_lstm_padded")


def test_length_sorted_batches_hold_every_review_once_among_neighbours_in_length():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 500, size=64 * 250 + 17)
    batches = torch_contender.length_sorted_batches(lengths, np.random.default_rng(1))
    rows = np.concatenate(batches)
    assert len(batches) == 250 and len(set(rows.tolist())) == len(rows)  # Full batches only.
    spread = np.array([np.ptp(lengths[batch]) for batch in batches])
    assert np.median(spread) < 0.05 * np.ptp(lengths)  # Sorted within pools of 100 batches.
    mean_lengths = [lengths[batch].mean() for batch in batches[:20]]
    assert mean_lengths != sorted(mean_lengths)  # The batches themselves are shuffled.
    again = torch_contender.length_sorted_batches(lengths, np.random.default_rng(2))
    assert not np.array_equal(np.concatenate(again), rows)  # A new order every epoch.


def test_the_padded_contender_left_pads_so_the_last_step_is_the_last_token():
    rows = [np.array([5, 6, 7]), np.array([8])]  # NumPy only: runs without PyTorch too.
    ids, lengths, order = torch_contender.padded_batch(rows, packed=False)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and order.tolist() == [0, 1]
    ids, lengths, order = torch_contender.padded_batch(rows[::-1], packed=True)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]


def test_without_torch_the_contender_is_skipped_with_a_message(monkeypatch, capsys,
                                                                tiny_reviews):
    monkeypatch.setattr(torch_contender, "available", lambda: "skipping torch_lstm: no torch")
    racers = contenders.startable(list(contenders.TORCH), tiny_reviews.splits, seed=1)
    assert racers == []
    assert capsys.readouterr().err == "skipping torch_lstm: no torch\n" * 2


@pytest.mark.slow
def test_wall_clock_runs_the_main_job_as_a_user_and_reports_its_phases(tmp_path, capsys):
    from benchmarks import wall_clock

    root = write_tree(tmp_path, aclimdb_files(per_class=64))
    summary = wall_clock.main([f"--data_path={root}", "--seeds=1,2",
                               "--flags=--epochs=2 --max_len=32 --batch_size=16"])
    assert [run["seed"] for run in summary["runs"]] == [1, 2]
    for run in summary["runs"]:
        # Timed from outside the trainer's process, so at least what the run measured itself.
        assert run["process_seconds"] >= run["phases_sec"]["total"] - 0.5
        assert run["epochs_completed"] == 2
        assert 0.0 <= run["test_accuracy"] <= 1.0
        assert run["phases_sec"]["training_steps"] > 0
    assert summary["mean_test_accuracy"] == pytest.approx(
        sum(run["test_accuracy"] for run in summary["runs"]) / 2, abs=1e-4)
    assert set(summary["mean_phases_sec"]) >= {"startup", "reading", "training_steps",
                                               "between_steps", "test_evaluation", "total"}
    assert '"mean_process_seconds"' in capsys.readouterr().out  # The JSON goes to stdout.


def test_a_torch_contender_races_at_another_batch_by_name(tiny_reviews):
    # torch_lstm_padded:batch_size=32 races PyTorch at the harness defaults' batch.
    assert contenders.contender_config("torch_lstm_padded:batch_size=32", seed=1) is None
    if why := torch_contender.available():
        pytest.skip(why)
    racer = torch_contender.TorchLSTM(tiny_reviews, seed=1, packed=False, batch_size=32)
    assert racer.settings()["batch_size"] == 32
    epoch, finished = racer.train_steps(4)  # 128 reviews: four batches of 32.
    assert finished and epoch.examples == 128


@pytest.mark.slow
def test_autotune_compares_the_pipeline_with_and_without_autotuning(tmp_path, capsys):
    from benchmarks import autotune

    root = write_tree(tmp_path, aclimdb_files(per_class=64))
    result = autotune.main([f"--data_path={root}", "--rounds=1", "--epochs=2",
                            "--train_reviews=128"])
    assert result["epochs"] == {"on": 2, "off": 2}
    for side in ("on", "off"):
        assert len(result["examples_per_sec"][side]) == 1  # One process per side a round.
        assert all(rate > 0 for rate in result["examples_per_sec"][side][0])
    assert '"epochs_below_700"' in capsys.readouterr().out


@pytest.mark.slow
def test_lstm_kernel_reports_each_layers_share_of_the_matmul():
    # As a user runs it: its own process sets TensorFlow's threads before anything runs.
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.lstm_kernel", "--rounds=1", "--batches=1",
         "--batch_size=8"], cwd=REPO, env=trainer_env(), capture_output=True, text=True,
        timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    result = json.loads(process.stdout)
    assert result["matmul_2048_gflops"] > 0  # Timed in a process with every core's threads.
    for shape in ("article_500_steps_no_mask", "bucketed_217_steps_masked"):
        for layer in ("keras", "lean_1_chain", "lean_2_chains"):
            assert 0 < result[shape][f"{layer}_fraction_of_matmul_peak"] < 1
