"""What this machine will do with these flags, before a run spends money on it.

    python -m trainer.doctor [the trainer's flags]      # or: imdb-doctor

One screen: Python, TensorFlow and Keras; the CPUs and GPUs TensorFlow sees;
the CUDA and cuDNN this TensorFlow was built for; which LSTM kernel would run;
threads, strategy and precision; TF_CONFIG; whether --model_dir is writable.
It reads no data and trains nothing. It exits 2, with the reason as its last
line, where the same flags would make the trainer stop at start-up
(``--require_gpu`` without a GPU, a bad TF_CONFIG, an unwritable --model_dir).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow loads: C++ info noise.

import platform
import secrets
import sys
import tempfile
import threading
from typing import Any

import keras
import tensorflow as tf
from absl import app
from absl import flags as absl_flags

from trainer import cluster, distribute, flags, model
from trainer.config import Config
from trainer.errors import UserError, exit_with, parse_flags

GCS_CHECK_SECS = 20  # Bound on trying a gs:// --model_dir, so no network means an answer.


def report(config: Config, new_run_dir: bool = False) -> tuple[list[str], list[str]]:
    """The screen's lines, and the problems that would stop the trainer (one line each).

    Args:
      config: the run's settings, from the trainer's flags.
      new_run_dir: ``config.model_dir`` is the default, a new folder for each run.
    """
    problems: list[str] = []
    gpus = tf.config.list_physical_devices("GPU")
    gpu_problem = distribute.gpu_problem(config, len(gpus))
    if gpu_problem:
        problems.append(gpu_problem)
    used_gpus = min(config.num_gpus or len(gpus), len(gpus))
    # As make_strategy: the pool is sized before TensorFlow starts.
    threads = distribute.intra_op_threads(config, used_gpus)
    distribute.set_intra_op_threads(threads)
    tf_config_line, tf_config = _tf_config(problems)
    model_dir_line = _model_dir(config.model_dir, problems)
    if new_run_dir:  # Named afresh by every run: show where, not this one's name.
        model_dir_line = model_dir_line.replace(
            config.model_dir, f"{os.path.dirname(config.model_dir)}/<a new folder per run>")
    lines = [
        f"Python      {platform.python_version()} ({sys.executable})",
        f"TensorFlow  {tf.__version__}, Keras {keras.__version__}",
        f"CPUs        {os.cpu_count()} on this machine, {len(os.sched_getaffinity(0))} usable "
        "by this process",
        *_gpu_lines(gpus),
        f"CUDA/cuDNN  {distribute.built_for()}",
        f"LSTM        {_lstm_kernel(config, used_gpus)}",
        "Intra-op    " + (f"{threads} thread(s) per op" if threads
                          else "TensorFlow's choice (one per core)"),
        f"Strategy    {distribute.choose(config, tf_config, used_gpus)}, precision "
        f"{distribute.resolve_precision(config, used_gpus)}",
        f"TF_CONFIG   {tf_config_line}",
        f"model_dir   {model_dir_line}",
    ]
    return lines, problems


def _gpu_lines(gpus: list[Any]) -> list[str]:
    if not gpus:
        devices = ", ".join(d.name.removeprefix("/physical_device:")
                            for d in tf.config.list_physical_devices())
        return [f"GPUs: 0     (TensorFlow's physical devices: {devices})"]
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
    try:
        tf_config = cluster.parse_tf_config(os.environ.get("TF_CONFIG"))
        if tf_config:
            cluster.check_port_free(tf_config)
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


def _model_dir(path: str, problems: list[str]) -> str:
    """Whether the run could write to ``path``, tried by creating and deleting a file."""
    if "://" in path:
        error = _bounded(lambda: _try_write_remote(path), GCS_CHECK_SECS)
    else:
        error = _try_write_local(path)
    if error:
        problems.append(f"--model_dir={path} is not writable: {error}")
        return f"{path}: NOT writable ({error})"
    return f"{path}: writable"


def _try_write_local(path: str) -> str | None:
    """None if a file can be created where the run writes; else why not."""
    if os.path.exists(path) and not os.path.isdir(path):
        return "it is a file"
    existing = path  # The run creates the missing folders, in the nearest existing one.
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing) or "."
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".imdb-doctor-"):
            pass
    except OSError as error:
        return f"{error.strerror} in {existing}"
    return None


def _try_write_remote(path: str) -> str | None:
    probe = f"{path}/.imdb-doctor-{secrets.token_hex(4)}"
    try:
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("")
        tf.io.gfile.remove(probe)
    except tf.errors.OpError as error:
        return error.message.splitlines()[0]
    return None


def _bounded(check: Any, seconds: float) -> str | None:
    """Runs ``check`` in a daemon thread; a check still running after ``seconds`` is an error."""
    result: list[str | None] = []
    thread = threading.Thread(target=lambda: result.append(check()), daemon=True)
    thread.start()
    thread.join(seconds)
    return result[0] if result else f"no answer within {seconds:g} s (network, credentials?)"


def main(argv: list[str]) -> None:
    """Prints the report; exits 2 with the first problem's reason if there is one."""
    try:
        if len(argv) > 1:
            raise UserError(f"unexpected arguments {argv[1:]}; every setting is a --flag "
                            "(see --helpfull).")
        config = flags.to_config()
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
