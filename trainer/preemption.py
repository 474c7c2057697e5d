"""SIGTERM and Ctrl-C at every moment of a run: an answer, a saved state, an exit code.

A spot VM or a managed job gets SIGTERM before it is taken; a person presses
Ctrl-C (SIGINT). What happens depends on where the run is (``Signals.stage``):

| stage | first signal | exit |
| --- | --- | --- |
| ``starting`` (flags to the first step) | stops at once: nothing new to save | 75 / 130 |
| ``training`` | the step running finishes, the state is saved, then the run stops | 75 / 130 |
| ``evaluating`` (the final test) | stops at once: training is done and saved | 75 / 130 |
| ``writing outputs`` | the outputs are finished (seconds), then the run ends complete | 0 |

What the first signal started is never cut short by another SIGTERM: a
platform repeats it (systemd at shutdown after a VM's shutdown script, a
supervisor's stop) to mean "stop", which is under way. A repeated SIGTERM is
logged and ignored: the save after the running step, or the outputs, are
finished, and the run ends as the first signal said (75, or 0 while writing
the outputs). A second Ctrl-C is a person insisting: it stops at once, saying
what was not saved (or, once the save is done, with the saved state's line).
Once the run's last line is decided (``Signals.end``), SIGTERM is ignored to
the process's end: Python puts the default action back while it shuts down,
and TensorFlow's teardown takes a second, in which a SIGTERM would turn the
decided exit code into 143. 75 is ``EX_TEMPFAIL`` ("run me again": the
launchers restart on it); 130 is the shell's code for Ctrl-C.

Under MultiWorkerMirroredStrategy a signal usually reaches one worker only:
TensorFlow's ``PreemptionCheckpointHandler`` tells the others through the
cluster's coordination service, and every worker saves after the same training
call, so the checkpoint is one consistent step of the whole cluster. The
handler only supports multi-worker training (and stands aside on Google Cloud
CPU and TPU VMs); a single process, or a stand-aside handler, saves by itself
after the running call.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from absl import logging

from trainer.errors import PreemptedError, Stopped

if TYPE_CHECKING:  # TensorFlow loads with the run, not with the signal handler (main.py).
    import tensorflow as tf

STARTING, TRAINING, EVALUATING, WRITING, DONE = ("starting", "training", "evaluating",
                                                 "writing outputs", "done")
SAVING = "saving"  # A signal came in training: the state is being saved before stopping.
ENDING = "ending"  # The run's exit code and last line are decided (``Signals.end``).
# Stages where the first signal lets the work finish.
_DEFERRED = (TRAINING, SAVING, WRITING, DONE, ENDING)
# Fault injection for tests: the process waits for a signal when it reaches the stage this
# variable names, so a test can signal each stage for sure instead of racing a clock.
PAUSE_ENV = "TRAINER_PAUSE_AT"
PAUSE_SIGNALS_ENV = "TRAINER_PAUSE_SIGNALS"  # How many signals the pause waits for (1).


def signal_name(signum: int) -> str:
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


class Signals:
    """The process's SIGTERM and SIGINT handler; ``stage`` says what a signal means now."""

    def __init__(self) -> None:
        self.stage = STARTING
        self.received: int | None = None  # The first signal, once one came.
        self.count = 0
        self.stopping: Stopped | None = None  # The stop on its way out, once one is raised.

    def install(self) -> None:
        """Answers SIGTERM and SIGINT from now on; call from the main thread.

        main.py calls it before TensorFlow loads; call it again after anything
        that puts its own handler in place.
        """
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def enter(self, stage: str) -> None:
        """Marks the start of ``stage``; a signal already received is acted on now."""
        if stage == DONE and self.received is not None and self.stage == WRITING:
            logging.warning("%s came while writing the outputs; they are complete, so the run "
                            "ends as finished.", signal_name(self.received))
        self.stage = stage
        self.pause_point(stage)
        if self.received is not None and stage not in _DEFERRED:
            raise self.stop(self._message(self.received), self.received)

    def stop(self, message: str, signum: int, kind: type[Stopped] = Stopped) -> Stopped:
        """The exception that stops the run, to raise; from now on a SIGTERM is ignored."""
        self.stopping = kind(message, signum)
        return self.stopping

    def end(self) -> None:
        """The run's exit code and last line are decided: SIGTERM is ignored from here on.

        Call from the main thread just before the last line is printed. Python
        restores the default action of the signals it handles while it shuts
        down (not of ignored ones), and a SIGTERM then would end the process
        with 143 instead of the exit code its last line gave.
        """
        self.stage = ENDING
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.pause_point(ENDING)

    def pause_point(self, name: str) -> None:
        """With ``$TRAINER_PAUSE_AT`` set to ``name``, says so and waits for signals (tests).

        It waits for ``$TRAINER_PAUSE_SIGNALS`` more signals (default 1)
        unless one stops the run first, so a test can also send a second one
        at this stage, or one after the first (at ``saving``).
        """
        if os.environ.get(PAUSE_ENV) != name:
            return
        target = self.count + int(os.environ.get(PAUSE_SIGNALS_ENV, "1"))
        logging.warning("paused at %s (%s): waiting for a signal", name, PAUSE_ENV)
        while self.count < target:
            signal.pause()

    def _handle(self, signum: int, frame: Any) -> None:
        stops = self._stops(signum)
        if stops and _inside_logging(frame):
            # An exception raised inside a log call is swallowed by logging (it prints a
            # traceback and goes on): have the same signal delivered again once it is out.
            threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
            return
        self.count += 1
        first = self.received is None
        if first:
            self.received = signum
        if self.stage in (DONE, ENDING):
            return  # The run's end is decided; the process is on its way out.
        if not stops:
            logging.warning("%s", self._deferral(signum, first))
            return
        if self.stopping is not None:  # A second Ctrl-C after the save: out, as saved.
            raise self.stop(str(self.stopping), self.stopping.signum, type(self.stopping))
        raise self.stop(self._message(signum), signum)

    def _stops(self, signum: int) -> bool:
        """Whether a signal arriving now raises Stopped (rather than being recorded)."""
        if self.stage in (DONE, ENDING):
            return False
        if self.received is None and self.stopping is None:
            return self.stage not in _DEFERRED
        return signum == signal.SIGINT  # Only a person insists; a SIGTERM repeats the ask.

    def _deferral(self, signum: int, first: bool) -> str:
        """The warning for a signal that lets the work under way finish."""
        name = signal_name(signum)
        if first:
            doing = ("saving after the running step" if self.stage == TRAINING
                     else "finishing the outputs first")
            return (f"{name} received while {self.stage}: {doing}; a repeated SIGTERM does not "
                    "hurry it, a second Ctrl-C stops at once.")
        doing = ("the run is stopping" if self.stopping is not None else
                 "the save goes on, then the run stops" if self.stage == SAVING else
                 "the outputs are finished first" if self.stage == WRITING else
                 "the run still saves after the running step, then stops")
        return (f"{name} again while {'stopping' if self.stopping is not None else self.stage}: "
                f"ignored; {doing} (a second Ctrl-C stops at once).")

    def _message(self, signum: int) -> str:
        name = signal_name(signum)
        if self.count > 1 and self.stage in (TRAINING, SAVING):
            return (f"stopped at once by a second {name}: the steps since the last checkpoint "
                    "were not saved; run the same command to resume from that checkpoint.")
        if self.count > 1 and self.stage == WRITING:
            return (f"stopped at once by a second {name} while writing the outputs: metrics.json "
                    "was not written, so the run is not marked done; run the same command to "
                    "write them.")
        if self.stage == EVALUATING:
            return (f"stopped by {name} during the final evaluation; training is complete and "
                    "checkpointed: run the same command to evaluate and write the outputs.")
        return (f"stopped by {name} while starting, before any new training step: nothing was "
                "lost; run the same command to start again.")


def _inside_logging(frame: Any) -> bool:
    """Whether the interrupted code is inside the logging package (absl logs through it)."""
    while frame is not None:
        if f"{os.sep}logging{os.sep}" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


SIGNALS = Signals()  # One per process: signal handlers are process-wide.


class Preemption:
    """Saves and stops the training when a signal came: ``check`` after every training call."""

    def __init__(self, strategy: tf.distribute.Strategy, manager: tf.train.CheckpointManager,
                 shared_checkpoint_dir: str, *, workers: int) -> None:
        """Starts TensorFlow's handler for a cluster of several workers.

        Call after the training state was restored, on every worker from the
        same checkpoint: the handler's count of training calls, which workers
        compare to agree on when to save, is restored with it.

        Args:
          strategy: the run's strategy.
          manager: saves this process's copy of the training state.
          shared_checkpoint_dir: where the kept copy goes (the chief's), for messages.
          workers: processes training together.
        """
        import tensorflow as tf

        from trainer import checkpoints

        self._manager = manager
        self._shared_checkpoint_dir = shared_checkpoint_dir
        self._polled = False  # TensorFlow's handler is watching (see the module doc).
        self._handler = None
        if workers > 1:
            # The handler restores the newest checkpoint of the manager it is given. The
            # run has restored already (every worker from the chief's folder), so it gets
            # one over a folder nothing is written to, and saves through save_fn.
            unused = tf.train.CheckpointManager(manager.checkpoint, f"{manager.directory}/unused",
                                                max_to_keep=1)
            self._handler = tf.distribute.experimental.PreemptionCheckpointHandler(
                strategy.cluster_resolver, unused,
                termination_config=tf.distribute.experimental.TerminationConfig(
                    termination_watcher_fn=self._signal_seen, exit_fn=self._stop,
                    grace_period=0, save_fn=functools.partial(checkpoints.save, manager)))
            # The handler puts its own SIGTERM handler in place; ours answers every stage.
            if threading.current_thread() is threading.main_thread():
                SIGNALS.install()

    def check(self) -> None:
        """Call after every training call, with the loop's position already recorded.

        Raises:
          PreemptedError: this process or (through the handler) another worker
            got a signal; the training state has been saved.
        """
        if self._handler is not None:
            self._handler.save_checkpoint_if_preempted()  # Calls _stop when it is time.
        if SIGNALS.received is not None and not self._polled:
            from trainer import checkpoints

            SIGNALS.enter(SAVING)  # A repeated SIGTERM from here is ignored, the save kept.
            checkpoints.save(self._manager)
            self._stop()

    def check_at_end(self) -> None:
        """After the last training call: a signal the cluster did not act on yet still stops.

        The epoch-end checkpoint holds the finished training; the run stops
        instead of spending a grace period on the final evaluation.
        """
        if SIGNALS.received is not None:
            self._stop()

    def _signal_seen(self) -> bool:
        self._polled = True
        return SIGNALS.received is not None

    def _stop(self) -> None:
        signum = SIGNALS.received or signal.SIGTERM
        step = int(self._manager.checkpoint.optimizer.iterations.numpy())
        name = os.path.basename(self._manager.latest_checkpoint or "") or "nothing"
        raise SIGNALS.stop(f"stopped by {signal_name(signum)} at step {step}; saved {name} in "
                           f"{self._shared_checkpoint_dir}: run the same command to resume "
                           "there.", signum, PreemptedError)
