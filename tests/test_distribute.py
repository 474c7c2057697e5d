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
