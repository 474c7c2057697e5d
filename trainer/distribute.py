"""The strategy factory and the Runtime: what this process trains on.

``make_runtime`` must be the process's first TensorFlow work: device splitting
and MultiWorkerMirroredStrategy both have to happen before TensorFlow
initializes its devices. It probes the GPUs once; everything else reads the
``Runtime`` it returns (strategy, GPUs, chief, precision, workers) instead of
asking TensorFlow again. The cluster itself (TF_CONFIG, coordination, lost
workers, who is chief) is ``trainer.cluster``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import tensorflow as tf
from absl import logging

from trainer import cluster, lstm
from trainer.config import Config
from trainer.errors import UserError

MIRRORED_ON_ONE_DEVICE = (
    "--strategy=mirrored sees one device here: it runs one replica; use --cpu_replicas=2 to "
    "try two replicas on a CPU, or a machine with several GPUs.")


@dataclasses.dataclass(frozen=True)
class Runtime:
    """What the run trains on, decided once at start-up.

    Attributes:
      strategy: the tf.distribute strategy every replica runs under.
      num_gpus: GPUs this process uses (after --num_gpus); 0 on a CPU.
      chief: whether this process writes the shared outputs.
      precision: the Keras dtype policy (``--precision``, ``auto`` resolved).
      num_workers: processes training together (1 outside a cluster).
    """

    strategy: tf.distribute.Strategy
    num_gpus: int
    chief: bool
    precision: str
    num_workers: int

    @property
    def strategy_name(self) -> str:
        """The --strategy value the strategy stands for (logs, metrics.json)."""
        return strategy_name(self.strategy)

    @property
    def num_replicas(self) -> int:
        """Replicas in sync, over all workers."""
        return self.strategy.num_replicas_in_sync


def make_runtime(config: Config) -> Runtime:
    """Creates the strategy ``config.strategy`` names and describes what it runs on.

    Raises:
      UserError: TF_CONFIG is malformed, or the named strategy cannot run here.
      ClusterError: a worker named in TF_CONFIG did not start in time.
    """
    tf_config = cluster.parse_tf_config(os.environ.get("TF_CONFIG"))
    # Only physical-device calls until the strategy exists: listing logical devices
    # initializes TensorFlow, after which collectives can no longer be configured.
    num_gpus = _configure_gpus(config)
    set_intra_op_threads(intra_op_threads(config, num_gpus))
    name = choose(config, tf_config, num_gpus=num_gpus)
    if name == "multi_worker":
        strategy = cluster.make_multi_worker_strategy(tf_config, config.cluster_timeout_secs)
    elif name == "tpu":
        strategy = _make_tpu_strategy()
    else:
        strategy = _make_local_strategy(config, name)
    return Runtime(strategy=strategy, num_gpus=num_gpus, chief=cluster.is_chief(strategy),
                   precision=resolve_precision(config, num_gpus),
                   num_workers=cluster.num_workers(strategy))


def _make_local_strategy(config: Config, name: str) -> tf.distribute.Strategy:
    """The default, one_device or mirrored strategy over this process's devices."""
    if config.cpu_replicas:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * config.cpu_replicas)
    if name == "default":
        return tf.distribute.get_strategy()
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(devices[0].name)
    if len(devices) == 1:
        logging.warning(MIRRORED_ON_ONE_DEVICE)
    return tf.distribute.MirroredStrategy([d.name for d in devices])


def resolve_precision(config: Config, num_gpus: int) -> str:
    """The Keras dtype policy: ``auto`` is mixed_float16 with a GPU, float32 without.

    Args:
      config: precision.
      num_gpus: GPUs the run uses.
    """
    if config.precision != "auto":
        return config.precision
    return "mixed_float16" if num_gpus else "float32"


def choose(config: Config, tf_config: dict[str, Any] | None, num_gpus: int) -> str:
    """The strategy to build: ``config.strategy``, or what ``auto`` means on this hardware.

    Args:
      config: strategy and cpu_replicas.
      tf_config: the parsed TF_CONFIG, if any.
      num_gpus: GPUs the run will use (after --num_gpus).
    """
    if config.strategy != "auto":
        return config.strategy
    if tf_config and cluster.num_tasks(tf_config["cluster"]) > 1:
        return "multi_worker"
    if num_gpus > 1 or (not num_gpus and config.cpu_replicas > 1):
        return "mirrored"
    return "one_device" if num_gpus == 1 else "default"


def _configure_gpus(config: Config) -> int:
    """Applies --require_gpu and --num_gpus; returns how many GPUs the run will use."""
    gpus = tf.config.list_physical_devices("GPU")
    problem = gpu_problem(config, len(gpus))
    if problem:
        raise UserError(problem)
    if config.num_gpus:
        gpus = gpus[:config.num_gpus]
        tf.config.set_visible_devices(gpus, "GPU")
    for gpu in gpus:
        # Take memory as needed, so several workers can share a GPU host.
        tf.config.experimental.set_memory_growth(gpu, True)
    return len(gpus)


def gpu_problem(config: Config, num_gpus: int) -> str | None:
    """Why the run cannot use the GPUs it asks for (one line), or None.

    Args:
      config: require_gpu and num_gpus.
      num_gpus: physical GPUs TensorFlow sees.
    """
    if config.require_gpu and not num_gpus:
        return no_gpu_message()
    if config.num_gpus > num_gpus:
        return (f"--num_gpus={config.num_gpus} but TensorFlow sees {num_gpus} GPU(s); use "
                "--num_gpus=0 for all of them.")
    return None


def built_for() -> str:
    """The CUDA and cuDNN versions this TensorFlow was built for, or that it is CPU-only."""
    info = tf.sysconfig.get_build_info()
    if not info.get("is_cuda_build"):
        return "this TensorFlow is a CPU-only build (no CUDA)"
    return (f"this TensorFlow was built for CUDA {info.get('cuda_version', '?')} and cuDNN "
            f"{info.get('cudnn_version', '?')}")


def physical_devices() -> str:
    """The physical devices TensorFlow sees, e.g. ``CPU:0, GPU:0``; ``none`` if it sees none."""
    return ", ".join(d.name.removeprefix("/physical_device:")
                     for d in tf.config.list_physical_devices()) or "none"


def no_gpu_message() -> str:
    """What --require_gpu says on a machine where TensorFlow sees no GPU."""
    return (f"--require_gpu: TensorFlow sees 0 GPUs (physical devices: {physical_devices()}); "
            f"{built_for()}. Check that nvidia-smi lists the GPU, that the '.[gpu]' extra is "
            "installed (not '.[cpu]'), that LD_LIBRARY_PATH reaches the nvidia pip libraries "
            "(site-packages/nvidia/*/lib) with no other CUDA ahead of them, and run python -m "
            "trainer.doctor.")


def intra_op_threads(config: Config, num_gpus: int) -> int:
    """The threads one op may use: ``--intra_op_threads``, or LeanLSTM's policy on a CPU.

    LeanLSTM runs one fused recurrence per usable core (``lstm.cpu_policy``),
    each a long series of small steps; letting every step's matmul split across
    cores as well only adds a hand-off per step, so the pool gets one thread.

    Args:
      config: intra_op_threads (None for this default) and lean_lstm.
      num_gpus: GPUs the run will use; with any, the LSTM runs on cuDNN.

    Returns:
      A thread count for TensorFlow's intra-op pool; 0 leaves TensorFlow's own choice.
    """
    if config.intra_op_threads is not None:
        return config.intra_op_threads
    if not config.lean_lstm or num_gpus:
        return 0
    replicas = max(1, config.cpu_replicas)
    return lstm.cpu_policy(lstm.usable_cores(), config.batch_size // replicas,
                           replicas=replicas)[1]


def set_intra_op_threads(threads: int) -> None:
    """Sizes TensorFlow's intra-op pool, which is possible only before TensorFlow starts.

    A second run in the same process (tests, notebooks) keeps the first run's
    pool, with a warning: that changes speed only, never a result.
    """
    if tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:
        logging.warning("TensorFlow already started in this process: keeping its intra-op "
                        "threads at %d instead of %d (speed only).",
                        tf.config.threading.get_intra_op_parallelism_threads(), threads)


def _make_tpu_strategy() -> tf.distribute.Strategy:
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        raise UserError(f"--strategy=tpu but no TPU was found ({error}); run on a TPU VM or "
                        "pick another --strategy.") from None
    return tf.distribute.TPUStrategy(resolver)


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The --strategy value that stands for ``strategy`` (for logs and metrics.json)."""
    return {
        "MirroredStrategy": "mirrored",
        "OneDeviceStrategy": "one_device",
        "MultiWorkerMirroredStrategy": "multi_worker",
        "CollectiveAllReduceStrategy": "multi_worker",
        "TPUStrategy": "tpu",
    }.get(type(strategy).__name__, "default")


