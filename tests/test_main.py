"""python -m trainer.main end to end: the smoke test, and bad input ending in one clear line."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, aclimdb_files, trainer_env, write_tree

# Lines every resumed attempt of the kill test prints, in order; it is killed after one.
KILL_MARKERS = ("resuming from", " | step ", " done | ", "test | ")

REQUIRED_METRICS = {
    "test_accuracy", "test_loss", "epochs_completed", "train_steps", "train_examples_per_sec",
    "num_params", "strategy", "num_replicas", "precision", "cudnn_eligible", "wall_time_sec",
    "flags",
}


def assert_one_line_error(process, *needles: str) -> None:
    """Exit code 2, no traceback, and one stderr line that names what was wrong."""
    assert process.returncode == 2, process.stderr[-2000:]
    assert "Traceback" not in process.stderr
    errors = [line for line in process.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, process.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0]


@pytest.mark.slow
def test_smoke_run_trains_above_chance_and_writes_its_record(run_trainer, imdb_archive,
                                                             tmp_path):
    model_dir = tmp_path / "smoke"
    start = time.monotonic()
    process = run_trainer("--smoke_test", f"--data_path={imdb_archive}",
                          f"--model_dir={model_dir}")
    seconds = time.monotonic() - start
    assert process.returncode == 0, process.stderr[-3000:]
    assert seconds < 120, f"the smoke test took {seconds:.0f} s"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert set(metrics) >= REQUIRED_METRICS
    assert metrics["test_accuracy"] >= 0.65
    assert metrics["num_params"] == 373_301
    assert metrics["epochs_completed"] == metrics["flags"]["epochs"] == 3
    assert metrics["flags"]["data_path"] == imdb_archive
    assert (model_dir / "model.keras").stat().st_size > 1_000_000
    # Split on "\n" only: a few IMDB tokens hold characters that splitlines() breaks on.
    vocabulary = (model_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    assert len(vocabulary) == 10_000 and vocabulary[:2] == ["", "[UNK]"]
    # One line per epoch with everything a user watches, and progress within epochs.
    epoch_lines = [line for line in process.stderr.splitlines() if " done | step " in line]
    assert len(epoch_lines) == 3
    for name in ("train/loss", "train/accuracy", "val/loss", "val/accuracy",
                 "examples_per_sec", "seconds"):
        assert name in epoch_lines[0]
    assert "epoch 1/3 | step 20/" in process.stderr
    assert "LSTM is cuDNN-eligible" in process.stderr
    # Without a GPU: the fused recurrence, one chain per core, one thread per op.
    assert metrics["cpu_lstm_kernel"].startswith("LeanLSTM's fused BlockLSTM")
    assert "1 intra-op thread(s)" in metrics["cpu_lstm_kernel"]

    # The same command again finds the run finished: exit 0, nothing trained or rewritten.
    written = (model_dir / "metrics.json").stat().st_mtime_ns
    again = run_trainer("--smoke_test", f"--data_path={imdb_archive}",
                        f"--model_dir={model_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds a finished run" in again.stderr and "--overwrite" in again.stderr
    assert "epoch 1/3" not in again.stderr
    assert (model_dir / "metrics.json").stat().st_mtime_ns == written


def test_missing_data_path(run_trainer, tmp_path):
    process = run_trainer(f"--data_path={tmp_path}/nowhere.tar.gz")
    assert_one_line_error(process, "--data_path", "does not exist")


def test_folder_without_the_aclimdb_layout(run_trainer, tmp_path):
    (tmp_path / "reviews").mkdir()
    process = run_trainer(f"--data_path={tmp_path / 'reviews'}",
                          f"--model_dir={tmp_path / 'run'}")
    assert_one_line_error(process, "--data_path", "has no class folders")


def test_review_that_is_not_utf8(run_trainer, tmp_path):
    files = aclimdb_files(4)
    files["aclImdb/test/neg/3_2.txt"] = b"\xff\xfe broken bytes"
    root = write_tree(tmp_path, files)
    process = run_trainer(f"--data_path={root}", f"--model_dir={tmp_path / 'run'}")
    assert_one_line_error(process, "test/neg/3_2.txt", "UTF-8")


@pytest.mark.parametrize("flag, needle", [
    ("--strategy=parameter_server", "--strategy"),
    ("--batch_size=0", "--batch_size"),
    ("--max_len=-3", "--max_len"),
    ("--epochs=ten", "--epochs"),
    ("--no_such_flag=1", "no_such_flag"),
])
def test_bad_flag_values(run_trainer, flag, needle):
    assert_one_line_error(run_trainer(flag), needle)


def test_batch_that_does_not_split_across_replicas(run_trainer, tiny_aclimdb, tmp_path):
    process = run_trainer(f"--data_path={tiny_aclimdb}", "--cpu_replicas=3",
                          "--strategy=mirrored", "--batch_size=64",
                          f"--model_dir={tmp_path / 'run'}")
    assert_one_line_error(process, "--batch_size=64", "3 replicas")


def test_malformed_tf_config(run_trainer, tiny_aclimdb, tmp_path):
    process = run_trainer(f"--data_path={tiny_aclimdb}", f"--model_dir={tmp_path / 'run'}",
                          env={"TF_CONFIG": '{"cluster": {"worker": ["localhost:1"]}, '
                                            '"task": {"type": "worker", "index": 5}}'},
                          timeout=60)
    assert_one_line_error(process, "TF_CONFIG", "out of range")


def test_tiny_run_on_an_unpacked_folder(run_trainer, tiny_aclimdb, tmp_path):
    model_dir = tmp_path / "run"
    process = run_trainer(f"--data_path={tiny_aclimdb}", f"--model_dir={model_dir}",
                          "--batch_size=4", "--epochs=1", "--max_len=16",
                          "--validation_split=0.25")
    assert process.returncode == 0, process.stderr[-3000:]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["data"] == {"source": "aclimdb", "train": 18, "validation": 6, "test": 24}
    assert metrics["train_steps"] == 18 // 4


@pytest.mark.slow
def test_sigterm_checkpoints_exits_75_and_the_same_command_resumes(imdb_archive, tmp_path):
    model_dir = tmp_path / "preempted"
    command = [sys.executable, "-m", "trainer.main", "--smoke_test", "--epochs=2",
               f"--data_path={imdb_archive}", f"--model_dir={model_dir}",
               "--log_every_steps=5"]
    env = trainer_env()
    process = subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:  # Wait until training is under way in epoch 2.
        lines.append(line)
        if "epoch 2/2 | step " in line:
            process.send_signal(signal.SIGTERM)
            break
    lines.extend(process.stderr)
    assert process.wait(timeout=120) == 75, "".join(lines[-20:])
    assert any(line.startswith("preempted: stopped by SIGTERM at step") for line in lines)
    assert not (model_dir / "metrics.json").exists()
    assert list((model_dir / "checkpoints").glob("ckpt-*.index"))

    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert "epoch 1/2 done" not in resumed.stderr  # The finished epoch is not repeated.
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2
    steps_per_epoch = metrics["history"][0]["step"]
    assert metrics["train_steps"] == 2 * steps_per_epoch


@pytest.mark.slow
def test_kill_9_at_random_moments_then_the_same_command_finishes_like_no_kill(
        run_trainer, small_aclimdb, tmp_path):
    # 900 training reviews (100 held out) at batch 16: 56 steps per epoch, 168 in all.
    flags = [f"--data_path={small_aclimdb}", "--max_train_examples=1000",
             "--max_test_examples=400", "--max_len=64", "--batch_size=16", "--epochs=3",
             "--checkpoint_every_steps=7", "--log_every_steps=10"]
    reference = run_trainer(*flags, f"--model_dir={tmp_path / 'uninterrupted'}")
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = json.loads((tmp_path / "uninterrupted" / "metrics.json").read_text())

    seed = random.randrange(10**6)
    rng = random.Random(seed)
    command = [sys.executable, "-m", "trainer.main", *flags, f"--model_dir={tmp_path / 'run'}"]
    env = trainer_env()
    attempts = []
    for attempt in range(6):
        log = tmp_path / f"attempt-{attempt}.log"
        with log.open("w") as out:
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                                       stderr=subprocess.STDOUT)
        # Kill moments are chosen by what the attempt has printed, never by a clock: the
        # first kill lands inside an epoch; then anywhere a resumed attempt reaches (start-up
        # right after the restore, an epoch, just after an epoch-end checkpoint, the outputs).
        marker = ("epoch 2/3 | step " if attempt == 0 else
                  rng.choice(KILL_MARKERS) if attempt < 4 else None)
        if marker is not None:
            while marker not in log.read_text() and process.poll() is None:
                time.sleep(0.05)
            process.kill()
        attempts.append(process.wait(timeout=300))
        if attempts[-1] == 0:
            break
    assert attempts[0] == -9 and attempts[-1] == 0, (seed, attempts, log.read_text()[-3000:])
    assert attempts.count(-9) >= 2, (seed, attempts)  # Attempt 1 reaches every marker.
    got = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("epochs_completed", "train_steps", "best_epoch"):
        assert got[key] == expected[key], (seed, attempts, key)
    assert [h["step"] for h in got["history"]] == [56, 112, 168]
    assert abs(got["test_accuracy"] - expected["test_accuracy"]) <= 0.01, seed


def test_overwrite_trains_a_finished_model_dir_again_from_scratch(run_trainer, tiny_aclimdb,
                                                                 tmp_path):
    model_dir = tmp_path / "run"
    flags = [f"--data_path={tiny_aclimdb}", f"--model_dir={model_dir}", "--batch_size=4",
             "--max_len=16", "--early_stopping_patience=0"]
    assert run_trainer(*flags, "--epochs=1").returncode == 0
    process = run_trainer(*flags, "--epochs=2", "--overwrite")
    assert process.returncode == 0, process.stderr[-3000:]
    assert "resuming from" not in process.stderr
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert metrics["train_steps"] == 2 * 21 // 4
    # The first run's checkpoints are gone, not merely outnumbered.
    assert sorted(p.name for p in (model_dir / "checkpoints").glob("ckpt-*.index")) == [
        "ckpt-1.index", "ckpt-2.index"]
