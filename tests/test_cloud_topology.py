"""The cluster a Vertex AI job with REPLICAS=2 runs, on this machine: a chief and a worker.

Vertex AI gives workerpool0 the task type ``chief`` (not ``worker`` 0, as
launch/multiworker.sh does) and adds keys TensorFlow does not use to TF_CONFIG:
``environment: "cloud"``, ``job`` (the job's spec) and a ``trial`` in ``task``
(see AI Platform's "TF_CONFIG and distributed training"). Two real trainer
processes on loopback ports get exactly that shape and one shared --model_dir.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, free_ports, trainer_env

# The job spec as Vertex AI puts it into TF_CONFIG; either form must be accepted.
JOB = {"worker_pool_specs": [
    {"machine_spec": {"machine_type": "n1-standard-8"}, "replica_count": 1,
     "container_spec": {"image_uri": "europe-west4-docker.pkg.dev/p/tf-imdb/trainer:abc1234"}},
    {"machine_spec": {"machine_type": "n1-standard-8"}, "replica_count": 1,
     "container_spec": {"image_uri": "europe-west4-docker.pkg.dev/p/tf-imdb/trainer:abc1234"}},
]}


def vertex_tf_config(chief: str, worker: str, task_type: str, job: object) -> str:
    """TF_CONFIG in the shape Vertex AI writes for a chief pool and a worker pool."""
    return json.dumps({
        "cluster": {"chief": [chief], "worker": [worker]},
        "environment": "cloud",
        "task": {"type": task_type, "index": 0, "trial": ""},
        "job": job,
    })


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_chief_and_worker_train_together_and_only_the_chief_writes(small_aclimdb, tmp_path):
    chief_port, worker_port = free_ports(2)
    chief, worker = f"localhost:{chief_port}", f"localhost:{worker_port}"
    model_dir = tmp_path / "model"
    flags = ["--smoke_test", f"--data_path={small_aclimdb}", "--max_train_examples=400",
             "--max_test_examples=200", "--max_len=64", "--epochs=1", "--strategy=multi_worker",
             f"--model_dir={model_dir}"]
    processes = {}
    # The chief gets the job as an object, the worker as a JSON string: both are seen.
    for task_type, job in (("chief", JOB), ("worker", json.dumps(JOB))):
        env = trainer_env(TF_CONFIG=vertex_tf_config(chief, worker, task_type, job))
        log = (tmp_path / f"{task_type}.log").open("w")
        processes[task_type] = (subprocess.Popen(
            [sys.executable, "-m", "trainer.main", *flags], cwd=REPO, env=env, stdout=log,
            stderr=subprocess.STDOUT), log)
    codes = {}
    for task_type, (process, log) in processes.items():
        try:
            codes[task_type] = process.wait(timeout=600)
        finally:
            process.kill()
            log.close()
    logs = {t: (tmp_path / f"{t}.log").read_text() for t in processes}
    assert codes == {"chief": 0, "worker": 0}, "\n".join(
        f"--- {t} (exit {codes.get(t)})\n{text[-3000:]}" for t, text in logs.items())

    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["strategy"] == "multi_worker" and metrics["num_replicas"] == 2
    assert list((model_dir / "export").glob("**/saved_model.pb"))
    written = files_under(model_dir)
    # One TensorBoard writer per folder: a second process writing there would add a file.
    event_dirs = [Path(f).parent for f in written if "tfevents" in Path(f).name]
    assert event_dirs and len(event_dirs) == len(set(event_dirs)), written
    # Nothing of the worker's is left: its share of each checkpoint went to a scratch folder.
    assert not [f for f in written if "worker" in f.lower() or "temp" in f.lower()], written
    assert "wrote" not in logs["worker"] and "wrote" in logs["chief"]
