"""Every file a run writes, written to a real file system that is full: one line, exit 2.

Each test mounts a small tmpfs, fills it to its last byte, and calls the code
the trainer calls to write that file (the trainer's own writers, not copies).
The error it raises is what ``trainer.main`` turns into the run's last line:
it must name the folder whose disk is full, exit 2, and leave no temporary
file taking space. ``tests/test_rundir.py`` fills a disk under a real trainer
at chosen moments (checkpoints, the best epoch, TensorBoard, the outputs, the
save a SIGTERM asks for); this file covers each writer one by one.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import small_disk
from trainer import data, export, model, rundir, summaries
from trainer.config import Config
from trainer.errors import EXIT_USAGE, exit_code_and_line

HISTORY = [{"epoch": 1, "train/loss": 0.6, "train/accuracy": 0.6, "val/loss": 0.5,
            "val/accuracy": 0.7},
           {"epoch": 2, "train/loss": 0.4, "train/accuracy": 0.8, "val/loss": 0.45,
            "val/accuracy": 0.75}]


@contextlib.contextmanager
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs holding an empty ``run/`` folder, filled to its last byte by a file."""
    with small_disk(tmp_path) as mount:
        (mount / "run").mkdir()
        subprocess.run(["dd", "if=/dev/zero", f"of={mount}/filler", "bs=64k", "count=1000"],
                       capture_output=True, check=False)
        yield mount


def tiny_model(model_dir: Path) -> tuple[Config, keras.layers.TextVectorization, keras.Model]:
    config = Config(vocab_size=20, max_len=8, embedding_dim=4, lstm_units=3,
                    model_dir=str(model_dir))
    reviews = np.array(["a great film", "an awful film", "great", "awful"] * 3, dtype=object)
    train = data.Split(reviews, np.arange(len(reviews), dtype=np.int32) % 2)
    keras.utils.set_random_seed(0)
    return config, data.make_vectorizer(train, config), model.build(config)


def _metrics(run: Path) -> None:
    rundir.write_json(f"{run}/metrics.json", {"test_accuracy": 0.5, "history": HISTORY})


def _vocabulary(run: Path) -> None:
    rundir.write_atomically(f"{run}/vocab.txt", lambda f: f.write("\n".join(["", "[UNK]"]) + "\n"))


def _labels(run: Path) -> None:
    export.write_labels(str(run), ("negative", "positive"))


def _keras_model(run: Path) -> None:
    config, _, net = tiny_model(run)
    with rundir.renamed_into_place(f"{run}/model.keras", suffix=".keras") as temporary:
        export.serving_model(config, net, use_cudnn="auto").save(temporary)


def _export(run: Path) -> None:
    config, vectorizer, net = tiny_model(run)
    export.save(config, net, vectorizer)


def _curves(run: Path) -> None:
    with rundir.renamed_into_place(f"{run}/{summaries.CURVES_FILE}", suffix=".png") as curves:
        summaries.write_training_curves(HISTORY, curves)


def _event_file(run: Path) -> None:
    writer = tf.summary.create_file_writer(f"{run}/tensorboard")
    with writer.as_default():
        for step in range(50):
            tf.summary.text("model/summary", "x" * 4096, step=step)
    writer.close()


# What the trainer writes in a run folder, in write_outputs' order, and TensorBoard's files;
# the checkpoints' own one line is tests/test_checkpoints.py's.
@pytest.mark.parametrize("write, folder", [
    (_vocabulary, "run"), (_labels, "run"), (_keras_model, "run"), (_export, "run/export"),
    (_curves, "run"), (_metrics, "run"), (_event_file, "run/tensorboard"),
], ids=["vocab.txt", "labels.txt", "model.keras", "export", "curves", "metrics.json",
        "tensorboard"])
def test_each_output_on_a_full_disk_ends_in_one_line_naming_its_folder(
        tmp_path, write: Callable[[Path], None], folder: str):
    with full_disk(tmp_path) as disk:
        run = disk / "run"
        with pytest.raises(Exception) as raised:
            write(run)
        code, line = exit_code_and_line(raised.value, str(run))
        assert code == EXIT_USAGE
        assert line == (f"error: no space left on the disk of {disk}/{folder} (0 MB free); free "
                        "some space (or move the run to a bigger disk), then run the same "
                        "command to resume from the last complete checkpoint.")
        # Nothing half-written under its real name, and no temporary file keeps the space.
        names = [p.name for p in run.rglob("*")]
        assert not [name for name in names if ".tmp-" in name], names
        assert not {"metrics.json", "vocab.txt", "labels.txt", "model.keras",
                    summaries.CURVES_FILE} & set(names), names
        assert not list(run.glob("export/*")), names  # No half version left either.
