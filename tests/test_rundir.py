"""A run folder you can trust, tried with real processes, real signals and real files.

Each test starts ``python -m trainer.main`` and chooses its moments by what the
trainer has printed (a progress line, a stage's first line), never by a clock.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, aclimdb_files, trainer_env, write_tree
from trainer.preemption import PAUSE_ENV, PAUSE_SIGNALS_ENV

pytestmark = pytest.mark.slow

# 150 reviews per class and split (270 to train on after validation): epochs of 33 steps of 8.
FLAGS = ("--batch_size=8", "--max_len=24", "--epochs=2", "--log_every_steps=1",
         "--early_stopping_patience=0")


@pytest.fixture(scope="module")
def medium_aclimdb(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("medium"), aclimdb_files(150))


class Trainer:
    """A trainer process whose stderr lines are read as they come."""

    def __init__(self, *flags: str, env: dict[str, str] | None = None,
                 preexec: list[str] | None = None, pause_at: str | None = None) -> None:
        command = [*(preexec or []), sys.executable, "-m", "trainer.main", *flags]
        env = {**(env or {}), **({PAUSE_ENV: pause_at} if pause_at else {})}
        self.process = subprocess.Popen(command, cwd=REPO, env=trainer_env(**env),
                                        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float = 240) -> str:
        """Returns the first line holding ``text``; fails if the process ends first."""
        for line in self.lines:
            if text in line:
                return line
        while True:
            line = self._queue.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"ended before {text!r}:\n{self.stderr[-3000:]}")
            self.lines.append(line)
            if text in line:
                return line

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def finish(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout=timeout)
        while (line := self._queue.get(timeout=30)) is not None:
            self.lines.append(line)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def last_line(self) -> str:
        return self.lines[-1].strip() if self.lines else ""


def run(*flags: str, **kwargs) -> Trainer:
    trainer = Trainer(*flags, **kwargs)
    trainer.finish()
    return trainer


def flags_for(data: Path, model_dir: Path, *extra: str) -> list[str]:
    return [f"--data_path={data}", f"--model_dir={model_dir}", *FLAGS, *extra]


def assert_one_line(trainer: Trainer, code: int, *needles: str) -> None:
    assert trainer.process.returncode == code, trainer.stderr[-3000:]
    assert "Traceback" not in trainer.stderr, trainer.stderr[-3000:]
    for needle in needles:
        assert needle in trainer.last_line(), trainer.last_line()


def metrics(model_dir: Path) -> dict:
    return json.loads((model_dir / "metrics.json").read_text())


# --- One owner ----------------------------------------------------------------------------

def test_a_second_trainer_on_a_held_folder_stops_at_once_and_a_dead_holder_is_replaced(
        medium_aclimdb, tmp_path):
    model_dir = tmp_path / "run"
    first = Trainer(*flags_for(medium_aclimdb, model_dir), pause_at="evaluating")
    first.wait_for("paused at")  # It holds the folder until it is killed.
    second = run(*flags_for(medium_aclimdb, model_dir))
    assert_one_line(second, 2, "is in use by another run", f"pid {first.process.pid}")
    assert "data:" not in second.stderr  # Refused before reading anything.
    first.process.kill()  # A holder that dies without a word leaves its lock file behind.
    first.finish()
    third = run(*flags_for(medium_aclimdb, model_dir))
    assert third.process.returncode == 0, third.stderr[-3000:]
    assert f"pid {first.process.pid}" in third.stderr and "taking over" in third.stderr


# --- One meaning of resume ----------------------------------------------------------------

def test_resume_refuses_what_would_mix_states_and_takes_what_is_safe(medium_aclimdb,
                                                                     tmp_path):
    model_dir = tmp_path / "run"
    base = flags_for(medium_aclimdb, model_dir)
    first = Trainer(*base)
    first.wait_for("epoch 1/2 | step 3/")
    first.signal(signal.SIGTERM)
    assert first.finish() == 75, first.stderr[-3000:]

    for changed, needle in (("--batch_size=16", "--batch_size: 8 -> 16"),
                            ("--lstm_units=50", "--lstm_units: 100 -> 50"),
                            ("--vocab_size=500", "--vocab_size: 10000 -> 500"),
                            ("--truncating=post", "--truncating: 'pre' -> 'post'")):
        refused = run(*base, changed)
        assert_one_line(refused, 2, needle, "--overwrite", "new --model_dir")
        assert "data:" not in refused.stderr  # Refused before the data is read.
    # A run from before --truncating cut its reviews on the padding side (post).
    manifest_path = model_dir / "manifest.json"
    written = manifest_path.read_text()
    older = json.loads(written)
    del older["state"]["truncating"]
    manifest_path.write_text(json.dumps(older))
    assert_one_line(run(*base), 2, "--truncating: 'post' -> 'pre'", "--overwrite")
    manifest_path.write_text(written)
    other_data = write_tree(tmp_path / "other", aclimdb_files(140))
    refused = run(*flags_for(other_data, model_dir))
    assert_one_line(refused, 2, "data_fingerprint", "--overwrite")

    resumed = run(*base, "--learning_rate=0.0005", "--epochs=1")
    assert resumed.process.returncode == 0, resumed.stderr[-3000:]
    assert "--learning_rate changed from 0.001 to 0.0005: training goes on with 0.0005" in (
        resumed.stderr)
    assert "--epochs changed from 2 to 1" in resumed.stderr
    # The default cosine is rebuilt from this command: at most the new peak.
    rates = [float(line.split("train/learning_rate ")[1].split()[0])
             for line in resumed.stderr.splitlines() if "train/learning_rate" in line]
    assert rates and all(rate <= 0.0005 for rate in rates), rates
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["attempts"][-1]["changed"]["learning_rate"] == [0.001, 0.0005]
    assert manifest["attempts"][-1]["resumed_from"].endswith("ckpt-1")
    assert set(manifest["versions"]) == {"trainer", "python", "tensorflow", "keras"}


def test_overwrite_starts_a_run_once_and_its_restart_resumes_it(medium_aclimdb, tmp_path):
    model_dir = tmp_path / "run"
    base = flags_for(medium_aclimdb, model_dir, "--epochs=1")
    assert run(*base).process.returncode == 0
    old_steps = metrics(model_dir)["train_steps"]

    again = Trainer(*base, "--epochs=2", "--overwrite")
    again.wait_for("epoch 1/2 | step 3/")
    assert not (model_dir / "metrics.json").exists()  # Removed first: never the old result.
    again.signal(signal.SIGTERM)
    assert again.finish() == 75

    # A launcher restarts the same command, --overwrite included: the new run resumes.
    restarted = run(*base, "--epochs=2", "--overwrite")
    assert restarted.process.returncode == 0, restarted.stderr[-3000:]
    assert "resuming the run --overwrite started" in restarted.stderr
    assert "resuming from" in restarted.stderr
    assert metrics(model_dir)["train_steps"] == 2 * old_steps


def test_a_cut_metrics_json_is_not_a_finished_run(medium_aclimdb, tmp_path):
    model_dir = tmp_path / "run"
    base = flags_for(medium_aclimdb, model_dir, "--epochs=1")
    assert run(*base).process.returncode == 0
    text = (model_dir / "metrics.json").read_text()
    (model_dir / "metrics.json").write_text(text[:len(text) // 2])
    again = run(*base)
    assert again.process.returncode == 0, again.stderr[-3000:]
    assert "not valid JSON" in again.stderr and "resuming from" in again.stderr
    assert "epoch 1/1 | step" not in again.stderr  # Nothing trained again: evaluated, written.
    assert metrics(model_dir)["epochs_completed"] == 1


# --- Every signal answered ----------------------------------------------------------------

# Moments inside training are chosen by progress lines; the stages around it are reached
# for sure through $TRAINER_PAUSE_AT, where the trainer says it waits for a signal.
@pytest.mark.parametrize("pause_at, moment, signum, code, needle", [
    ("data read", "paused at", signal.SIGTERM, 75, "preempted: stopped by SIGTERM while starting"),
    (None, "epoch 1/2 | step 3/", signal.SIGINT, 130,
     "interrupted: stopped by Ctrl-C (SIGINT) at step"),
    (None, "epoch 2/2 | step 2/", signal.SIGTERM, 75, "preempted: stopped by SIGTERM at step"),
    ("evaluating", "paused at", signal.SIGTERM, 75, "during the final evaluation"),
])
def test_a_signal_at_each_stage_ends_in_one_line_and_the_same_command_resumes(
        medium_aclimdb, tmp_path, pause_at, moment, signum, code, needle):
    model_dir = tmp_path / "run"
    trainer = Trainer(*flags_for(medium_aclimdb, model_dir), pause_at=pause_at)
    trainer.wait_for(moment)
    trainer.signal(signum)
    trainer.finish()
    assert_one_line(trainer, code, needle)
    assert not (model_dir / "metrics.json").exists()
    resumed = run(*flags_for(medium_aclimdb, model_dir))
    assert resumed.process.returncode == 0, resumed.stderr[-3000:]
    assert metrics(model_dir)["epochs_completed"] == 2
    if "at step" in needle:  # Saved mid-training: the finished steps are not trained again.
        step = int(trainer.last_line().split(" at step ")[1].split(";")[0])
        assert f"step {step}" in resumed.wait_for("resuming from")


def test_a_signal_while_writing_outputs_lets_them_finish(medium_aclimdb, tmp_path):
    model_dir = tmp_path / "run"
    trainer = Trainer(*flags_for(medium_aclimdb, model_dir), pause_at="writing outputs")
    trainer.wait_for("paused at")
    trainer.signal(signal.SIGTERM)
    assert trainer.finish() == 0, trainer.stderr[-3000:]
    assert "finishing the outputs first" in trainer.stderr
    assert metrics(model_dir)["epochs_completed"] == 2


def test_a_second_signal_stops_at_once_saying_what_was_not_saved(medium_aclimdb, tmp_path):
    model_dir = tmp_path / "run"
    # Paused where the first signal is deferred (the outputs would be finished), waiting
    # for a second one: the second one is sure to land while the first is being honoured.
    trainer = Trainer(*flags_for(medium_aclimdb, model_dir), pause_at="writing outputs",
                      env={PAUSE_SIGNALS_ENV: "2"})
    trainer.wait_for("paused at")
    trainer.signal(signal.SIGTERM)
    trainer.wait_for("a second one stops at once")
    trainer.signal(signal.SIGTERM)
    trainer.finish()
    assert trainer.process.returncode == 75, trainer.stderr[-3000:]
    assert "Traceback" not in trainer.stderr
    assert trainer.last_line().startswith("preempted: stopped")
    assert "stopped at once by a second SIGTERM while writing the outputs" in trainer.last_line()
    assert not (model_dir / "metrics.json").exists()  # Not marked done: the rerun writes it.


# --- Divergence ---------------------------------------------------------------------------

@pytest.mark.parametrize("rate", ["1e30", "3e38"])
def test_divergence_stops_and_the_kept_checkpoint_lets_a_lower_rate_recover(
        medium_aclimdb, tmp_path, rate):
    model_dir = tmp_path / "run"
    base = flags_for(medium_aclimdb, model_dir, "--checkpoint_every_steps=1", "--clip_norm=0")
    diverged = run(*base, f"--learning_rate={rate}")
    assert_one_line(diverged, 1, "error: training loss", "Try a lower --learning_rate")
    assert not (model_dir / "metrics.json").exists()
    recovered = run(*base, "--learning_rate=0.001")
    assert recovered.process.returncode == 0, recovered.stderr[-3000:]
    result = metrics(model_dir)
    assert result["test_loss"] < 1.0  # Chance is 0.69: no exploded weights were resumed.


# --- Bad folders, before any data is read -------------------------------------------------

def test_a_model_dir_that_is_a_file(medium_aclimdb, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    trainer = run(*flags_for(medium_aclimdb, path))
    assert_one_line(trainer, 2, f"--model_dir={path} is a file")


def test_a_folder_this_user_may_not_write(medium_aclimdb):
    # Tests run as root, which writes anywhere: the trainer runs without the capabilities
    # that let root ignore permissions, so the folder's mode is checked as for anyone else.
    # (Running as the user nobody is not possible here: the venv's Python is under /root.)
    if os.geteuid() != 0:
        pytest.skip("the folder below is read-only for this user already; covered elsewhere")
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        os.chmod(folder, 0o555)
        trainer = run(*flags_for(medium_aclimdb, Path(folder) / "run"),
                      preexec=["setpriv", "--bounding-set=-dac_override,-dac_read_search"])
        assert_one_line(trainer, 2, "is not writable", "Permission denied")
        assert "data:" not in trainer.stderr


def test_an_unwritable_aip_model_dir(medium_aclimdb, tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    flags = [f"--data_path={medium_aclimdb}", *FLAGS]
    trainer = run(*flags, env={"AIP_MODEL_DIR": f"{path}/model"})
    assert_one_line(trainer, 2, "--model_dir=", "not writable")


def test_a_gs_folder_without_network(medium_aclimdb):
    trainer = run(*flags_for(medium_aclimdb, "gs://no-such-bucket-for-imdb-tests/run"))
    assert_one_line(trainer, 2, "gs://no-such-bucket-for-imdb-tests/run")
    assert "data:" not in trainer.stderr


@contextlib.contextmanager
def small_disk(tmp_path: Path, megabytes: int) -> Iterator[Path]:
    mount = tmp_path / f"disk-{megabytes}m"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs",
                           str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a small file system here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_disk_without_room_for_a_run(medium_aclimdb, tmp_path):
    with small_disk(tmp_path, 4) as disk:
        trainer = run(*flags_for(medium_aclimdb, disk / "run"))
        assert_one_line(trainer, 2, "MB free", "free some space")
        assert "data:" not in trainer.stderr


def test_a_disk_that_fills_while_checkpointing(medium_aclimdb, tmp_path):
    with small_disk(tmp_path, 160) as disk:
        trainer = Trainer(*flags_for(medium_aclimdb, disk / "run", "--checkpoint_every_steps=1"))
        trainer.wait_for("epoch 1/2 | step 2/")
        subprocess.run(["dd", "if=/dev/zero", f"of={disk}/filler", "bs=1M", "count=200"],
                       capture_output=True, check=False)
        trainer.finish()
        assert_one_line(trainer, 2, "could not write a checkpoint", "free some space")
