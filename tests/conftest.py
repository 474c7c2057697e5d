"""Shared fixtures: the real IMDB archive, tiny aclImdb trees, and running the trainer."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "data" / "aclImdb_v1_labeled.tar.gz"

# Words that carry the label, so a tiny model can learn something from tiny data.
_POSITIVE = "great wonderful superb loved brilliant moving best enjoyable"
_NEGATIVE = "awful boring worst terrible waste dull hated poor"
_NEUTRAL = "the film movie plot actor scene story director and a of it"


def review_text(label: str, index: int) -> str:
    """A deterministic review whose words lean towards ``label``."""
    cue = (_POSITIVE if label == "pos" else _NEGATIVE).split()
    neutral = _NEUTRAL.split()
    words = [neutral[(index * 7 + i) % len(neutral)] for i in range(12 + index % 9)]
    for i in range(3):
        words.insert((index + 5 * i) % len(words), cue[(index + i) % len(cue)])
    return " ".join(words).capitalize() + ".<br /><br />" + cue[index % len(cue)].upper() + "!"


def aclimdb_files(per_class: int = 12, unsup: bool = False,
                  repeat: int = 1) -> dict[str, bytes]:
    """{member name: bytes} of an aclImdb tree with per_class reviews per split and class.

    ``repeat`` writes each review's text that many times (about 20 tokens each). The
    test reviews are other reviews than the training ones (indices from
    ``max(100, per_class)``), as in a real split: accuracy on training texts
    measures memory, not what a run learned.
    """
    files = {"aclImdb/README": b"tiny test copy\n", "aclImdb/imdb.vocab": b"the\n"}
    test_from = max(100, per_class)
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            for i in range(per_class):
                rating = 8 if label == "pos" else 2
                text = " ".join([review_text(label, i + (test_from if split == "test" else 0))]
                                * repeat)
                files[f"aclImdb/{split}/{label}/{i}_{rating}.txt"] = text.encode()
    if unsup:
        files["aclImdb/train/unsup/0_0.txt"] = b"unlabeled review that must be skipped"
    return files


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root / "aclImdb"


def write_archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session")
def imdb_archive() -> str:
    """The real labeled IMDB archive: $IMDB_ARCHIVE (.ci/run sets it), else the shared copy."""
    return str(shared_file("IMDB_ARCHIVE", SHARED_ARCHIVE, "the real IMDB archive"))


def shared_file(variable: str, default: Path, what: str) -> Path:
    """``$variable``, else ``default``: a data file kept beside the repository.

    Missing, the tests that need it skip on a developer's machine, but fail under
    CI (``$CI`` set: CI has the file beside the repository) or when ``$variable``
    names a file that is not there: a skip would hide the break.
    """
    path = Path(os.environ.get(variable) or default)
    if not path.is_file():
        why = f"{what} is not at {path}"
        if os.environ.get("CI", "").lower() not in ("", "0", "false") or os.environ.get(variable):
            pytest.fail(f"{why}, and CI or ${variable} says it should be", pytrace=False)
        pytest.skip(f"{why}: set {variable} to run the tests that need it")
    return path


@pytest.fixture
def tiny_aclimdb(tmp_path: Path) -> Path:
    """An aclImdb folder with 12 reviews per split and class."""
    return write_tree(tmp_path / "tree", aclimdb_files())


@pytest.fixture(scope="session")
def small_aclimdb(tmp_path_factory) -> Path:
    """An aclImdb folder of 1,000 + 1,000 reviews of 60-100 tokens, written in a second.

    For runs that test faults, resumes and scale-out rather than accuracy: reading the
    real archive costs every trainer process several seconds (84 MB of gzip).
    """
    return write_tree(tmp_path_factory.mktemp("small_aclimdb"),
                      aclimdb_files(per_class=500, repeat=4))


@pytest.fixture
def tiny_archive(tmp_path: Path) -> Path:
    """An aclImdb .tar.gz like the official one (with train/unsup), 12 reviews per class."""
    return write_archive(tmp_path / "aclImdb_v1.tar.gz", aclimdb_files(unsup=True))


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on, held open together so the OS hands out distinct ones."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("localhost", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def trainer_env(**extra: str) -> dict[str, str]:
    """This process's environment for a trainer subprocess, plus ``extra``.

    A cluster or Vertex AI setting leaking in from the caller would change the run.
    """
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG" and not k.startswith("AIP_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="session")
def run_trainer() -> Callable[..., subprocess.CompletedProcess]:
    """Runs ``python -m trainer.main *flags`` in a subprocess; returns the finished process."""

    def run(*flags: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "trainer.main", *flags], cwd=REPO,
                              env=trainer_env(**(env or {})), capture_output=True, text=True,
                              timeout=timeout)

    return run


@pytest.fixture(scope="session")
def small_run(run_trainer, imdb_archive, tmp_path_factory) -> Path:
    """One small smoke run (2 epochs of 28 steps) that profiles steps 3 to 5.

    Shared by the export and summaries tests: a trainer run is the slow part.
    Its stderr is kept in ``stderr.txt`` beside the outputs.
    """
    model_dir = tmp_path_factory.mktemp("small") / "run"
    process = run_trainer("--smoke_test", f"--data_path={imdb_archive}",
                          f"--model_dir={model_dir}", "--max_train_examples=1000",
                          "--max_test_examples=400", "--epochs=2", "--max_len=64",
                          "--log_every_steps=5", "--profile_steps=3,5")
    assert process.returncode == 0, process.stderr[-3000:]
    (model_dir / "stderr.txt").write_text(process.stderr)
    return model_dir


@pytest.fixture(autouse=True)
def _absl_logs_reach_caplog():
    """Some tests build Keras models or exports that leave absl's verbosity above INFO;
    the tests that read log lines through caplog need each test to start at INFO."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    yield


@contextlib.contextmanager
def small_disk(tmp_path: Path, megabytes: int = 4) -> Iterator[Path]:
    """A real tmpfs of ``megabytes`` at ``tmp_path/disk-<N>m``; skipped where mount is refused."""
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
