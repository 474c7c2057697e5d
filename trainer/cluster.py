"""The cluster a run belongs to: TF_CONFIG, who is chief, coordination, lost workers.

Everything here is about processes, not devices: parsing and checking
TF_CONFIG, creating MultiWorkerMirroredStrategy with a deadline for workers
that never start (the coordination service, whose settings only TensorFlow's
private modules reach, imported here and only on the multi-worker path),
turning a lost worker into one line, and which process writes the shared
outputs. ``trainer.distribute`` builds the strategy and calls in here for the
multi-worker case.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from trainer.errors import ClusterError, UserError

# The task types this trainer runs; an evaluator or parameter server has no code here.
TASK_TYPES = ("chief", "worker")

# What collectives raise when a peer process is gone or silent.
LOST_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                    tf.errors.CancelledError, tf.errors.DeadlineExceededError)

_EXAMPLE = ('{"cluster": {"worker": ["host0:port", "host1:port"]}, '
            '"task": {"type": "worker", "index": 0}}')


def parse_tf_config(raw: str | None) -> dict[str, Any] | None:
    """Parses and checks a TF_CONFIG value; None when it is unset or empty.

    Keys other than "cluster" and "task" (Vertex AI adds "environment" and
    "job") are kept and ignored.

    Args:
      raw: the TF_CONFIG environment variable.

    Returns:
      The parsed cluster description.

    Raises:
      UserError: with one line saying what is wrong, for anything that would
        otherwise make TensorFlow crash or wait forever for a worker.
    """
    if not raw or not raw.strip():
        return None
    try:
        tf_config = json.loads(raw)
    except ValueError as error:
        raise UserError(f"TF_CONFIG is not valid JSON ({error}); expected e.g. "
                        f"{_EXAMPLE}.") from None
    if not isinstance(tf_config, dict) or not isinstance(tf_config.get("cluster"), dict):
        raise UserError('TF_CONFIG has no "cluster" object naming the workers, e.g. '
                        '{"cluster": {"worker": ["host0:port", "host1:port"]}, ...}.')
    _check_cluster(tf_config["cluster"])
    _check_task(tf_config.get("task"), tf_config["cluster"])
    return tf_config


def _check_cluster(cluster: dict[str, Any]) -> None:
    if not cluster:
        raise UserError('TF_CONFIG "cluster" is empty; list the workers\' host:port addresses.')
    for task_type, addresses in cluster.items():
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and ":" in a for a in addresses)):
            raise UserError(f'TF_CONFIG cluster "{task_type}" must be a non-empty list of '
                            f'"host:port" strings, not {json.dumps(addresses)}.')
        if task_type not in TASK_TYPES:
            raise UserError(f'TF_CONFIG cluster has "{task_type}" tasks, which this trainer does '
                            'not run (it validates and tests inside the training job): list '
                            'only "chief" and "worker" tasks.')


def _check_task(task: Any, cluster: dict[str, Any]) -> None:
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise UserError('TF_CONFIG has no "task" with "type" and "index": each process must '
                        'say which cluster member it is, e.g. {"type": "worker", "index": 0}.')
    task_type, index = task["type"], task["index"]
    if task_type not in TASK_TYPES:
        # TensorFlow's side-car evaluator is not listed in "cluster"; it would crash later.
        raise UserError(f'TF_CONFIG task type {json.dumps(task_type)} is not supported: this '
                        'trainer runs only "chief" and "worker" tasks (it validates and tests '
                        'inside the training job); start only those.')
    if task_type not in cluster:
        raise UserError(f'TF_CONFIG task type "{task_type}" is not in the cluster '
                        f'({", ".join(cluster)}).')
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(
            cluster[task_type]):
        raise UserError(f'TF_CONFIG task index {json.dumps(index)} is out of range: cluster '
                        f'"{task_type}" has {len(cluster[task_type])} task(s), indices 0 to '
                        f"{len(cluster[task_type]) - 1}.")


def num_tasks(cluster: dict[str, Any]) -> int:
    """Processes a TF_CONFIG-style cluster names, over all its jobs."""
    return sum(len(tasks) for tasks in cluster.values())


def leader_job(cluster: dict[str, Any]) -> str:
    """The job whose task 0 leads coordination: the chief if there is one, else worker 0."""
    return "chief" if "chief" in cluster else "worker"


def task_address(tf_config: dict[str, Any]) -> str:
    """This process's ``host:port`` in a parsed TF_CONFIG."""
    task = tf_config["task"]
    return tf_config["cluster"][task["type"]][task["index"]]


def is_chief_task(tf_config: dict[str, Any] | None) -> bool:
    """Whether a parsed TF_CONFIG (read before TensorFlow starts) makes this process chief.

    The ``chief`` task, or worker 0 when the cluster has no chief; any process
    without TF_CONFIG.
    """
    if not tf_config:
        return True
    task = tf_config["task"]
    return task["type"] == "chief" or (task["type"] == "worker" and task["index"] == 0
                                       and "chief" not in tf_config["cluster"])


def check_port_free(tf_config: dict[str, Any]) -> None:
    """Refuses a TF_CONFIG whose port for this task is already taken on this machine.

    TensorFlow's own failure is a traceback ("Could not start gRPC server") on
    this worker and a long wait on the others. Its server listens on every
    interface, so the port is tried there too. Only "address in use" is
    reported: an address of another machine is TensorFlow's to judge.

    Raises:
      UserError: naming the address and what to do.
    """
    address = task_address(tf_config)
    port = address.rpartition(":")[2]
    if not port.isdigit():
        raise UserError(f"TF_CONFIG: this task's address {address!r} has no port number; "
                        'write it as "host:port".')
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As gRPC does: a port left in TIME_WAIT by a finished run is free to use.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", int(port)))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                return
            task = tf_config["task"]
            raise UserError(
                f"TF_CONFIG: {task['type']} {task['index']}'s address {address} cannot be "
                f"used: port {port} is already taken on this machine (another trainer still "
                "running, or another program). Stop that process, or give this task a free "
                "port in TF_CONFIG on every worker.") from None


def make_multi_worker_strategy(tf_config: dict[str, Any] | None,
                               timeout_secs: int) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy for TF_CONFIG's cluster, giving up after ``timeout_secs``.

    Args:
      tf_config: the parsed TF_CONFIG; None is a valid one-worker cluster.
      timeout_secs: how long every worker waits for all of them to start.

    Raises:
      UserError: this task's port is taken, or TensorFlow moved its coordination settings.
      ClusterError: a worker named in TF_CONFIG did not start in time.
    """
    if tf_config:
        check_port_free(tf_config)
        configure_coordination(tf_config, timeout_secs)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except LOST_PEER_ERRORS as error:
        raise ClusterError(
            f"the cluster did not come together within --cluster_timeout_secs="
            f"{timeout_secs}: {_missing(error, tf_config)}. Start every "
            "worker named in TF_CONFIG, each with its own task index.") from None


def configure_coordination(tf_config: dict[str, Any], timeout_secs: int) -> None:
    """Sets up the coordination service MultiWorkerMirroredStrategy would, with a deadline.

    The strategy's own set-up lets worker 0 wait forever for a worker that never
    starts. With ``cluster_register_with_barrier`` every task, the leader
    included, gives up after ``timeout_secs``. Its heartbeats (10 s by default)
    are what make the survivors stop when a worker dies silently mid-run.
    TensorFlow has no public API for these settings: this is the one place that
    imports its private modules, and only the multi-worker path calls it.

    Raises:
      UserError: this TensorFlow no longer has the modules where they are looked for.
    """
    try:
        from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
        from tensorflow.python.eager import context
    except ImportError as error:
        raise UserError(
            f"TF_CONFIG: multi-worker training needs TensorFlow's coordination service "
            f"settings, which TensorFlow {tf.__version__} no longer has where this trainer "
            f"looks ({error}); install the TensorFlow version setup.py names, or run without "
            "TF_CONFIG.") from None
    cluster = tf_config["cluster"]
    leader = f"/job:{leader_job(cluster)}/replica:0/task:0"
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=leader,
        cluster_register_timeout_in_ms=timeout_secs * 1000,
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(tasks))
                          for job, tasks in cluster.items() if job in TASK_TYPES])
    context.context().coordination_service.cluster_register_with_barrier = True


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Processes training together: the tasks of TF_CONFIG's cluster, else 1."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    return max(1, num_tasks(resolver.cluster_spec().as_dict()))


def task(strategy: tf.distribute.Strategy) -> tuple[str | None, int]:
    """(task type, task index) of this process; (None, 0) outside a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, 0
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the shared outputs.

    ``is_chief_task``'s rule, asked of the cluster TensorFlow resolved for the
    strategy rather than of TF_CONFIG: any process outside a cluster is chief.
    """
    task_type, task_id = task(strategy)
    if task_type is None:
        return True
    return is_chief_task({"cluster": strategy.cluster_resolver.cluster_spec().as_dict(),
                          "task": {"type": task_type, "index": task_id}})


def private_dir(path: str, strategy: tf.distribute.Strategy) -> str:
    """``path`` for the chief; a fresh temporary folder for other workers.

    Every worker must take part in saving a distributed checkpoint, but only
    the chief's copy is kept: the others write to a folder that
    ``remove_private_dir`` deletes at the end.
    """
    if is_chief(strategy):
        return path
    task_type, task_id = task(strategy)
    return tempfile.mkdtemp(prefix=f"imdb-{task_type}{task_id}-")


def remove_private_dir(path: str, shared_path: str) -> None:
    """Deletes a folder made by ``private_dir`` (never the shared one)."""
    if path != shared_path:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def lost_workers_stop(strategy: tf.distribute.Strategy, checkpoint_dir: str) -> Iterator[None]:
    """Turns a collective failing on a lost peer into ClusterError, with what to do next.

    When a worker dies, the others' collectives fail at once (connection reset)
    or when its heartbeats stop; TensorFlow's message is a page of RPC detail.
    """
    try:
        yield
    except LOST_PEER_ERRORS as error:
        if num_workers(strategy) == 1:
            raise
        raise ClusterError(
            f"lost contact with another worker ({_first_line(error)}); every worker stops. "
            f"Start all of them again with the same command to resume from the last "
            f"checkpoint in {checkpoint_dir}.") from None


def _first_line(error: tf.errors.OpError) -> str:
    """The line of a TensorFlow error that says what happened, without the RPC detail."""
    noise = ("Graph execution error", "Detected at node", "File ", "Additional GRPC", ":UNKNOWN",
             "[[", "The error could be")
    lines = [re.sub(r"^\{\{[^}]*\}\}", "", line).strip() for line in error.message.splitlines()]
    useful = [line for line in lines if line and not line.startswith(noise)]
    if not useful:
        return type(error).__name__
    first = useful[0]
    if first.endswith(":") and len(useful) > 1:  # "... unhealthy (stopped sending heartbeats):"
        first += " " + useful[1]
    return first[:200]


def _missing(error: tf.errors.OpError, tf_config: dict[str, Any] | None) -> str:
    """Who the cluster waited for, from a failed start."""
    # The leader lists who never registered, one per line after "Some timed out task names:".
    listed = error.message.partition("timed out task names:")[2].strip().splitlines()
    tasks = []
    for line in listed:
        found = re.fullmatch(r"/job:(\w+)/replica:\d+/task:(\d+)", line.strip())
        if not found:
            break
        tasks.append(f"{found[1]} {found[2]}")
    if tasks:
        return "no word from " + ", ".join(dict.fromkeys(tasks))
    if not tf_config:
        return "no answer from the cluster's leader"
    job = leader_job(tf_config["cluster"])
    return f"no answer from {job} 0 at {tf_config['cluster'][job][0]}, which leads the cluster"
