"""Where a run's time goes: metrics.json's phases_sec and the last log line, on a real run."""

from __future__ import annotations

import json
import time

import pytest

from trainer import data, phases


def test_laps_add_up_to_the_total_and_training_splits_into_steps_and_the_rest():
    clock = phases.Phases(started=time.time() - 2.0)  # Two seconds of start-up before.
    clock.lap(phases.STARTUP)
    time.sleep(0.05)
    clock.lap(phases.TRAINING_STEPS)  # The whole fit call...
    clock.split_training(0.03, [0.01, 0.005])  # ... of which 0.03 s in training calls.
    report = clock.report()
    assert report[phases.STARTUP] >= 2.0
    assert report[phases.TRAINING_STEPS] == 0.03
    assert report[phases.BETWEEN_STEPS] == pytest.approx(0.02, abs=0.02)
    assert report["between_steps_per_epoch"] == [0.01, 0.005]
    assert report[phases.TOTAL] == pytest.approx(
        report[phases.STARTUP] + report[phases.TRAINING_STEPS] + report[phases.BETWEEN_STEPS],
        abs=0.05)
    assert clock.line().startswith("startup 2.")
    assert clock.line().endswith("s") and " | total " in clock.line()


def test_the_process_start_is_before_now():
    assert phases.process_start() <= time.time()


def test_epoch_datasets_do_not_autotune():
    # Autotuning's thread made deleting an exhausted epoch iterator wait 1-19 s at random:
    # the stalls between an epoch's last step and its epoch line (docs/performance.md).
    assert data._options().autotune.enabled is False


@pytest.mark.slow
def test_a_real_run_reports_its_phases(small_run):
    metrics = json.loads((small_run / "metrics.json").read_text())
    report = metrics["phases_sec"]
    named = [phases.STARTUP, phases.READING, phases.VECTORIZING, phases.MODEL,
             phases.TRAINING_STEPS, phases.BETWEEN_STEPS, phases.TEST, phases.OUTPUTS]
    assert set(report) == {*named, "between_steps_per_epoch", phases.TOTAL}
    assert all(report[name] >= 0 for name in named)
    assert report[phases.TRAINING_STEPS] > 0
    # The phases cover the run: what is left over is well under a second.
    assert sum(report[name] for name in named) == pytest.approx(report[phases.TOTAL], abs=1.0)
    # From the process's start, so at least the time the trainer itself measured.
    assert report[phases.TOTAL] >= metrics["wall_time_sec"]
    assert len(report["between_steps_per_epoch"]) == metrics["epochs_completed"]
    last = (small_run / "stderr.txt").read_text().strip().splitlines()[-1]
    assert "time by phase: startup " in last and " | total " in last
