"""SIGTERM (a spot VM or a managed job being taken): checkpoint, then stop with a restart code.

TensorFlow's ``PreemptionCheckpointHandler`` does the work. Under
MultiWorkerMirroredStrategy a SIGTERM usually reaches one worker only; the
handler tells the others through the cluster's coordination service, and every
worker saves after the same training call and stops, so the saved state is one
consistent step of the whole cluster. With one process it saves after the next
call.

Two gaps of the handler are covered here:

- It can only act on a signal it is told about. The SIGTERM handler below just
  records the signal (saving inside a signal handler could interrupt a step),
  and the handler polls that record once a second.
- It stands aside on Google Cloud CPU and TPU VMs and under TPUStrategy
  ("does not support usage with TPU or CPU device on GCP"): it never polls.
  There this module saves by itself after the next training call; that is
  exact for one process, and for several it still saves the chief's state
  while the others stop on the lost connection (``distribute.ClusterError``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

import tensorflow as tf


class PreemptedError(RuntimeError):
    """SIGTERM arrived and the training state was saved; the same command resumes there."""


class Preemption:
    """Watches for SIGTERM during training; ``check`` saves and raises PreemptedError."""

    def __init__(self, strategy: tf.distribute.Strategy, manager: tf.train.CheckpointManager,
                 shared_checkpoint_dir: str) -> None:
        """Starts TensorFlow's handler for ``manager``'s checkpoint.

        Call after the training state was restored, on every worker from the
        same checkpoint: the handler's count of training calls, which workers
        compare to agree on when to save, is restored with it.

        Args:
          strategy: the run's strategy (its cluster, if any, is coordinated).
          manager: saves this process's copy of the training state.
          shared_checkpoint_dir: where the kept copy goes (the chief's), for messages.
        """
        self._manager = manager
        self._shared_checkpoint_dir = shared_checkpoint_dir
        self._sigterm = threading.Event()
        self._polled = threading.Event()  # The handler is watching (see the module doc).
        self._handler = None
        if not isinstance(strategy, tf.distribute.TPUStrategy):
            # The handler restores the newest checkpoint of the manager it is given. The
            # run has restored already (every worker from the chief's folder), so it gets
            # one over a folder nothing is written to, and saves through save_fn.
            unused = tf.train.CheckpointManager(manager.checkpoint, f"{manager.directory}/unused",
                                                max_to_keep=1)
            self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
                getattr(strategy, "cluster_resolver", None), unused,
                termination_config=tf.distribute.experimental.TerminationConfig(
                    termination_watcher_fn=self._sigterm_seen, exit_fn=self._stop,
                    grace_period=0, save_fn=manager.save))

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """While training, SIGTERM is recorded for ``check``; afterwards it means what it did."""
        if threading.current_thread() is not threading.main_thread():
            yield  # Signal handlers can only be set from the main thread.
            return
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: self._sigterm.set())
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def check(self) -> None:
        """Call after every training call, with the loop's position already recorded.

        Raises:
          PreemptedError: this process or (through the handler) another worker
            got SIGTERM; the training state has been saved.
        """
        if self._handler is not None:
            self._handler.save_checkpoint_if_preempted()  # Calls _stop when it is time.
        if self._sigterm.is_set() and not self._polled.is_set():
            self._manager.save()
            self._stop()

    def _sigterm_seen(self) -> bool:
        self._polled.set()
        return self._sigterm.is_set()

    def _stop(self) -> None:
        step = int(self._manager.checkpoint.optimizer.iterations.numpy())
        name = os.path.basename(self._manager.latest_checkpoint)
        raise PreemptedError(f"stopped by SIGTERM at step {step}; saved {name} in "
                             f"{self._shared_checkpoint_dir}: run the same command to resume "
                             "there.")
