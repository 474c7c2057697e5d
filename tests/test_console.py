"""What a person reads: a quiet start, grouped --help, clocked progress, the one-replica warning."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, trainer_env
from trainer import tf_log

# One xdist_group: this module's smoke run is run once, on one test process.
pytestmark = pytest.mark.xdist_group("console")

GROUPS = ("Presets:", "Data:", "Model:", "Training:", "Distribution:", "Outputs:")
TENSORFLOW_NOISE = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard")


def trainer(*flags: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.main", *flags], cwd=REPO,
                          env=trainer_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def mirrored_smoke_run(imdb_archive: str, tmp_path_factory) -> subprocess.CompletedProcess:
    """A real small smoke run under --strategy=mirrored on this one-CPU-device machine."""
    model_dir = tmp_path_factory.mktemp("console") / "run"
    process = trainer("--smoke_test", f"--data_path={imdb_archive}", "--max_train_examples=600",
                      "--max_test_examples=200", "--max_len=64", "--epochs=1",
                      "--log_every_steps=4", "--strategy=mirrored", f"--model_dir={model_dir}")
    assert process.returncode == 0, process.stderr[-3000:]
    return process


@pytest.mark.slow
def test_a_run_opens_without_tensorflows_start_up_noise(mirrored_smoke_run):
    for noise in TENSORFLOW_NOISE:
        assert noise not in mirrored_smoke_run.stderr, noise
    first = mirrored_smoke_run.stderr.splitlines()[0]
    # The first line is one of the project's (Python's absl format, a .py file), not C++'s.
    assert re.match(r"[IWE]\d{4} [\d:.]+ +\d+ \w+\.py:\d+\] ", first), first


@pytest.mark.slow
def test_mirrored_on_one_device_warns_with_the_fix(mirrored_smoke_run):
    warning = ("--strategy=mirrored sees one device here: it runs one replica; use "
               "--cpu_replicas=2 to try two replicas on a CPU, or a machine with several GPUs.")
    assert warning in mirrored_smoke_run.stderr
    assert "strategy mirrored with 1 replica(s)" in mirrored_smoke_run.stderr


@pytest.mark.slow
def test_progress_lines_carry_elapsed_time(mirrored_smoke_run):
    lines = [line for line in mirrored_smoke_run.stderr.splitlines() if "| step " in line]
    assert lines, mirrored_smoke_run.stderr[-3000:]
    for line in lines:
        assert re.search(r" \| elapsed \d+(s|m\d\ds)", line), line


@pytest.mark.slow
def test_tf_log_level_brings_tensorflows_own_lines_back(tmp_path: Path):
    # --require_gpu stops right after TensorFlow has loaded, before any data is read.
    process = trainer("--tf_log_level=0", "--require_gpu", f"--model_dir={tmp_path / 'run'}",
                      "--data_path=unused", timeout=120)
    assert process.returncode == 2, process.stderr[-2000:]
    assert any(noise in process.stderr for noise in TENSORFLOW_NOISE), process.stderr[-2000:]


def test_help_lists_the_projects_flags_first_in_their_groups():
    process = trainer("--help", timeout=60)
    out = process.stdout
    assert "--smoke_test" in out and "--data_path" in out and "--strategy" in out
    positions = [out.index(group) for group in GROUPS]
    assert positions == sorted(positions), "groups out of order"
    first_project = out.index("  --", positions[0])
    for foreign in ("logtostderr", "--verbosity", "pdb_post_mortem", "tensorflow."):
        assert foreign not in out[:first_project], foreign
    # Each flag sits in its group, with its help.
    data = out[positions[1]:positions[2]]
    assert "--data_path:" in data and "--strategy" not in data
    assert "--strategy:" in out[positions[4]:positions[5]]
    assert "--tf_log_level:" in out[positions[5]:]
    assert "(default: 'false')" in out[positions[0]:positions[1]]


def test_helpfull_still_lists_everything_absls_flags_included():
    out = trainer("--helpfull", timeout=60).stdout
    assert "--verbosity" in out and "logtostderr" in out
    assert out.index("Presets:") < out.index("logtostderr")


def test_a_bad_flag_is_one_line_before_tensorflow_loads():
    process = trainer("--tf_log_level=9", timeout=60)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [
        "error: flag --tf_log_level=9: 9 is not an integer in the range [0, 3] "
        "(see --helpfull)"]


def test_tensorflows_start_up_lines_are_kept_to_the_level_and_other_lines_pass():
    notice = b"WARNING: All log messages before absl::InitializeLog() is called are written\n"
    info = b"I0000 00:00:1796219753.611665   24515 port.cc:153] oneDNN custom operations\n"
    warning, error = b"W1202 13:41:23.7 1 x.cc:1] w\n", b"E1202 13:41:23.7 1 x.cc:1] e\n"
    python_warning = b"/x.py:3: UserWarning: something a user should see\n"
    lines = [notice, info, warning, error, python_warning]
    assert [line for line in lines if tf_log._kept(line, 2)] == [error, python_warning]
    assert [line for line in lines if tf_log._kept(line, 1)] == [warning, error, python_warning]
