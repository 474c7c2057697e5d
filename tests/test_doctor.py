"""trainer/doctor.py: ``python -m trainer.doctor`` run as a user runs it, on this CPU machine."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import tensorflow as tf

from tests.conftest import REPO, trainer_env

pytestmark = pytest.mark.slow  # Each test starts TensorFlow in a new process.


def doctor(*flags: str, env: dict[str, str] | None = None,
           prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "trainer.doctor", *flags], cwd=REPO,
                          env=trainer_env(**(env or {})), capture_output=True, text=True,
                          timeout=120)


def test_reports_this_machine_and_the_default_lstm_kernel(tmp_path):
    process = doctor(f"--model_dir={tmp_path / 'new' / 'run'}")
    assert process.returncode == 0, process.stderr[-2000:]
    out = process.stdout
    assert f"TensorFlow  {tf.__version__}, Keras " in out
    assert f"CPUs        {os.cpu_count()} on this machine, {len(os.sched_getaffinity(0))} usable" \
        in out
    assert "GPUs: 0     (TensorFlow's physical devices: CPU:0)" in out
    assert "CUDA/cuDNN  this TensorFlow is a CPU-only build" in out
    assert "LSTM        LeanLSTM's fused BlockLSTM" in out
    assert "Intra-op    1 thread(s) per op" in out
    assert " 1 intra-op thread(s)), no GPU here" in out  # The pool the trainer would size.
    assert "TF_CONFIG   not set" in out
    assert f"model_dir   {tmp_path / 'new' / 'run'}: writable" in out
    assert not (tmp_path / "new").exists()  # Checked, not created.
    assert list(tmp_path.iterdir()) == []
    assert out.rstrip().endswith("OK: nothing here would stop the trainer at start-up.")


def test_names_keras_loop_and_the_tf_config_chief(tmp_path):
    with socket.socket() as s:  # A port free for this task's own address.
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tf_config = {"cluster": {"chief": ["chief-host:2222"],
                             "worker": [f"127.0.0.1:{port}", "worker-host:2222"]},
                 "task": {"type": "worker", "index": 0}, "environment": "cloud"}
    process = doctor("--nolean_lstm", f"--model_dir={tmp_path}",
                     env={"TF_CONFIG": json.dumps(tf_config)})
    assert process.returncode == 0, process.stderr[-2000:]
    assert "LSTM        Keras' generic loop" in process.stdout
    assert "Intra-op    TensorFlow's choice" in process.stdout
    assert (f"TF_CONFIG   3 task(s) (1 chief, 2 worker); chief: chief 0 at chief-host:2222; "
            f"this process: worker 0 at 127.0.0.1:{port}") in process.stdout
    assert "Strategy    multi_worker" in process.stdout


def test_require_gpu_without_a_gpu_exits_2_with_the_reason(tmp_path):
    process = doctor("--require_gpu", f"--model_dir={tmp_path}")
    assert process.returncode == 2
    assert "GPUs: 0" in process.stdout  # The report is still shown...
    # ...and the last line says why the trainer would stop.
    last = process.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: --require_gpu: TensorFlow sees 0 GPUs")
    assert "Traceback" not in process.stderr


@pytest.fixture
def folders_for_an_unprivileged_process() -> Iterator[Path]:
    """A folder outside pytest's root-only tmp, that a process without privileges can reach."""
    root = Path(tempfile.mkdtemp(prefix="imdb-doctor-test-"))
    root.chmod(0o755)
    yield root
    (root / "read-only").chmod(0o755)
    shutil.rmtree(root)


def test_an_unwritable_model_dir_is_reported(folders_for_an_unprivileged_process):
    # Root writes through any chmod, and user nobody cannot reach this venv's Python (under
    # /root), so the doctor runs as root stripped of every capability, whose writes the
    # folder's permissions do block.
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to run the doctor without privileges")
    drop = ("setpriv", "--bounding-set=-all", "--inh-caps=-all")
    read_only = folders_for_an_unprivileged_process / "read-only"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    process = doctor(f"--model_dir={read_only / 'run'}", prefix=drop)
    assert process.returncode == 2, process.stderr[-2000:]
    # The trainer's own check (rundir.check_local_folder), word for word.
    refusal = (f"--model_dir={read_only / 'run'} is not writable (Permission denied); pick a "
               "folder you can write, or fix its permissions.")
    assert f"model_dir   {read_only / 'run'}: REFUSED: {refusal}" in process.stdout
    assert process.stderr.rstrip().splitlines()[-1] == f"error: {refusal}"
    assert list(read_only.iterdir()) == []


def test_tensorflow_loads_after_the_flags_and_every_output_folder_is_checked(tmp_path):
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    process = doctor("--tf_log_level=0", f"--model_dir={tmp_path / 'run'}",
                     f"--checkpoint_dir={in_the_way}")
    assert process.returncode == 2, process.stderr[-2000:]
    # TensorFlow's own start-up lines, which only a level set before it loads lets through.
    assert "cpu_feature_guard" in process.stderr, process.stderr[-2000:]
    assert process.stderr.rstrip().splitlines()[-1] == (
        f"error: --checkpoint_dir={in_the_way} is a file, not a folder; give a folder path (it "
        "is created if missing).")
    assert sorted(tmp_path.iterdir()) == [in_the_way]  # run/ was checked, then removed.


def test_the_port_is_tried_only_where_the_trainer_starts_multi_worker(tmp_path):
    with socket.socket() as taken:  # Another program holds this task's port.
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        env = {"TF_CONFIG": json.dumps({"cluster": {"worker": [address, "127.0.0.1:1"]},
                                        "task": {"type": "worker", "index": 0}})}
        multi_worker = doctor(f"--model_dir={tmp_path}", env=env)
        mirrored = doctor("--strategy=mirrored", f"--model_dir={tmp_path}", env=env)
    assert multi_worker.returncode == 2, multi_worker.stderr[-2000:]
    assert multi_worker.stderr.rstrip().splitlines()[-1].startswith(
        f"error: TF_CONFIG: worker 0's address {address} cannot be used: port ")
    assert "TF_CONFIG   INVALID: TF_CONFIG: worker 0's address" in multi_worker.stdout
    # --strategy=mirrored never starts a gRPC server, so the trainer would not stop.
    assert mirrored.returncode == 0, mirrored.stderr[-2000:]
    assert "TF_CONFIG   2 task(s) (2 worker)" in mirrored.stdout
