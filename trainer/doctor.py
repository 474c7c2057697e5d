"""What this machine will do with these flags, before a run spends money on it.

    python -m trainer.doctor [the trainer's flags]      # or: imdb-doctor

One screen: Python, TensorFlow and Keras; the CPUs and GPUs TensorFlow sees;
the CUDA and cuDNN this TensorFlow was built for; which LSTM kernel would run;
threads, strategy and precision; TF_CONFIG; whether the run's folders pass the
trainer's own start-up checks. It reads no data, trains nothing and leaves no
folder behind. It exits 2, with the reason as its last line, where the same
flags would make the trainer stop at start-up (``--require_gpu`` without a
GPU, a bad TF_CONFIG or a taken port, a folder the run cannot write).
TensorFlow loads after the flags are parsed, as in ``trainer.main``, so
``--tf_log_level=0`` shows its own start-up lines (why a GPU library did not
load, for instance).
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from typing import Any

from absl import app
from absl import flags as absl_flags

from trainer import flags, rundir, tf_log
from trainer.config import Config
from trainer.errors import UserError, exit_with, parse_flags

_FOLDER_FLAGS = ("model_dir", "checkpoint_dir", "tensorboard_dir")


def report(config: Config, new_run_dir: bool = False) -> tuple[list[str], list[str]]:
    """The screen's lines, and the problems that would stop the trainer (one line each).

    Imports TensorFlow: call it after ``tf_log.import_tensorflow``.

    Args:
      config: the run's settings, from the trainer's flags.
      new_run_dir: ``config.model_dir`` is the default, a new folder for each run.
    """
    import keras
    import tensorflow as tf

    from trainer import distribute, lstm

    problems: list[str] = []
    gpus = tf.config.list_physical_devices("GPU")
    gpu_problem = distribute.gpu_problem(config, len(gpus))
    if gpu_problem:
        problems.append(gpu_problem)
    used_gpus = min(config.num_gpus or len(gpus), len(gpus))
    threads = distribute.intra_op_threads(config, used_gpus)
    # As make_runtime, before TensorFlow starts: the LSTM line reads the pool's size back.
    distribute.set_intra_op_threads(threads)
    tf_config_line, tf_config = _tf_config(problems)
    strategy = distribute.choose(config, tf_config, used_gpus)
    if strategy == "multi_worker" and tf_config:
        tf_config_line = _port(tf_config, tf_config_line, problems)
    model_dir_line = _folders(config, problems)
    if new_run_dir:  # Named afresh by every run: show where, not this one's name.
        model_dir_line = model_dir_line.replace(
            config.model_dir, f"{os.path.dirname(config.model_dir)}/<a new folder per run>")
    lines = [
        f"Python      {platform.python_version()} ({sys.executable})",
        f"TensorFlow  {tf.__version__}, Keras {keras.__version__}",
        f"CPUs        {os.cpu_count()} on this machine, {lstm.usable_cores()} usable "
        "by this process",
        *_gpu_lines(gpus),
        f"CUDA/cuDNN  {distribute.built_for()}",
        f"LSTM        {_lstm_kernel(config, used_gpus)}",
        "Intra-op    " + (f"{threads} thread(s) per op" if threads
                          else "TensorFlow's choice (one per core)"),
        f"Strategy    {strategy}, precision "
        f"{distribute.resolve_precision(config, used_gpus)}",
        f"TF_CONFIG   {tf_config_line}",
        f"model_dir   {model_dir_line}",
    ]
    return lines, problems


def _gpu_lines(gpus: list[Any]) -> list[str]:
    import tensorflow as tf

    from trainer import distribute

    if not gpus:
        return [f"GPUs: 0     (TensorFlow's physical devices: {distribute.physical_devices()})"]
    lines = [f"GPUs: {len(gpus)}"]
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        lines.append(f"  {gpu.name.removeprefix('/physical_device:')}  "
                     f"{details.get('device_name', 'unknown')}"
                     + (f" (compute capability {capability[0]}.{capability[1]})"
                        if capability else ""))
    return lines


def _lstm_kernel(config: Config, used_gpus: int) -> str:
    """The recurrence the run's LSTM would use, read off the model these flags build."""
    import keras

    from trainer import distribute, model

    keras.mixed_precision.set_global_policy(distribute.resolve_precision(config, used_gpus))
    net = model.build(config)
    blockers = model.cudnn_blockers(net, config)
    on_gpu = ("cuDNN-eligible" if not blockers
              else "NOT cuDNN-eligible: " + "; ".join(blockers))
    if used_gpus:
        return ("cuDNN" if not blockers else "Keras' generic loop on the GPU") + f" ({on_gpu})"
    return f"{model.cpu_lstm_kernel(net)}, no GPU here (on a GPU: {on_gpu})"


def _tf_config(problems: list[str]) -> tuple[str, dict[str, Any] | None]:
    """A summary of TF_CONFIG (who is chief, how many tasks), and the parsed value."""
    from trainer import cluster

    try:
        tf_config = cluster.parse_tf_config(os.environ.get("TF_CONFIG"))
    except UserError as error:
        problems.append(str(error))
        return f"INVALID: {error}", None
    if not tf_config:
        return "not set (one process)", None
    tasks = tf_config["cluster"]
    chief = cluster.leader_job(tasks)
    task = tf_config["task"]
    return (f"{cluster.num_tasks(tasks)} task(s) "
            f"({', '.join(f'{len(v)} {k}' for k, v in tasks.items())}); "
            f"chief: {chief} 0 at {tasks[chief][0]}; this process: {task['type']} "
            f"{task['index']} at {cluster.task_address(tf_config)}"), tf_config


def _port(tf_config: dict[str, Any], line: str, problems: list[str]) -> str:
    """TF_CONFIG's line, or why this task's port cannot be used.

    The trainer tries the port only where it starts multi-worker training
    (``cluster.make_multi_worker_strategy``), so the doctor does too.
    """
    from trainer import cluster

    try:
        cluster.check_port_free(tf_config)
    except UserError as error:
        problems.append(str(error))
        return f"INVALID: {error}"
    return line


def _folders(config: Config, problems: list[str]) -> str:
    """The model_dir line: the trainer's own start-up checks of the run's folders.

    ``rundir.check_local_folder`` creates the folder it checks, as a run would;
    the folders that did not exist before are removed again, so the doctor
    leaves nothing behind.
    """
    paths = [(f"--{name}", getattr(config, name)) for name in _FOLDER_FLAGS]
    missing = set()
    for _, path in paths:
        folder = os.path.abspath(path) if rundir.is_local(path) else None
        while folder and not os.path.exists(folder):
            missing.add(folder)
            folder = os.path.dirname(folder)
    try:
        for flag, path in paths:
            rundir.check_local_folder(path, flag)
        rundir.check_remote_folder(config.model_dir)
    except UserError as error:
        problems.append(str(error))
        return f"{config.model_dir}: REFUSED: {error}"
    finally:
        for folder in sorted(missing, key=len, reverse=True):  # Each inside its parent first.
            with contextlib.suppress(OSError):  # Not empty: not the doctor's to remove.
                os.rmdir(folder)
    return f"{config.model_dir}: writable"


def main(argv: list[str]) -> None:
    """Prints the report; exits 2 with the first problem's reason if there is one."""
    try:
        if len(argv) > 1:
            raise UserError(f"unexpected arguments {argv[1:]}; every setting is a --flag "
                            "(see --helpfull).")
        config = flags.to_config()
        tf_log.import_tensorflow(absl_flags.FLAGS.tf_log_level)
        lines, problems = report(config, new_run_dir=not (absl_flags.FLAGS.model_dir
                                                          or os.environ.get("AIP_MODEL_DIR")))
    except UserError as error:
        exit_with(f"error: {error}")
    print("\n".join(lines), flush=True)
    if problems:
        exit_with("error: " + " Also: ".join(problems))
    print("OK: nothing here would stop the trainer at start-up.")


def run() -> None:
    """Console-script entry point (``imdb-doctor``)."""
    flags.show_grouped_help(__doc__)
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
