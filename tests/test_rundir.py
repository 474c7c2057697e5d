"""A run folder you can trust, tried with real processes, real signals and real files.

Each test starts ``python -m trainer.main`` and chooses its moments by what the
trainer has printed (a progress line, a stage's first line), never by a clock.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, aclimdb_files, review_text, small_disk, trainer_env, write_tree
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
    # ... and from before --max_validation_examples held out the whole --validation_split.
    older = json.loads(written)
    del older["state"]["max_validation_examples"]
    manifest_path.write_text(json.dumps(older))
    assert_one_line(run(*base), 2, "--max_validation_examples: 0 -> 500", "--overwrite")
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


def class_folders(root: Path, names: tuple[str, str]) -> Path:
    """``root/<name>/<i>.txt``: 60 reviews a class, the same texts whatever the names are."""
    for name, label in zip(names, ("neg", "pos"), strict=True):
        (root / name).mkdir(parents=True)
        for i in range(60):
            (root / name / f"{i}.txt").write_text(review_text(label, i))
    return root


def test_a_finished_run_answers_for_its_own_data_and_settings_only(medium_aclimdb, tmp_path):
    model_dir = tmp_path / "run"
    base = flags_for(medium_aclimdb, model_dir, "--epochs=1")
    assert run(*base).process.returncode == 0
    kept = {name: (model_dir / name).read_bytes() for name in ("metrics.json", "labels.txt")}

    same = run(*base)  # A supervisor restarting the finished command.
    assert_one_line(same, 0, "holds a finished run", "not training it again", "--overwrite")
    assert "no effect" not in same.last_line() and "| step" not in same.stderr

    flags_only = run(*base, "--max_len=32")  # Refused before the data is read.
    assert_one_line(flags_only, 2, "holds a finished run with other settings",
                    "--max_len: 24 -> 32", "--overwrite", "new --model_dir")
    assert "data:" not in flags_only.stderr
    other_file = write_tree(tmp_path / "other", aclimdb_files(140))
    other_data = run(*flags_for(other_file, model_dir, "--epochs=1"))
    assert_one_line(other_data, 2, "holds a finished run with other settings",
                    "data_fingerprint", "--overwrite")

    # Safe settings: nothing is trained again, so they take no effect; the line says so.
    safe = run(*base[:-1], "--epochs=3", "--learning_rate=0.0005")
    assert_one_line(safe, 0, "holds a finished run", "--epochs=3 (the run's: 1)",
                    "--learning_rate=0.0005 (the run's: 0.001)", "take no effect", "--overwrite")
    assert "| step" not in safe.stderr
    for name, content in kept.items():  # The old result stands, untouched.
        assert (model_dir / name).read_bytes() == content, name

    # Other labels, same texts and ids (the data's fingerprint is the same): refused too.
    named = class_folders(tmp_path / "named", ("bad", "good"))
    folder_run = tmp_path / "folders"
    common = ("--batch_size=8", "--max_len=24", "--epochs=1", "--early_stopping_patience=0")
    assert run(f"--data_path={named}", f"--model_dir={folder_run}", *common).process.returncode == 0
    renamed = class_folders(tmp_path / "renamed", ("bad", "great"))
    refused = run(f"--data_path={renamed}", f"--model_dir={folder_run}", *common)
    assert_one_line(refused, 2, "holds a finished run with other settings",
                    "class_names: ['bad', 'good'] -> ['bad', 'great']")
    assert (folder_run / "labels.txt").read_text() == "bad\ngood\n"


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


def test_a_second_ctrl_c_stops_at_once_saying_what_was_not_saved(medium_aclimdb, tmp_path):
    model_dir = tmp_path / "run"
    # Paused where the first signal is deferred (the outputs would be finished), waiting
    # for a second one: the second one is sure to land while the first is being honoured.
    trainer = Trainer(*flags_for(medium_aclimdb, model_dir), pause_at="writing outputs",
                      env={PAUSE_SIGNALS_ENV: "2"})
    trainer.wait_for("paused at")
    trainer.signal(signal.SIGINT)
    trainer.wait_for("a second Ctrl-C stops at once")
    trainer.signal(signal.SIGINT)
    trainer.finish()
    assert_one_line(trainer, 130, "interrupted: stopped at once by a second Ctrl-C (SIGINT) "
                                  "while writing the outputs")
    assert not (model_dir / "metrics.json").exists()  # Not marked done: the rerun writes it.


def ignores(pid: int, signum: int) -> bool:
    """Whether the process ``pid`` ignores ``signum`` (``SigIgn`` in /proc/<pid>/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("SigIgn:")), 16)
    return bool(mask >> (signum - 1) & 1)


def sigterm_in_training(trainer: Trainer) -> None:
    trainer.wait_for("epoch 1/2 | step 3/")
    trainer.signal(signal.SIGTERM)


# A platform repeats SIGTERM (systemd at shutdown after the VM's shutdown script): each
# moment the first one's handling is under way, reached for sure through $TRAINER_PAUSE_AT.
@pytest.mark.parametrize("pause_at, first, code, needle", [
    # The step the first SIGTERM stops at is the one running when it lands (3 or later).
    ("saving", sigterm_in_training, 75, "preempted: stopped by SIGTERM at step"),
    ("writing outputs", None, 0, "they are complete, so the run ends as finished"),
    ("ending", sigterm_in_training, 75, "preempted: stopped by SIGTERM at step"),
], ids=["saving", "writing", "ending"])
def test_a_repeated_sigterm_never_cuts_short_what_the_first_started(
        medium_aclimdb, tmp_path, pause_at, first, code, needle):
    model_dir = tmp_path / "run"
    trainer = Trainer(*flags_for(medium_aclimdb, model_dir), pause_at=pause_at)
    if first is not None:
        first(trainer)
    trainer.wait_for("paused at")
    if pause_at == "writing outputs":  # The first one comes here, then the repeat.
        trainer.signal(signal.SIGTERM)
        trainer.wait_for("finishing the outputs first")
    trainer.signal(signal.SIGTERM)
    if pause_at == "ending":
        # The last line is decided: SIGTERM is ignored by the kernel, not caught, so it stays
        # ignored while Python shuts down (it puts the default action back on the signals it
        # catches, and TensorFlow's teardown takes a second, where a SIGTERM meant 143).
        assert ignores(trainer.process.pid, signal.SIGTERM)
        trainer.signal(signal.SIGTERM)
        trainer.signal(signal.SIGINT)  # Ends the pause (absorbed at this stage too) ...
        while trainer.process.poll() is None:  # ... and SIGTERMs all the way to the exit.
            trainer.signal(signal.SIGTERM)
            time.sleep(0.005)
    else:
        trainer.wait_for("SIGTERM again while")
    trainer.finish()
    assert_one_line(trainer, code, needle)
    if first is not None:
        assert "; saved ckpt-1 in " in trainer.last_line()
    if pause_at == "saving":
        assert "ignored; the save goes on, then the run stops" in trainer.stderr
        stopped_at = re.search(r"at step (\d+);", trainer.last_line())[1]
        resumed = run(*flags_for(medium_aclimdb, model_dir))
        assert resumed.process.returncode == 0, resumed.stderr[-3000:]
        assert f"step {stopped_at}" in resumed.wait_for("resuming from")
    if pause_at == "writing outputs":
        assert metrics(model_dir)["epochs_completed"] == 2


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



def test_a_disk_without_room_for_a_run(medium_aclimdb, tmp_path):
    with small_disk(tmp_path, 4) as disk:
        trainer = run(*flags_for(medium_aclimdb, disk / "run"))
        assert_one_line(trainer, 2, "MB free", "free some space")
        assert "data:" not in trainer.stderr


def fill(disk: Path) -> Path:
    """Fills ``disk`` to its last byte with one file; returns it (remove it to free the disk)."""
    filler = disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=400"],
                   capture_output=True, check=False)
    return filler


def leftovers(folder: Path) -> list[str]:
    """What a failed write could leave: ``.<name>.tmp-<pid>`` files or folders, ``*_temp``."""
    return [str(p) for p in folder.rglob("*")
            if ".tmp-" in p.name or p.name.endswith("_temp") or ".tempstate" in p.name]


def test_a_disk_that_fills_while_checkpointing(medium_aclimdb, tmp_path):
    with small_disk(tmp_path, 160) as disk:
        # TensorBoard's files elsewhere: the next write after the disk fills is a checkpoint.
        base = flags_for(medium_aclimdb, disk / "run", "--checkpoint_every_steps=1",
                         f"--tensorboard_dir={tmp_path / 'tb'}")
        trainer = Trainer(*base)
        trainer.wait_for("epoch 1/2 | step 2/")
        filler = fill(disk)
        trainer.finish()
        assert_one_line(trainer, 2, f"could not write a checkpoint to {disk}/run/checkpoints",
                        "free some space")
        filler.unlink()
        resumed = run(*base)
        assert resumed.process.returncode == 0, resumed.stderr[-3000:]
        assert metrics(disk / "run")["epochs_completed"] == 2


def _fill_in_training(trainer: Trainer, disk: Path) -> None:
    trainer.wait_for("epoch 1/2 | step 2/")
    fill(disk)


def _fill_at_the_pause(trainer: Trainer, disk: Path) -> None:
    trainer.wait_for("paused at")
    fill(disk)
    trainer.signal(signal.SIGTERM)  # Deferred while writing: the outputs are attempted.


def _fill_while_saving_for_a_sigterm(trainer: Trainer, disk: Path) -> None:
    trainer.wait_for("epoch 1/2 | step 3/")
    trainer.signal(signal.SIGTERM)
    trainer.wait_for("paused at saving")
    fill(disk)
    trainer.signal(signal.SIGTERM)  # Repeated: ignored, the save is attempted.


# Every write a run makes after its start-up check, on a disk that fills at that moment:
# the best epoch's weights, TensorBoard's event files, the outputs (vocab.txt comes first;
# export/, model.keras, the curves and metrics.json take the same one-line path, each tried
# on a full disk in tests/test_disk_full.py), and the save a SIGTERM asks for.
@pytest.mark.parametrize("case, extra, pause_at, moment, needle", [
    ("best", ("--early_stopping_patience=1", "--checkpoint_every_steps=0"), None,
     _fill_in_training, "could not write a checkpoint to {disk}/run/checkpoints/best: no space"),
    ("tensorboard", (), None, _fill_in_training, "no space left on the disk of {disk}/tb ("),
    ("outputs", (), "writing outputs", _fill_at_the_pause,
     "no space left on the disk of {disk}/run ("),
    ("preemption", (), "saving", _fill_while_saving_for_a_sigterm,
     "could not write a checkpoint to {disk}/run/checkpoints: no space"),
], ids=["best", "tensorboard", "outputs", "preemption"])
def test_a_disk_that_fills_during_a_run_ends_in_one_line_naming_it(
        medium_aclimdb, tmp_path, case, extra, pause_at, moment, needle):
    with small_disk(tmp_path, 160) as disk:
        # One folder on the small disk, so that the write tried is the one this case is about.
        model_dir = tmp_path / "run" if case == "tensorboard" else disk / "run"
        tensorboard = disk / "tb" if case == "tensorboard" else tmp_path / "tb"
        base = flags_for(medium_aclimdb, model_dir, *extra, f"--tensorboard_dir={tensorboard}")
        trainer = Trainer(*base, pause_at=pause_at)
        moment(trainer, disk)
        trainer.finish()
        assert_one_line(trainer, 2, needle.format(disk=disk), "free some space",
                        "run the same command to resume from the last complete checkpoint")
        assert not leftovers(disk), leftovers(disk)  # What the failed write took is given back.
        assert not (model_dir / "metrics.json").exists()
        (disk / "filler").unlink()
        resumed = run(*base)  # Room again: the same command resumes and finishes.
        assert resumed.process.returncode == 0, resumed.stderr[-3000:]
        assert metrics(model_dir)["epochs_completed"] == 2
