"""The run folder: who owns it, what it means, and files that are never half-written.

A ``--model_dir`` holds one run. This module makes that true:

- **One owner.** The chief holds an exclusive ``fcntl`` lock on ``run.lock`` for the
  run's life; a second trainer on the folder stops at once, naming the holder. The
  kernel drops the lock when its process dies, so a lock left by a killed run is simply
  taken over (with a warning naming the dead holder). ``gs://`` has no such lock: there
  the holder is recorded and a live-looking one is warned about, not refused.
- **One meaning.** ``manifest.json`` records the settings that define the training
  state (model shape, data and vocabulary fingerprints, batch size, seed, ...). A
  resume compares them: a change that would mix two states is refused in one line; a
  change that is safe mid-run (learning rate, epochs, cadence) is taken and recorded.
- **Whole files.** ``write_atomically`` writes to a temporary name and renames, so a
  kill at any moment leaves the old file, or the new one, never a part.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from absl import logging

from trainer.config import Config
from trainer.errors import UserError

LOCK_FILE = "run.lock"
MANIFEST_FILE = "manifest.json"
# A checkpoint, the model and its export take a few tens of MB; refuse a disk with less.
MIN_FREE_BYTES = 128 << 20
REMOTE_CHECK_SECONDS = 30  # How long to wait for a gs:// folder to answer before giving up.

# Settings whose change would mix two training states: refused on resume.
STATE_SETTINGS = ("vocab_size", "max_len", "embedding_dim", "lstm_units", "padding",
                  "truncating", "mask_padding", "bucket_by_length", "bucket_window_batches",
                  "batch_size", "seed", "data_source", "max_train_examples", "validation_split",
                  "max_validation_examples", "text_column", "label_column", "test_split",
                  "class_weight")
# Settings that may change when a run is resumed: taken, logged, recorded.
SAFE_SETTINGS = ("learning_rate", "lr_schedule", "warmup_steps", "epochs",
                 "early_stopping_patience", "clip_norm", "ema_momentum", "embedding_lr_scale",
                 "adam_beta_2", "log_every_steps",
                 "checkpoint_every_steps", "keep_checkpoints", "steps_per_loop",
                 "profile_steps", "max_test_examples", "lean_lstm", "intra_op_threads",
                 "cluster_timeout_secs", "strategy", "num_gpus", "cpu_replicas", "data_path",
                 "tfds_data_dir", "max_steps", "vocab_file", "stream", "classes",
                 "stream_sample_rows")


def is_local(path: str) -> bool:
    """Whether ``path`` is on this machine's file system (not gs:// or another scheme)."""
    return "://" not in path


# --- Writable, before anything is read ----------------------------------------------------

def check_local_folder(path: str, flag: str = "--model_dir") -> None:
    """Refuses, in one line, a local output folder that cannot hold a run.

    Cheap, and done before the data is read: a file in the way, a folder this
    user may not write, a disk with no room. Creates the folder (and nothing
    else) when it can.

    Raises:
      UserError: naming the path and the fix.
    """
    if not is_local(path):
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{flag}={path} is a file, not a folder; give a folder path (it is "
                        "created if missing).")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w", encoding="utf-8") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise UserError(f"{flag}={path}: no space left on its disk; free some space or "
                            "pick a folder on another disk.") from None
        raise UserError(f"{flag}={path} is not writable ({error.strerror}); pick a folder you "
                        "can write, or fix its permissions.") from None
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise UserError(f"{flag}={path}: only {free >> 20} MB free on its disk, and a run needs "
                        f"at least {MIN_FREE_BYTES >> 20} MB for checkpoints and the model; free "
                        "some space or pick a folder on another disk.")


def check_remote_folder(path: str, flag: str = "--model_dir",
                        seconds: float = REMOTE_CHECK_SECONDS) -> None:
    """Refuses a gs:// (or other remote) folder that does not answer within ``seconds``.

    TensorFlow's GCS client retries for minutes without network; this asks
    once, from a helper thread, and stops waiting after ``seconds``.

    Raises:
      UserError: the folder did not answer, or refused to be written.
    """
    if is_local(path):
        return
    import tensorflow as tf  # Only here: the local checks run before TensorFlow starts.

    outcome: dict[str, Any] = {}

    def probe() -> None:
        try:
            tf.io.gfile.makedirs(path)
            outcome["ok"] = tf.io.gfile.isdir(path)
        except Exception as error:  # Every file system raises its own kind.
            outcome["error"] = error

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise UserError(f"{flag}={path} did not answer within {seconds:.0f} s; check the network "
                        "and the bucket's name and permissions (gcloud storage ls "
                        f"{path}).")
    if "error" in outcome:
        first = str(outcome["error"]).strip().splitlines()
        raise UserError(f"{flag}={path} cannot be written ({type(outcome['error']).__name__}: "
                        f"{first[0][:200] if first else ''}); check the bucket's name and "
                        "permissions.")


def remove_if_unused(path: str) -> None:
    """Removes a local folder this run created, if it holds nothing but its lock and empty folders.

    A run refused at start-up (bad data, a bad flag) leaves no empty run folder behind.
    """
    if not is_local(path) or not os.path.isdir(path):
        return
    for root, _, files in os.walk(path):
        if any(root != path or name != LOCK_FILE for name in files):
            return
    shutil.rmtree(path, ignore_errors=True)


# --- The owner ----------------------------------------------------------------------------

def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": _now(), "command": " ".join(sys.argv)[:500]}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def owned(model_dir: str) -> Iterator[None]:
    """Holds the local folder ``model_dir`` for this process while inside; chief only.

    Raises:
      UserError: another live process holds it.
    """
    path = os.path.join(model_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"--model_dir={model_dir} is in use by another run "
                            f"({_describe(_read_holder(fd))}); wait for it to end, stop it, or "
                            "pick another --model_dir.") from None
        stale = _read_holder(fd)
        if stale:
            logging.warning("taking over %s from a run that ended without releasing it (%s).",
                            path, _describe(stale))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # Released cleanly: the next owner sees no stale holder.
    finally:
        os.close(fd)  # Closing drops the lock.


def _read_holder(fd: int) -> dict[str, Any]:
    raw = os.pread(fd, 4096, 0)
    try:
        holder = json.loads(raw.decode()) if raw.strip() else {}
    except ValueError:
        return {"unreadable": raw[:80].decode(errors="replace")}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder unknown"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
            f"{holder.get('since', '?')}")


def note_remote_holder(model_dir: str) -> None:
    """gs:// has no lock through tf.io.gfile: warn about a recorded holder, then record us."""
    import tensorflow as tf

    path = f"{model_dir}/{LOCK_FILE}"
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            previous = f.read()
        logging.warning("%s names an earlier holder (%s); gs:// cannot be locked, so make sure "
                        "no other run uses this folder.", path, previous.strip()[:200])
    write_atomically(path, lambda f: f.write(json.dumps(_holder())))


# --- Whole files --------------------------------------------------------------------------

@contextlib.contextmanager
def renamed_into_place(path: str, suffix: str = "") -> Iterator[str]:
    """Yields a temporary name beside ``path`` to write; renames it to ``path`` afterwards.

    A kill at any moment leaves the old file or the new one. (On gs:// the rename
    is a copy, and an object appears whole or not at all.)

    Args:
      path: the file's real name.
      suffix: an ending the writer insists on (Keras saves only to ``.keras``).
    """
    import tensorflow as tf

    temporary = f"{os.path.dirname(path)}/.{os.path.basename(path)}.tmp-{os.getpid()}{suffix}"
    try:
        yield temporary
        tf.io.gfile.rename(temporary, path, overwrite=True)
    except BaseException:
        remove_quietly(temporary)  # A full disk gets back what the failed write took.
        raise


def remove_quietly(path: str) -> None:
    """Removes the file or folder ``path`` if it is there; never raises (a clean-up)."""
    import tensorflow as tf

    try:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    except Exception:  # Best effort: the error being raised matters more.
        pass


def write_atomically(path: str, write: Callable[[Any], None], mode: str = "w") -> None:
    """Writes ``path`` through ``write(file)``, renamed into place when complete."""
    import tensorflow as tf

    with renamed_into_place(path) as temporary, tf.io.gfile.GFile(temporary, mode) as f:
        write(f)


def write_json(path: str, value: Any) -> None:
    """``write_atomically`` of ``value`` as indented JSON."""
    write_atomically(path, lambda f: f.write(json.dumps(value, indent=2) + "\n"))


def read_json(path: str) -> dict[str, Any] | None:
    """The JSON object at ``path``; None if there is none or it is not whole JSON."""
    import tensorflow as tf

    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    try:
        value = json.loads(text)
    except ValueError:
        logging.warning("%s is not valid JSON (cut short by a kill?); ignoring it.", path)
        return None
    return value if isinstance(value, dict) else None


# --- The manifest -------------------------------------------------------------------------

def fingerprint(*parts: Any) -> str:
    """A short stable hash of texts, labels and vocabularies (``sha256``, 16 hex digits)."""
    digest = hashlib.sha256()
    for part in parts:
        for item in part:
            digest.update(item if isinstance(item, bytes) else repr(item).encode())
            digest.update(b"\0")
        digest.update(b"\1")
    return digest.hexdigest()[:16]


def versions() -> dict[str, str]:
    """The versions that produced a run: this package, Python, TensorFlow, Keras."""
    import importlib.metadata

    import keras
    import tensorflow as tf

    try:
        package = importlib.metadata.version("imdb-lstm-trainer")
    except importlib.metadata.PackageNotFoundError:  # Run from a checkout, not installed.
        package = "not installed"
    return {"trainer": package, "python": sys.version.split()[0],
            "tensorflow": tf.__version__, "keras": keras.__version__}


def state_settings(config: Config, **measured: Any) -> dict[str, Any]:
    """What defines the training state: the ``STATE_SETTINGS`` plus ``measured`` values.

    ``measured`` holds what only the run knows (the resolved precision and data
    source, the data and vocabulary fingerprints, whether the weights' average
    is kept). The streaming settings (--stream, --classes, --stream_sample_rows)
    are safe ones: what they change is in the fingerprints and the class names.
    """
    values = {name: getattr(config, name) for name in STATE_SETTINGS}
    values["ema"] = bool(config.ema_momentum)  # Its variables are in the checkpoint or not.
    return {**values, **measured}


def unused_changes(changes: dict[str, list[Any]]) -> str:
    """``, so this command's --epochs=5 (the run's: 3) takes no effect`` ("" for none).

    For a finished run, which is not trained again: the safe settings this
    command changes (``Manifest.safe_changes``) take no effect.
    """
    if not changes:
        return ""
    named = [f"--{name}={new} (the run's: {old})" for name, (old, new) in changes.items()]
    listed = named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]
    return f", so this command's {listed} {'takes' if len(named) == 1 else 'take'} no effect"


class Manifest:
    """``<model_dir>/manifest.json``: what the run is, and each attempt that ran it.

    Attributes:
      path: the file.
      value: its content (None before the first ``write``).
    """

    def __init__(self, model_dir: str) -> None:
        self.path = f"{model_dir}/{MANIFEST_FILE}"
        self.value = read_json(self.path)

    @property
    def started_by_overwrite(self) -> bool:
        """Whether this run began with --overwrite (so a rerun with it resumes, see README)."""
        return bool(self.value and self.value.get("started_by_overwrite"))

    def differences(self, state: dict[str, Any]) -> list[str]:
        """``--name: old -> new`` for each state setting that differs from the recorded run."""
        if not self.value:
            return []
        recorded = self.value.get("state", {})
        if "padding" in recorded:  # A run from before --truncating cut on its padding side.
            recorded = {"truncating": recorded["padding"], **recorded}
        if "validation_split" in recorded:  # ... and before the cap, held out the whole share.
            recorded = {"max_validation_examples": 0, **recorded}
        flags = {field.name for field in dataclasses.fields(Config)}
        return [f"{'--' if name in flags else ''}{name}: {recorded[name]!r} -> {value!r}"
                for name, value in state.items() if name in recorded and recorded[name] != value]

    def safe_changes(self, config: Config) -> dict[str, list[Any]]:
        """{setting: [old, new]} for the safe settings changed since the last attempt."""
        if not self.value:
            return {}
        last = self.value.get("attempts", [{}])[-1].get("settings", {})
        return {name: [last[name], getattr(config, name)] for name in SAFE_SETTINGS
                if name in last and last[name] != getattr(config, name)}

    def record_attempt(self, config: Config, state: dict[str, Any], *, new_run: bool,
                       by_overwrite: bool, resumed_from: str | None) -> None:
        """Adds this attempt (a new run, or a resume) and writes the file atomically."""
        attempt = {"started": _now(), "host": socket.gethostname(), "pid": os.getpid(),
                   "resumed_from": resumed_from, "changed": self.safe_changes(config),
                   "settings": {name: getattr(config, name) for name in SAFE_SETTINGS}}
        if new_run or not self.value:
            self.value = {"state": state, "versions": versions(), "created": _now(),
                          "started_by_overwrite": by_overwrite, "attempts": []}
        self.value["attempts"].append(attempt)
        write_json(self.path, self.value)

    def refuse(self, differences: list[str], model_dir: str, *, finished: bool = False
               ) -> UserError:
        """The one-line error for a resume that would mix two states.

        With ``finished``: for a command whose data or settings differ from a
        finished run's, whose results are not this command's.
        """
        if finished:
            return UserError(
                f"--model_dir={model_dir} holds a finished run with other settings "
                f"({'; '.join(differences)}); its results are not this command's. Pass "
                "--overwrite to start this folder over, or pick a new --model_dir.")
        return UserError(
            f"--model_dir={model_dir} holds a run with other settings ({'; '.join(differences)}); "
            "resuming would mix two trainings. Pass --overwrite to start this folder over, or "
            "pick a new --model_dir.")
