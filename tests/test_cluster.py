"""Scale out and survive faults, end to end on CPU: replicas, workers, SIGTERM, dead workers.

Two replicas are MirroredStrategy over two logical CPU devices (--cpu_replicas=2);
two workers are two local processes with TF_CONFIG on free loopback ports.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, free_ports, trainer_env

# 576 training reviews (64 held out) of 64 tokens: 36 steps per epoch at batch 16. The
# reviews are synthetic (tests.conftest.small_aclimdb): what is tested is the cluster.
SMALL = ["--max_train_examples=640", "--max_test_examples=320", "--max_len=64",
         "--batch_size=16", "--epochs=2", "--early_stopping_patience=0", "--log_every_steps=4"]


class Group:
    """Worker processes of one local cluster, started with the same flags."""

    def __init__(self, model_dir: Path, flags: list[str], num_workers: int = 2,
                 start: tuple[int, ...] | None = None, attempt: int = 1) -> None:
        workers = [f"localhost:{port}" for port in free_ports(num_workers)]
        self.logs = [model_dir.parent / f"{model_dir.name}-{attempt}-worker{i}.log"
                     for i in range(num_workers)]
        self.processes: list[subprocess.Popen] = []
        self.tmp_dirs: list[Path] = []  # Each worker's TMPDIR.
        for i in (range(num_workers) if start is None else start):
            self.tmp_dirs.append(model_dir.parent / f"{model_dir.name}-tmp{i}")
            self.tmp_dirs[-1].mkdir(exist_ok=True)
            env = trainer_env(TMPDIR=str(self.tmp_dirs[-1]), TF_CONFIG=json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}))
            with self.logs[i].open("w") as log:
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-m", "trainer.main", "--strategy=multi_worker",
                     f"--model_dir={model_dir}", *flags],
                    cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))

    def wait_for(self, worker: int, text: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.logs[worker].read_text():
            assert time.monotonic() < deadline, f"no {text!r}:\n{self.tail(worker)}"
            assert self.processes[worker].poll() is None, f"exited:\n{self.tail(worker)}"
            time.sleep(0.2)

    def wait(self, timeout: float = 300) -> list[int]:
        """Exit codes of all workers; any still running after ``timeout`` are killed."""
        try:
            return [p.wait(timeout=timeout) for p in self.processes]
        except subprocess.TimeoutExpired:
            return [p.returncode for p in self.processes]
        finally:
            for p in self.processes:
                p.kill()
                p.wait()

    def tail(self, worker: int, lines: int = 25) -> str:
        return "\n".join(self.logs[worker].read_text().splitlines()[-lines:])


def final_lines(group: Group, worker: int) -> list[str]:
    """The one-line messages the trainer ends with (error:/preempted:)."""
    return [line for line in group.logs[worker].read_text().splitlines()
            if line.startswith(("error: ", "preempted: "))]


def weights(model_dir: Path) -> list[np.ndarray]:
    import keras

    return keras.saving.load_model(model_dir / "model.keras", compile=False).get_weights()


@pytest.mark.slow
def test_two_replicas_and_two_workers_match_one_device(run_trainer, small_aclimdb, tmp_path):
    # A clip norm below every step's gradient norm: clipping must not depend on replicas.
    # Several steps per call: length-bucketed batches change width from step to step, and
    # with the (default) dense embedding gradient every collective keeps its shape.
    flags = [f"--data_path={small_aclimdb}", *SMALL, "--epochs=1", "--clip_norm=0.01",
             "--steps_per_loop=4"]
    one = tmp_path / "one"
    assert run_trainer(*flags, f"--model_dir={one}").returncode == 0
    mirrored = tmp_path / "mirrored"
    process = run_trainer(*flags, f"--model_dir={mirrored}", "--cpu_replicas=2",
                          "--strategy=mirrored")
    assert process.returncode == 0, process.stderr[-3000:]
    workers = tmp_path / "workers"
    group = Group(workers, flags)
    assert group.wait() == [0, 0], group.tail(0) + group.tail(1)

    reference = json.loads((one / "metrics.json").read_text())
    assert reference["num_replicas"] == 1 and reference["train_steps"] == 36
    for run, strategy in ((mirrored, "mirrored"), (workers, "multi_worker")):
        metrics = json.loads((run / "metrics.json").read_text())
        assert (metrics["strategy"], metrics["num_replicas"]) == (strategy, 2)
        assert metrics["train_steps"] == reference["train_steps"]
        assert abs(metrics["test_accuracy"] - reference["test_accuracy"]) <= 0.01
        for got, want in zip(weights(run), weights(one), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-4)
    # Only the chief writes the outputs. Worker 1 wrote its checkpoints to a temporary
    # folder (imdb-worker1-*), removed at the end.
    assert not list(tmp_path.glob("workers/**/*worker1*"))
    assert [list(d.iterdir()) for d in group.tmp_dirs] == [[], []]


@pytest.mark.slow
def test_sigterm_to_one_worker_saves_on_all_and_the_group_resumes(small_aclimdb, tmp_path):
    flags = [f"--data_path={small_aclimdb}", *SMALL, "--epochs=3"]
    model_dir = tmp_path / "run"
    group = Group(model_dir, flags)
    group.wait_for(0, "epoch 2/3 | step ")
    group.processes[1].send_signal(signal.SIGTERM)  # Only the non-chief hears it.
    assert group.wait(timeout=120) == [75, 75], group.tail(0) + group.tail(1)
    stops = [final_lines(group, i) for i in (0, 1)]
    assert all(len(lines) == 1 and lines[0].startswith("preempted: stopped by SIGTERM at step")
               for lines in stops), stops
    step = stops[0][0].split(" at step ")[1].split(";")[0]
    assert stops[1][0].split(" at step ")[1].split(";")[0] == step  # The same step on both.
    assert 36 < int(step) < 108
    assert not (model_dir / "metrics.json").exists()

    again = Group(model_dir, flags, attempt=2)
    assert again.wait() == [0, 0], again.tail(0) + again.tail(1)
    resumed = [line for line in again.logs[0].read_text().splitlines() if "resuming from" in line]
    # The handler polls for the signal once a second: the save may land in epoch 2 or 3.
    assert len(resumed) == 1 and resumed[0].endswith(f" done, step {step}"), resumed
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert (metrics["epochs_completed"], metrics["train_steps"]) == (3, 108)


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_a_lost_worker_stops_the_other_with_one_line_and_the_group_resumes(small_aclimdb,
                                                                          tmp_path, how):
    """kill -9 closes its connections at once; a frozen worker only stops its heartbeats."""
    flags = [f"--data_path={small_aclimdb}", *SMALL, "--epochs=3", "--checkpoint_every_steps=8"]
    model_dir = tmp_path / "run"
    group = Group(model_dir, flags)
    group.wait_for(0, "epoch 2/3 | step ")
    group.processes[1].send_signal(how)
    start = time.monotonic()
    try:
        code = group.processes[0].wait(timeout=120)
    finally:
        group.wait(timeout=0.1)  # Kills what is left, the frozen worker included.
    assert code == 75, group.tail(0)
    assert time.monotonic() - start < 60
    lines = final_lines(group, 0)
    assert len(lines) == 1 and "lost contact with another worker" in lines[0], group.tail(0)
    assert "Start all of them again with the same command" in lines[0]
    assert "Traceback" not in group.logs[0].read_text()

    again = Group(model_dir, flags, attempt=2)
    assert again.wait() == [0, 0], again.tail(0) + again.tail(1)
    assert "resuming from" in again.logs[0].read_text()
    assert "epoch 1/3 done" not in again.logs[0].read_text()  # Not trained again.
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert (metrics["epochs_completed"], metrics["train_steps"]) == (3, 108)


@pytest.mark.slow
def test_a_worker_that_never_starts_stops_the_others_with_one_line(tiny_aclimdb, tmp_path):
    group = Group(tmp_path / "run", [f"--data_path={tiny_aclimdb}", "--cluster_timeout_secs=5"],
                  start=(0,))  # Worker 1 never comes: worker 0 leads, and used to wait forever.
    assert group.wait(timeout=90) == [75], group.tail(0)
    lines = final_lines(group, 0)
    assert len(lines) == 1, group.tail(0)
    assert lines[0].startswith("error: the cluster did not come together within "
                               "--cluster_timeout_secs=5: no word from worker 1. Start every "
                               "worker named in TF_CONFIG"), lines
