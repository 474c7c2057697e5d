"""launch/Dockerfile against the pinned TensorFlow: CUDA and cuDNN, libraries, PID 1, user.

No Docker engine is needed: the Dockerfile is read as text, TensorFlow's own CUDA
requirements come from the installed wheel's metadata (its ``and-cuda`` extra), and
the container's entrypoint script runs here with a fake ``python`` (tests/fakebin).
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "launch" / "Dockerfile"
ENTRYPOINT = REPO / "launch" / "container_entrypoint.sh"
FAKE_TOOL = Path(__file__).resolve().parent / "fakebin" / "fake_tool.py"

# What the GPU images people reach for ship. tensorflow/tensorflow:2.15.0-gpu to
# 2.21.0-gpu install libcudnn8 8.9 for CUDA 12.2 (tensorflow/build#221).
TENSORFLOW_GPU_IMAGES = {f"2.{minor}": ("12.2", "8.9") for minor in range(15, 22)}


def dockerfile_args(text: str) -> dict[str, str]:
    """The ARG defaults of the Dockerfile, with ${NAME} references resolved in order."""
    args: dict[str, str] = {}
    for name, default in re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.MULTILINE):
        args[name] = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], default)
    return args


def base_image(text: str) -> str:
    """The image the Dockerfile builds FROM, with build arguments at their defaults."""
    (source,) = re.findall(r"^FROM (\S+)", text, flags=re.MULTILINE)
    args = dockerfile_args(text)
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], source)


def image_cuda(image: str) -> tuple[str, str | None] | None:
    """(CUDA, cuDNN) that a known CUDA base image ships; None for a base without CUDA."""
    name, _, tag = image.partition(":")
    if name == "tensorflow/tensorflow" and tag.endswith("-gpu"):
        minor = ".".join(tag.split(".")[:2])
        if minor not in TENSORFLOW_GPU_IMAGES:
            pytest.fail(f"unknown CUDA/cuDNN of {image}: add it to TENSORFLOW_GPU_IMAGES")
        return TENSORFLOW_GPU_IMAGES[minor]
    if name == "nvidia/cuda":
        cuda = re.match(r"\d+\.\d+", tag)[0]
        cudnn = re.search(r"cudnn(\d*)", tag)
        # Tags without a number ("-cudnn-") carry some cuDNN 9.x: too vague to pass.
        return cuda, (cudnn[1] or "9.0") if cudnn else None
    return None


def tensorflow_cuda_minimums() -> dict[str, Version]:
    """The lowest version of each nvidia-* wheel the installed TensorFlow's and-cuda asks for."""
    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            requires = importlib.metadata.requires(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        minimums = {}
        for line in requires:
            req = Requirement(line)
            if req.marker and req.marker.evaluate({"extra": "and-cuda"}) and \
                    not req.marker.evaluate({"extra": ""}):
                lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
                minimums[req.name] = min(lows) if lows else Version("0")
        return minimums
    pytest.skip("TensorFlow is not installed here")


def problems_with_base(image: str, extras: str, minimums: dict[str, Version]) -> list[str]:
    """Why ``image`` (installing ``.[extras]``) could not run this TensorFlow on a GPU."""
    shipped = image_cuda(image)
    if shipped is None:  # No CUDA in the base: the GPU extra must bring all of it.
        return [] if extras == "gpu" else [f"{image} has no CUDA and EXTRAS={extras!r} "
                                           "installs none"]
    cuda, cudnn = shipped
    needs = {"CUDA": (cuda, minimums["nvidia-cuda-runtime-cu12"]),
             "cuDNN": (cudnn, minimums["nvidia-cudnn-cu12"])}
    found = []
    for what, (have, need) in needs.items():
        need_short = Version(".".join(str(p) for p in need.release[:2]))
        if have is None or Version(have) < need_short:
            found.append(f"{image} ships {what} {have}, TensorFlow needs {need_short}+")
    return found


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def test_setup_gpu_extra_is_tensorflow_and_cuda():
    tree = ast.parse((REPO / "setup.py").read_text())
    (extras,) = [k.value for node in ast.walk(tree) if isinstance(node, ast.Call)
                 for k in node.keywords if k.arg == "extras_require"]
    gpu = ast.literal_eval(extras)["gpu"]
    assert [Requirement(r).extras for r in gpu if r.startswith("tensorflow")] == [{"and-cuda"}]


def test_tensorflow_and_cuda_brings_cudnn_9_3_and_cuda_12_5():
    minimums = tensorflow_cuda_minimums()
    assert minimums["nvidia-cudnn-cu12"] >= Version("9.3")
    assert minimums["nvidia-cuda-runtime-cu12"] >= Version("12.5")


def test_base_image_cuda_and_cudnn_are_new_enough(dockerfile):
    image = base_image(dockerfile)
    extras = dockerfile_args(dockerfile).get("EXTRAS")
    assert problems_with_base(image, extras, tensorflow_cuda_minimums()) == []
    assert image.startswith("python:3.11-slim")
    assert re.search(r'pip install "/app\[\$\{EXTRAS\}\]"', dockerfile)


@pytest.mark.parametrize(("image", "needle"), [
    ("tensorflow/tensorflow:2.21.0-gpu", "ships cuDNN 8.9, TensorFlow needs 9.3+"),
    ("nvidia/cuda:12.2.2-cudnn8-runtime-ubuntu22.04", "ships CUDA 12.2, TensorFlow needs 12.5+"),
    ("nvidia/cuda:12.5.1-runtime-ubuntu22.04", "ships cuDNN None"),
])
def test_the_check_refuses_bases_with_old_cuda_or_cudnn(image, needle):
    assert needle in " ".join(problems_with_base(image, "", tensorflow_cuda_minimums()))


def test_the_check_refuses_a_slim_base_without_the_gpu_extra():
    assert problems_with_base("python:3.11-slim", "cpu", tensorflow_cuda_minimums()) == [
        "python:3.11-slim has no CUDA and EXTRAS='cpu' installs none"]


def test_every_nvidia_wheel_library_folder_is_on_ld_library_path(dockerfile):
    env = dict(re.findall(r"(\w+)=(\S+?)(?: \\)?$", dockerfile, flags=re.MULTILINE))
    site = dockerfile_args(dockerfile)["PYTHON_VERSION"]
    root = env["NVIDIA_PIP_LIBS"].replace("${PYTHON_VERSION}", site)
    path = env["LD_LIBRARY_PATH"].replace("${NVIDIA_PIP_LIBS}", root).split(":")
    assert root == f"/usr/local/lib/python{site}/site-packages/nvidia"  # python:*-slim's
    # nvidia-cuda-runtime-cu12 installs site-packages/nvidia/cuda_runtime/lib, and so on.
    wanted = {f"{root}/{name.removeprefix('nvidia-').removesuffix('-cu12').replace('-', '_')}/lib"
              for name in tensorflow_cuda_minimums()}
    assert wanted and wanted <= set(path)


def test_tini_is_pid_1_and_the_trainer_runs_as_a_user(dockerfile):
    assert "apt-get install -y --no-install-recommends tini" in dockerfile
    (entrypoint,) = re.findall(r"^ENTRYPOINT (.+)$", dockerfile, flags=re.MULTILINE)
    assert json.loads(entrypoint) == ["tini", "-g", "--", "/app/launch/container_entrypoint.sh"]
    users = re.findall(r"^USER (\S+)$", dockerfile, flags=re.MULTILINE)
    assert users == ["trainer"] and "useradd --create-home --uid 1000 trainer" in dockerfile
    # USER comes after every RUN, so installing ran as root and training does not.
    assert dockerfile.rindex("\nRUN ") < dockerfile.index("\nUSER ")


def run_entrypoint(tmp_path: Path, *flags: str, **env: str) -> tuple[subprocess.Popen, list]:
    """Runs the entrypoint with a fake python; returns the process and the fake's calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(FAKE_TOOL)
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    proc = subprocess.Popen(["sh", str(ENTRYPOINT), *flags], env={
        **os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_LOG": str(log), **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.communicate(timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def test_entrypoint_runs_the_doctor_then_the_trainer_in_its_own_process(tmp_path):
    flags = ["--require_gpu", "--note=two words"]
    proc, calls = run_entrypoint(tmp_path, *flags)
    assert proc.returncode == 0
    assert [c["argv"] for c in calls] == [["-m", "trainer.doctor", *flags],
                                          ["-m", "trainer.main", *flags]]
    assert calls[1]["pid"] == proc.pid  # exec: what tini signals is the trainer itself


def test_entrypoint_stops_when_the_doctor_fails(tmp_path):
    proc, calls = run_entrypoint(tmp_path, "--require_gpu", FAKE_DOCTOR_RC="2")
    assert proc.returncode == 2
    assert [c["argv"][:2] for c in calls] == [["-m", "trainer.doctor"]]
