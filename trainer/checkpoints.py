"""Checkpoints on disk: the managers, resuming from the newest readable one, bad ones set aside.

TensorFlow lists a checkpoint in the folder's ``checkpoint`` index only once all
of it is written, so a half-written one is never picked. What TensorFlow does
not do is written here: a listed checkpoint whose bytes were flipped or cut is
set aside (moved to ``unreadable/``, never deleted) and the next newest is
used; a lost index is rebuilt from the checkpoint files beside it; after a
divergence, the checkpoints saved since the last healthy loss are moved to
``diverged/``, so the one kept is one whose weights were seen to train well.
Every save goes through ``save``: a full disk or a lost folder ends the run in
one line that names the folder and the checkpoint a rerun resumes from.
"""

from __future__ import annotations

import os
import re

import tensorflow as tf
from absl import logging

from trainer.config import Config
from trainer.errors import OP_PREFIX, DiskFullError, UserError, free_space, is_disk_full

PREFIX = "ckpt"
UNREADABLE_DIR = "unreadable"
DIVERGED_DIR = "diverged"
_NUMBERED = re.compile(rf"{PREFIX}-(\d+)\.index$")


def make_managers(state: tf.train.Checkpoint, best_weights: tf.train.Checkpoint, config: Config,
                  directory: str
                  ) -> tuple[tf.train.CheckpointManager, tf.train.CheckpointManager | None]:
    """Managers for the training state and (with early stopping) the best epoch's weights.

    Args:
      state: the whole training state.
      best_weights: the model only, saved at each new best validation loss.
      config: keep_checkpoints and early_stopping_patience.
      directory: this process's folder (see ``cluster.private_dir``).
    """
    manager = tf.train.CheckpointManager(state, directory, max_to_keep=config.keep_checkpoints,
                                         checkpoint_name=PREFIX)
    best = None
    if config.early_stopping_patience:
        best = tf.train.CheckpointManager(best_weights, f"{directory}/best", max_to_keep=1,
                                          checkpoint_name=PREFIX)
    return manager, best


def save(manager: tf.train.CheckpointManager, checkpoint_number: int | None = None) -> str:
    """``manager.save``, with a failed write ending in one line instead of a traceback.

    TensorFlow writes a checkpoint under temporary names and lists it only
    once whole, so a failed save leaves the older ones as they were; its
    temporary files are removed, giving back the space they took.

    Returns:
      The saved checkpoint's path.

    Raises:
      DiskFullError: the disk (or quota) is full.
      UserError: another write failure (the folder lost, or its permissions).
    """
    try:
        return manager.save(checkpoint_number=checkpoint_number)
    except (tf.errors.OpError, OSError) as error:
        directory = manager.directory
        _remove_temporaries(directory)
        resume = "then run the same command to resume from the last complete checkpoint."
        if is_disk_full(error):
            free = free_space(directory)
            raise DiskFullError(f"could not write a checkpoint to {directory}: no space left on "
                                f"its disk{free}; free some space, {resume}") from None
        raise UserError(f"could not write a checkpoint to {directory} ({_first_line(error)}); fix "
                        f"the folder, {resume}") from None


def _remove_temporaries(directory: str) -> None:
    """Removes what a failed save left (``ckpt-N_temp/``, ``*.tempstate*``); never raises."""
    for pattern in ("*_temp", "*.tempstate*"):
        try:
            for path in tf.io.gfile.glob(f"{directory}/{pattern}"):
                if tf.io.gfile.isdir(path):
                    tf.io.gfile.rmtree(path)
                else:
                    tf.io.gfile.remove(path)
        except (tf.errors.OpError, OSError):
            pass  # Best effort: the one-line error that follows matters more.


def listed(directory: str, *, repair: bool) -> list[str]:
    """The checkpoints in ``directory``, newest first.

    From the ``checkpoint`` index; when it is lost but checkpoint files are
    there, from the files (and, with ``repair``, the index is written again).
    """
    state = tf.train.get_checkpoint_state(directory)
    if state is not None and state.all_model_checkpoint_paths:
        paths = [_absolute(p, directory) for p in state.all_model_checkpoint_paths]
        return list(reversed(paths))
    found = sorted(((int(m[1]), f"{directory}/{PREFIX}-{m[1]}")
                    for name in _names(directory) if (m := _NUMBERED.fullmatch(name))),
                   reverse=True)
    paths = [path for _, path in found]
    if paths:
        logging.warning("the checkpoint index of %s is missing; found %s from the files%s.",
                        directory, ", ".join(os.path.basename(p) for p in paths),
                        " and wrote the index again" if repair else "")
        if repair:
            _write_index(directory, paths)
    return paths


def restore_newest(state: tf.train.Checkpoint, directory: str, *, repair: bool) -> str | None:
    """Restores the newest readable checkpoint of ``directory`` into ``state``.

    Args:
      state: what to restore (built, inside the strategy scope).
      directory: the checkpoint folder.
      repair: whether this process may move files and rewrite the index (the
        chief); other workers only skip what they cannot read.

    Returns:
      The restored checkpoint's path, or None when there is none (a new run).

    Raises:
      UserError: no listed checkpoint can be read, or one does not fit the
        model (other settings than the run that wrote it).
    """
    paths = listed(directory, repair=repair)
    unreadable = []
    for path in paths:
        try:
            state.restore(path).assert_existing_objects_matched()
        except (ValueError, AssertionError) as error:
            raise UserError(
                f"{path} does not fit this model ({_first_line(error)}): it was written with "
                "other model settings. Pass --overwrite to start over, or pick a new "
                "--model_dir.") from None
        except Exception as error:  # Cut or flipped bytes raise OpError, IndexError, DecodeError...
            logging.warning("%s cannot be read (%s); %s.", path, _first_line(error),
                            f"setting it aside in {directory}/{UNREADABLE_DIR}/ and trying the "
                            "next newest" if repair else "trying the next newest")
            unreadable.append(path)
            continue
        if unreadable and repair:
            set_aside(unreadable, directory, UNREADABLE_DIR)
        return path
    if paths:
        files = ", ".join(os.path.basename(p) for p in paths)
        raise UserError(f"no checkpoint in {directory} can be read ({files}: cut or corrupted); "
                        "pass --overwrite to start over, or move them away to start from "
                        "step 0.")
    return None


def set_aside(paths: list[str], directory: str, subfolder: str) -> None:
    """Moves each checkpoint's files into ``directory/subfolder`` and drops them from the index.

    Nothing is deleted: a person can still look at, or move back, what was set aside.
    """
    if not paths:
        return
    target = f"{directory}/{subfolder}"
    tf.io.gfile.makedirs(target)
    for path in paths:
        for name in tf.io.gfile.glob(f"{path}.*"):
            tf.io.gfile.rename(name, f"{target}/{os.path.basename(name)}", overwrite=True)
    remaining = [p for p in reversed(listed(directory, repair=False)) if p not in paths]
    _write_index(directory, list(reversed(remaining)))


def _write_index(directory: str, newest_first: list[str]) -> None:
    """Rewrites the ``checkpoint`` index to list ``newest_first`` (removes it if empty)."""
    index = f"{directory}/checkpoint"
    if not newest_first:
        if tf.io.gfile.exists(index):
            tf.io.gfile.remove(index)
        return
    oldest_first = list(reversed(newest_first))
    tf.compat.v1.train.update_checkpoint_state(
        directory, oldest_first[-1], all_model_checkpoint_paths=oldest_first)


def _names(directory: str) -> list[str]:
    return tf.io.gfile.listdir(directory) if tf.io.gfile.isdir(directory) else []


def _absolute(path: str, directory: str) -> str:
    return path if os.path.isabs(path) or "://" in path else f"{directory}/{path}"


def _first_line(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error)
    text = OP_PREFIX.sub("", text.strip())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:200]
