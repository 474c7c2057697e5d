"""trainer/distribute.py: TF_CONFIG checks and who writes."""

from __future__ import annotations

import json

import pytest

from trainer import distribute
from trainer.errors import UserError

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
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "ps", "index": 0}}',
     'task type "ps" is not in the cluster'),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}',
     "out of range"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": "0"}}',
     "out of range"),
])
def test_malformed_tf_config_says_what_is_wrong(raw, message):
    with pytest.raises(UserError, match=message) as error:
        distribute.parse_tf_config(raw)
    assert str(error.value).startswith("TF_CONFIG")
    assert "\n" not in str(error.value)


def test_valid_tf_config_and_none():
    assert distribute.parse_tf_config(json.dumps(GOOD)) == GOOD
    assert distribute.parse_tf_config("") is None
    assert distribute.parse_tf_config(None) is None


def test_outside_a_cluster_this_process_is_chief_and_writes_in_place(tmp_path):
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    assert distribute.is_chief(strategy)
    assert distribute.private_dir(str(tmp_path), strategy) == str(tmp_path)
    assert distribute.strategy_name(strategy) == "default"


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
    cluster = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": ["localhost:1", "localhost:2"]}), "worker", 0)
    strategy = type("FakeStrategy", (), {"cluster_resolver": cluster})()
    with (pytest.raises(distribute.ClusterError) as error,
          distribute.lost_workers_stop(strategy, "gs://bucket/run/checkpoints")):
        raise tf.errors.UnavailableError(None, None, message)
    assert str(error.value) == (
        "lost contact with another worker (Collective ops is aborted by: recvmsg:Connection "
        "reset by peer); every worker stops. Start all of them again with the same command to "
        "resume from the last checkpoint in gs://bucket/run/checkpoints.")
    # One process alone has no one to lose: its errors stay what they are.
    with (pytest.raises(tf.errors.UnavailableError),
          distribute.lost_workers_stop(tf.distribute.get_strategy(), "ckpt")):
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
    from trainer.config import Config

    config = Config(strategy=strategy, cpu_replicas=cpu_replicas)
    assert distribute.choose(config, cluster, num_gpus=gpus) == expected


@pytest.mark.parametrize("changes, gpus, expected", [
    ({}, 0, 1),                                   # LeanLSTM on a CPU: one thread per op.
    ({}, 1, 0),                                   # A GPU runs cuDNN: TensorFlow's choice.
    ({"lean_lstm": False}, 0, 0),                 # Keras' LSTM (--article_settings).
    ({"intra_op_threads": 2}, 0, 2),              # An explicit value is kept...
    ({"intra_op_threads": 0, "lean_lstm": True}, 0, 0),  # ...0 included.
])
def test_intra_op_threads_default_to_one_for_leanlstm_on_a_cpu(changes, gpus, expected):
    from trainer.config import Config

    assert distribute.intra_op_threads(Config(**changes), num_gpus=gpus) == expected
