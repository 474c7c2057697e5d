"""benchmarks/gpu_check.py where it cannot run: a machine whose TensorFlow sees no GPU.

On a GPU machine ``launch/gpu.sh --check`` runs it for real; here it must stop at
once, with one line and its documented exit code, and write nothing.
"""

from __future__ import annotations

import subprocess
import sys

from benchmarks import gpu_check
from tests.conftest import REPO, trainer_env


def test_without_a_gpu_it_says_so_in_one_line_and_exits_3(tmp_path):
    out = tmp_path / "check"
    process = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", f"--output_dir={out}",
         "--data_path=/nonexistent.tar.gz"], cwd=REPO, capture_output=True, text=True,
        env=trainer_env(CUDA_VISIBLE_DEVICES=""), timeout=120, check=False)
    assert process.returncode == gpu_check.EXIT_NO_GPU == 3
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert lines == ["error: TensorFlow sees no GPU here, so there is nothing to check; run "
                     "this on an NVIDIA GPU machine with .[gpu] installed "
                     "(launch/gpu.sh --check)."], process.stderr
    assert process.stdout == ""
    assert not out.exists()  # no trainer run was started


def test_step_time_is_the_global_batch_over_examples_per_second():
    assert gpu_check.step_ms({"train_examples_per_sec": 3200.0,
                              "flags": {"batch_size": 64}}) == 20.0
    assert gpu_check.step_ms({"error": "exit 2"}) is None


def test_the_cudnn_op_is_found_in_a_profiler_trace(tmp_path):
    trace = tmp_path / "tensorboard" / "plugins" / "profile" / "2026_01_01" / "host.xplane.pb"
    trace.parent.mkdir(parents=True)
    trace.write_bytes(b"\x0a\x10MatMul\x12\x0bCudnnRNNV3")
    assert gpu_check.ran_cudnn(tmp_path)
    trace.write_bytes(b"\x0a\x10MatMul\x12\x05While")
    assert not gpu_check.ran_cudnn(tmp_path)
