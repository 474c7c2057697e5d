"""Checkpoint files made unreadable for real: bytes flipped, files cut, the index lost."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import tensorflow as tf

from tests.conftest import small_disk
from trainer import checkpoints
from trainer.errors import DiskFullError, UserError, exit_code_and_line


def _saved(directory: Path, count: int = 3) -> tuple[tf.train.Checkpoint, tf.Variable, list[str]]:
    """``count`` checkpoints of one variable, holding 1.0, 2.0, ... in turn."""
    variable = tf.Variable(tf.zeros([256]))
    state = tf.train.Checkpoint(v=variable)
    manager = tf.train.CheckpointManager(state, str(directory), max_to_keep=count,
                                         checkpoint_name=checkpoints.PREFIX)
    paths = []
    for value in range(1, count + 1):
        variable.assign(tf.fill([256], float(value)))
        paths.append(manager.save())
    variable.assign(tf.zeros([256]))
    return state, variable, paths


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_the_newest_set_it_aside_and_the_next_is_restored(tmp_path):
    state, variable, paths = _saved(tmp_path)
    _flip(Path(f"{paths[-1]}.data-00000-of-00001"), 100)
    restored = checkpoints.restore_newest(state, str(tmp_path), repair=True)
    assert restored == paths[-2]
    assert float(variable[0]) == 2.0
    # Set aside, not deleted, and no longer listed: the next run goes straight to ckpt-2.
    assert sorted(p.name for p in (tmp_path / checkpoints.UNREADABLE_DIR).iterdir()) == [
        "ckpt-3.data-00000-of-00001", "ckpt-3.index"]
    assert tf.train.latest_checkpoint(str(tmp_path)) == paths[-2]


def test_a_cut_index_file_is_set_aside_too(tmp_path):
    state, variable, paths = _saved(tmp_path)
    index = Path(f"{paths[-1]}.index")
    index.write_bytes(index.read_bytes()[:10])
    assert checkpoints.restore_newest(state, str(tmp_path), repair=True) == paths[-2]
    assert float(variable[0]) == 2.0


def test_a_worker_skips_an_unreadable_one_without_moving_files(tmp_path):
    state, _, paths = _saved(tmp_path)
    _flip(Path(f"{paths[-1]}.data-00000-of-00001"), 7)
    assert checkpoints.restore_newest(state, str(tmp_path), repair=False) == paths[-2]
    assert not (tmp_path / checkpoints.UNREADABLE_DIR).exists()


def test_none_readable_is_one_line_naming_the_files(tmp_path):
    state, _, paths = _saved(tmp_path, count=2)
    for path in paths:
        Path(f"{path}.data-00000-of-00001").write_bytes(b"")
    with pytest.raises(UserError) as error:
        checkpoints.restore_newest(state, str(tmp_path), repair=True)
    message = str(error.value)
    assert "\n" not in message
    assert "ckpt-1" in message and "ckpt-2" in message and "--overwrite" in message


def test_a_lost_index_is_rebuilt_from_the_files(tmp_path):
    state, variable, paths = _saved(tmp_path)
    (tmp_path / "checkpoint").unlink()
    assert checkpoints.restore_newest(state, str(tmp_path), repair=True) == paths[-1]
    assert float(variable[0]) == 3.0
    assert tf.train.latest_checkpoint(str(tmp_path)) == paths[-1]


def test_a_checkpoint_of_another_model_shape_is_refused_in_one_line(tmp_path):
    _saved(tmp_path)
    other = tf.train.Checkpoint(v=tf.Variable(tf.zeros([10])))
    with pytest.raises(UserError, match="does not fit this model"):
        checkpoints.restore_newest(other, str(tmp_path), repair=True)


def test_set_aside_keeps_the_older_ones_listed(tmp_path):
    _, _, paths = _saved(tmp_path)
    checkpoints.set_aside(paths[1:], str(tmp_path), checkpoints.DIVERGED_DIR)
    assert tf.train.latest_checkpoint(str(tmp_path)) == paths[0]
    assert len(list((tmp_path / checkpoints.DIVERGED_DIR).iterdir())) == 4
    checkpoints.set_aside(paths[:1], str(tmp_path), checkpoints.DIVERGED_DIR)
    assert tf.train.latest_checkpoint(str(tmp_path)) is None



def test_a_save_on_a_full_disk_is_one_line_and_keeps_the_older_ones(tmp_path):
    with small_disk(tmp_path) as disk:
        variable = tf.Variable(tf.fill([4096], 1.0))
        state = tf.train.Checkpoint(v=variable)
        manager = tf.train.CheckpointManager(state, str(disk / "checkpoints"), max_to_keep=3,
                                             checkpoint_name=checkpoints.PREFIX)
        first = checkpoints.save(manager)
        subprocess.run(["dd", "if=/dev/zero", f"of={disk}/filler", "bs=64k", "count=1000"],
                       capture_output=True, check=False)
        variable.assign(tf.fill([4096], 2.0))
        with pytest.raises(DiskFullError) as raised:
            checkpoints.save(manager)
        assert str(raised.value).startswith(
            f"could not write a checkpoint to {disk}/checkpoints: no space left on its disk")
        assert "free some space" in str(raised.value) and "\n" not in str(raised.value)
        assert exit_code_and_line(raised.value) == (2, f"error: {raised.value}")
        # What the failed save wrote is removed; the complete one is still the newest.
        assert not [p for p in (disk / "checkpoints").iterdir()
                    if p.name.endswith("_temp") or ".tempstate" in p.name]
        assert manager.latest_checkpoint == first
        assert checkpoints.restore_newest(state, str(disk / "checkpoints"), repair=True) == first
        assert float(variable[0]) == 1.0
