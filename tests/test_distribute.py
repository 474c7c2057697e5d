"""trainer/distribute.py and cluster.py: TF_CONFIG checks, --require_gpu, the Runtime, chief."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO, trainer_env
from trainer import cluster, distribute, lstm
from trainer.config import Config
from trainer.errors import ClusterError, UserError

GOOD = {"cluster": {"worker": ["localhost:1111", "localhost:2222"]},
        "task": {"type": "worker", "index": 1}}


@pytest.mark.parametrize("raw, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', 'no "cluster"'),
    ('{"task": {"type": "worker", "index": 0}}', 'no "cluster"'),
    ('{"cluster": {}, "task": {"type": "worker", "index": 0}}', "is empty"),
    ('{"cluster": {"worker": "localhost:1"}, "task": {"type": "worker", "index": 0}}',
     "list of"),
    ('{"cluster": {"worker": ["localhost:1"]}}', 'no "task"'),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "chief", "index": 0}}',
     'task type "chief" is not in the cluster'),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "ps", "index": 0}}',
     'task type "ps" is not supported'),
    # TensorFlow's side-car evaluator is not listed in the cluster.
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "evaluator", "index": 0}}',
     'task type "evaluator" is not supported'),
    ('{"cluster": {"worker": ["localhost:1"], "evaluator": ["localhost:2"]}, '
     '"task": {"type": "worker", "index": 0}}', 'cluster has "evaluator" tasks'),
    ('{"cluster": {"worker": ["localhost:1"], "ps": ["localhost:2"]}, '
     '"task": {"type": "worker", "index": 0}}', 'cluster has "ps" tasks'),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}',
     "out of range"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": "0"}}',
     "out of range"),
])
def test_malformed_tf_config_says_what_is_wrong(raw, message):
    with pytest.raises(UserError, match=message) as error:
        cluster.parse_tf_config(raw)
    assert str(error.value).startswith("TF_CONFIG")
    assert "\n" not in str(error.value)


def test_valid_tf_config_and_none():
    assert cluster.parse_tf_config(json.dumps(GOOD)) == GOOD
    assert cluster.parse_tf_config("") is None
    assert cluster.parse_tf_config(None) is None


def test_vertex_ai_tf_config_with_a_chief_and_extra_keys_is_accepted():
    # As Vertex AI writes it for a chief pool and a worker pool.
    vertex = {"cluster": {"chief": ["cmle-training-workerpool0-ab-0:2222"],
                          "worker": ["cmle-training-workerpool1-ab-0:2222",
                                     "cmle-training-workerpool1-ab-1:2222"]},
              "environment": "cloud",
              "task": {"type": "chief", "index": 0, "trial": ""},
              "job": {"worker_pool_specs": [{"machine_spec": {"machine_type": "n1-standard-4"},
                                             "replica_count": 1}]}}
    assert cluster.parse_tf_config(json.dumps(vertex)) == vertex
    assert distribute.choose(Config(), vertex, num_gpus=0) == "multi_worker"


def test_moved_private_tensorflow_modules_are_one_line(monkeypatch):
    # What a TensorFlow upgrade that moves the coordination settings would look like.
    from tensorflow.compiler.xla.tsl import protobuf

    monkeypatch.delattr(protobuf, "coordination_config_pb2")
    monkeypatch.setitem(sys.modules, f"{protobuf.__name__}.coordination_config_pb2", None)
    with pytest.raises(UserError, match=r"^TF_CONFIG: multi-worker training needs") as error:
        cluster.configure_coordination(GOOD, 10)
    assert "\n" not in str(error.value)


def test_a_taken_port_is_refused_naming_the_address():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        tf_config = {"cluster": {"worker": [address, "127.0.0.1:1"]},
                     "task": {"type": "worker", "index": 0}}
        with pytest.raises(UserError, match=f"^TF_CONFIG: worker 0's address {address} cannot"):
            cluster.check_port_free(tf_config)
    cluster.check_port_free(tf_config)  # Free again.


def test_gpu_problems_name_what_tensorflow_sees_and_what_to_check():
    assert distribute.gpu_problem(Config(), num_gpus=0) is None
    assert distribute.gpu_problem(Config(require_gpu=True), num_gpus=1) is None
    message = distribute.gpu_problem(Config(require_gpu=True), num_gpus=0)
    assert message.startswith("--require_gpu: TensorFlow sees 0 GPUs (physical devices: CPU:0)")
    assert "CPU-only build" in message  # This machine's tensorflow-cpu.
    for check in ("nvidia-smi", "'.[gpu]'", "LD_LIBRARY_PATH", "python -m trainer.doctor"):
        assert check in message
    assert "--num_gpus=2 but TensorFlow sees 1" in distribute.gpu_problem(Config(num_gpus=2), 1)


def run_main(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer.main", *flags], cwd=REPO,
                          env=trainer_env(**(env or {})), capture_output=True, text=True,
                          timeout=120)


def assert_one_error_line(process: subprocess.CompletedProcess) -> str:
    """The one ``error: `` line a user sees; no traceback."""
    assert process.returncode == 2, process.stderr[-2000:]
    assert "Traceback" not in process.stderr
    errors = [line for line in process.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, process.stderr[-2000:]
    assert process.stderr.rstrip().endswith(errors[0])
    return errors[0]


@pytest.mark.slow
def test_require_gpu_on_a_cpu_stops_before_reading_data(tiny_archive, tmp_path):
    process = run_main("--require_gpu", f"--data_path={tiny_archive}",
                       f"--model_dir={tmp_path / 'run'}")
    line = assert_one_error_line(process)
    assert line.startswith("error: --require_gpu: TensorFlow sees 0 GPUs")
    assert "python -m trainer.doctor" in line
    assert "data:" not in process.stderr  # The line that reports the reviews read.
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_taken_tf_config_port_is_one_line_at_once(tiny_archive, tmp_path):
    with socket.socket() as taken:  # Another program holds worker 0's port.
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        tf_config = {"cluster": {"worker": [address, "127.0.0.1:1"]},
                     "task": {"type": "worker", "index": 0}}
        process = run_main("--strategy=multi_worker", f"--data_path={tiny_archive}",
                           f"--model_dir={tmp_path / 'run'}", "--cluster_timeout_secs=600",
                           env={"TF_CONFIG": json.dumps(tf_config)})
    line = assert_one_error_line(process)
    assert line.startswith(f"error: TF_CONFIG: worker 0's address {address} cannot be used")
    assert "gRPC" not in process.stderr


def test_outside_a_cluster_this_process_is_chief_and_writes_in_place(tmp_path):
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    assert cluster.is_chief(strategy)
    assert cluster.private_dir(str(tmp_path), strategy) == str(tmp_path)
    assert distribute.strategy_name(strategy) == "default"


def test_the_runtime_describes_this_cpu_machine_once():
    runtime = distribute.make_runtime(Config())
    assert (runtime.num_gpus, runtime.chief, runtime.precision, runtime.num_workers) == (
        0, True, "float32", 1)
    assert (runtime.strategy_name, runtime.num_replicas) == ("default", 1)


def test_auto_precision_follows_the_gpus_an_explicit_one_is_kept():
    assert distribute.resolve_precision(Config(), num_gpus=0) == "float32"
    assert distribute.resolve_precision(Config(), num_gpus=2) == "mixed_float16"
    assert distribute.resolve_precision(Config(precision="float32"), num_gpus=2) == "float32"


def test_tf_config_read_before_tensorflow_starts_names_the_chief():
    assert cluster.is_chief_task(None)
    assert not cluster.is_chief_task(GOOD)  # Worker 1.
    assert cluster.is_chief_task({**GOOD, "task": {"type": "worker", "index": 0}})
    with_chief = {"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                  "task": {"type": "worker", "index": 0}}
    assert not cluster.is_chief_task(with_chief)


def test_a_resolved_cluster_names_the_same_chief_as_tf_config():
    import tensorflow as tf

    for tf_config in (GOOD, {**GOOD, "task": {"type": "worker", "index": 0}},
                      {"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                       "task": {"type": "worker", "index": 0}},
                      {"cluster": {"chief": ["a:1"], "worker": ["b:1"]},
                       "task": {"type": "chief", "index": 0}}):
        task = tf_config["task"]
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(tf_config["cluster"]), task_type=task["type"],
            task_id=task["index"])
        strategy = type("FakeStrategy", (), {"cluster_resolver": resolver})()
        assert cluster.is_chief(strategy) == cluster.is_chief_task(tf_config), tf_config


def test_a_lost_worker_is_named_in_one_readable_line():
    import tensorflow as tf

    message = """Graph execution error:

Detected at node while/cond_2/adam/CollectiveReduceV2 defined at (most recent call last):
  File "/work/main/trainer/main.py", line 59, in <module>
  File "/work/main/trainer/loop.py", line 181, in train_steps

Collective ops is aborted by: recvmsg:Connection reset by peer
Additional GRPC error information from remote target /job:worker/replica:0/task:1:
:UNKNOWN:Error received from peer  {grpc_status:14}
The error could be from a previous operation. Restart your program to reset.
\t [[{{node while/cond_2/adam/CollectiveReduceV2}}]] [Op:__inference_train_steps_2307]"""
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": ["localhost:1", "localhost:2"]}), "worker", 0)
    strategy = type("FakeStrategy", (), {"cluster_resolver": resolver})()
    with (pytest.raises(ClusterError) as error,
          cluster.lost_workers_stop(strategy, "gs://bucket/run/checkpoints")):
        raise tf.errors.UnavailableError(None, None, message)
    assert str(error.value) == (
        "lost contact with another worker (Collective ops is aborted by: recvmsg:Connection "
        "reset by peer); every worker stops. Start all of them again with the same command to "
        "resume from the last checkpoint in gs://bucket/run/checkpoints.")
    # One process alone has no one to lose: its errors stay what they are.
    with (pytest.raises(tf.errors.UnavailableError),
          cluster.lost_workers_stop(tf.distribute.get_strategy(), "ckpt")):
        raise tf.errors.UnavailableError(None, None, message)


@pytest.mark.parametrize("strategy, cluster, gpus, cpu_replicas, expected", [
    ("auto", None, 0, 0, "default"),            # A laptop: no GPU.
    ("auto", None, 1, 0, "one_device"),         # One GPU.
    ("auto", None, 4, 0, "mirrored"),           # A multi-GPU VM (or --num_gpus=4 of 8).
    ("auto", None, 0, 2, "mirrored"),           # --cpu_replicas=2: mirrored on a CPU.
    ("auto", GOOD, 4, 0, "multi_worker"),       # TF_CONFIG naming two workers wins.
    ("auto", {"cluster": {"worker": ["localhost:1"]},
              "task": {"type": "worker", "index": 0}}, 2, 0, "mirrored"),  # One task alone.
    ("mirrored", None, 0, 0, "mirrored"),       # An explicit choice is kept.
])
def test_auto_picks_the_strategy_for_the_hardware(strategy, cluster, gpus, cpu_replicas,
                                                  expected):
    config = Config(strategy=strategy, cpu_replicas=cpu_replicas)
    assert distribute.choose(config, cluster, num_gpus=gpus) == expected


@pytest.mark.parametrize("changes, gpus, cores, expected", [
    ({}, 0, 2, 1),                                # LeanLSTM on a CPU: one thread per op.
    ({}, 0, 16, 1),                               # Batch 32: 4 chains of 8 rows, one thread.
    ({"batch_size": 64}, 0, 16, 1),               # 8 chains of 8 rows; no threads from the rest.
    ({"batch_size": 64, "cpu_replicas": 2}, 0, 16, 1),  # 8 cores a replica: 4 chains of 8.
    ({}, 1, 2, 0),                                # A GPU runs cuDNN: TensorFlow's choice.
    ({"lean_lstm": False}, 0, 2, 0),              # Keras' LSTM (--article_settings).
    ({"intra_op_threads": 2}, 0, 2, 2),           # An explicit value is kept...
    ({"intra_op_threads": 0, "lean_lstm": True}, 0, 2, 0),  # ...0 included.
])
def test_intra_op_threads_default_to_one_for_leanlstm_on_a_cpu(monkeypatch, changes, gpus,
                                                               cores, expected):
    monkeypatch.setattr(lstm, "usable_cores", lambda: cores)  # This machine has 2.
    assert distribute.intra_op_threads(Config(**changes), num_gpus=gpus) == expected
