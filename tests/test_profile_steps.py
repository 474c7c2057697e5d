"""--profile_steps on the real trainer: a profile whose overview page measures step time.

TensorBoard's Profile tab is xprof; these tests read a trace with xprof's own
converter (``xprof.convert.raw_to_tool_data``, what the tab calls), so a trace
that xprof cannot split into steps fails here, not in front of a person.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_loop import Recorder, fit, make_loop, tiny_config, tiny_datasets
from trainer import summaries


def tool_data(trace: Path, tool: str) -> list[dict]:
    """One Profile-tab tool's tables for a trace, as xprof converts it for TensorBoard."""
    from xprof.convert import raw_to_tool_data

    data, _ = raw_to_tool_data.xspace_to_tool_data([str(trace)], tool, {})
    return json.loads(data)


def step_table(tables: list[dict]) -> dict:
    """The table of steps (its rows: ``train <step>``, then each part of the step's time)."""
    return next(table for table in tables
                if "steptime_ms_average" in (table.get("p") or {}))


def assert_profile_measures_steps(trace: Path, steps: list[int]) -> None:
    """The overview page and the input-pipeline analysis both see ``steps``, with a time."""
    overview = step_table(tool_data(trace, "overview_page"))
    assert [row["c"][0]["v"] for row in overview["rows"]] == [f"train {s}" for s in steps]
    assert float(overview["p"]["steptime_ms_average"]) > 0
    assert "No step time measured" not in overview["p"]["input_conclusion"]
    pipeline = step_table(tool_data(trace, "input_pipeline_analyzer"))
    assert len(pipeline["rows"]) == len(steps)
    assert all(row["c"][-1]["v"] > 0 for row in pipeline["rows"])  # stepTimeMs.
    assert "No step time measured" not in pipeline["p"]["input_conclusion"]


def the_trace(tensorboard_dir: Path) -> Path:
    [trace] = tensorboard_dir.glob("plugins/profile/*/*.xplane.pb")
    return trace


@pytest.mark.slow
@pytest.mark.xdist_group("small_run")  # Built once, on the process that runs test_summaries.
def test_the_small_runs_profile_has_a_step_time_for_each_step(small_run):
    # --profile_steps=3,5 with one step per call (--steps_per_loop=1, the default).
    assert_profile_measures_steps(the_trace(small_run / "tensorboard"), [3, 4, 5])


@pytest.mark.slow
def test_a_window_inside_one_loop_call_is_profiled_step_by_step(run_trainer, small_aclimdb,
                                                                tmp_path):
    # --steps_per_loop=8: steps 6-9 lie inside one call (steps 1-8) and the next (9-16).
    model_dir = tmp_path / "run"
    process = run_trainer(f"--data_path={small_aclimdb}", f"--model_dir={model_dir}",
                          "--epochs=1", "--max_len=32", "--vocab_size=200",
                          "--lstm_units=8", "--steps_per_loop=8", "--profile_steps=6,9")
    assert process.returncode == 0, process.stderr[-3000:]
    assert "traced steps 6-9" in process.stderr
    assert_profile_measures_steps(the_trace(model_dir / "tensorboard"), [6, 7, 8, 9])


class Profiled(Recorder):
    """A reporter whose calls follow a profiler window's schedule, without tracing."""

    def __init__(self, window: tuple[int, int], steps_per_loop: int):
        super().__init__()
        self.window = summaries.ProfilerWindow(window, steps_per_loop, "", trace=False)
        self.one_step_calls: list[int] = []

    def train_call(self, step):
        one_step = self.window.one_step(step)
        if one_step:
            self.one_step_calls.append(step)
        return contextlib.nullcontext(one_step)


def test_one_step_calls_train_exactly_as_the_loop_does(tmp_path):
    # 6 steps an epoch over 3 epochs, 4 a call; steps 5-9 run one per call (6 the untraced
    # warm-up, 7-9 the window), across the first epoch's end.
    config = tiny_config(epochs=3, steps_per_loop=4)
    results = []
    for name, reporter in (("plain", Recorder()), ("profiled", Profiled((7, 9), 4))):
        trainer, managers = make_loop(config, str(tmp_path / name))
        result = fit(trainer, tiny_datasets(config), reporter, *managers)
        weights = [variable.numpy() for variable in trainer.model.trainable_variables]
        results.append((result, weights))
    assert reporter.one_step_calls == [4, 5, 6, 6, 7, 8]  # The first 6: the epoch's end.
    (plain, plain_weights), (profiled, profiled_weights) = results
    assert profiled.train_steps == plain.train_steps == 18

    def learned(history: list[dict]) -> list[dict]:  # Without the timings.
        return [{k: v for k, v in entry.items() if "seconds" not in k and "per_sec" not in k}
                for entry in history]

    assert learned(profiled.history) == learned(plain.history)
    for got, want in zip(profiled_weights, plain_weights, strict=True):
        np.testing.assert_array_equal(got, want)
