"""trainer/summaries.py: TensorBoard scalars and hparams, the profiler window, the curves PNG."""

from __future__ import annotations

import itertools
import json
import logging
import types
from pathlib import Path

import keras
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from trainer import model, summaries
from trainer.config import Config

# One xdist_group: the session's small_run is built once, on one test process.
pytestmark = pytest.mark.xdist_group("small_run")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_events(logdir: Path) -> event_accumulator.EventAccumulator:
    events = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    return events


def scalar_values(events: event_accumulator.EventAccumulator, tag: str) -> dict[int, float]:
    return {event.step: float(tf.make_ndarray(event.tensor_proto))
            for event in events.Tensors(tag)}


@pytest.mark.slow
def test_event_files_hold_the_named_scalars_with_the_runs_values(small_run):
    metrics = json.loads((small_run / "metrics.json").read_text())
    events = read_events(small_run / "tensorboard")
    interval = ["train/loss", "train/accuracy", "train/learning_rate",
                "train/examples_per_sec", "train/step_seconds"]
    every_5 = list(range(5, metrics["train_steps"] + 1, 5))  # --log_every_steps=5.
    assert len(every_5) == 11  # 2 epochs of 28 steps.
    for tag in interval:
        assert sorted(scalar_values(events, tag)) == every_5, tag
    # The default cosine: from about 1e-3 down, step by step, to nearly 0 at the last step.
    rates = [rate for _, rate in sorted(scalar_values(events, "train/learning_rate").items())]
    assert rates[0] == pytest.approx(1e-3, rel=0.03) and rates[-1] < 1e-5
    assert all(later < earlier for earlier, later in itertools.pairwise(rates))
    assert all(seconds > 0 for seconds in scalar_values(events, "train/step_seconds").values())
    # Per epoch, at the epoch's last step: the same numbers as metrics.json's history.
    for name in ("train/loss", "train/accuracy", "val/loss", "val/accuracy"):
        assert scalar_values(events, f"epoch/{name}") == {
            entry["step"]: pytest.approx(entry[name]) for entry in metrics["history"]}, name
    assert scalar_values(events, "test/accuracy") == {
        metrics["train_steps"]: pytest.approx(metrics["test_accuracy"])}
    assert "model/summary" in events.Tags()["tensors"]


@pytest.mark.slow
def test_hparams_summary_holds_the_runs_flags(small_run):
    events = read_events(small_run / "tensorboard")
    [event] = events.Tensors("_hparams_/session_start_info")
    metadata = events.SummaryMetadata("_hparams_/session_start_info")
    assert metadata.plugin_data.plugin_name == "hparams"
    start = plugin_data_pb2.HParamsPluginData.FromString(metadata.plugin_data.content)
    hparams = start.session_start_info.hparams
    assert hparams["max_len"].number_value == 64
    assert hparams["padding"].string_value in ("pre", "post")
    assert hparams["presets"].string_value == "smoke_test"  # The values are the resolved ones.
    assert event.step == 0


@pytest.mark.slow
def test_profiled_steps_leave_a_trace_where_tensorboard_looks(small_run):
    traces = list((small_run / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1
    assert traces[0].stat().st_size > 0
    assert "traced steps 3-5" in (small_run / "stderr.txt").read_text()


@pytest.mark.slow
def test_training_curves_png_is_a_valid_picture(small_run):
    path = small_run / summaries.CURVES_FILE
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.size == (1000, 400)


def test_curves_without_validation_data_still_draw(tmp_path):
    history = [{"epoch": 1, "train/loss": 0.69, "train/accuracy": 0.5},
               {"epoch": 2, "train/loss": 0.5, "train/accuracy": 0.75}]
    path = tmp_path / "curves.png"
    summaries.write_training_curves(history, str(path))
    with Image.open(path) as image:
        assert image.format == "PNG"


class FakeProfiler:
    """Stands in for tf.profiler.experimental: records when the trace starts and stops."""

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        monkeypatch.setattr(tf.profiler.experimental, "start",
                            lambda logdir: self.calls.append("start"))
        monkeypatch.setattr(tf.profiler.experimental, "stop", lambda: self.calls.append("stop"))


def drive(window: summaries.ProfilerWindow, last_step: int, steps_per_loop: int,
          profiler: FakeProfiler) -> list[tuple[str, int]]:
    """Calls the window as loop.fit does; returns (start|stop, step) in order."""
    events = []
    for step in range(0, last_step + 1, steps_per_loop):
        before = len(profiler.calls)
        window.before_train_steps(step)
        events += [(call, step) for call in profiler.calls[before:]]
    return events


@pytest.mark.parametrize("steps_per_loop, expected", [
    (1, [("start", 2), ("stop", 5)]),  # Exactly steps 3, 4 and 5.
    (4, [("start", 0), ("stop", 8)]),  # Snapped out to the calls running steps 1-4 and 5-8.
])
def test_profile_window_covers_the_asked_steps(monkeypatch, tmp_path, steps_per_loop,
                                               expected):
    profiler = FakeProfiler(monkeypatch)
    window = summaries.ProfilerWindow((3, 5), steps_per_loop, str(tmp_path))
    assert drive(window, 12, steps_per_loop, profiler) == expected
    window.close()
    assert profiler.calls == ["start", "stop"]


def test_profile_window_the_run_never_reaches_is_a_warning(monkeypatch, tmp_path, caplog):
    profiler = FakeProfiler(monkeypatch)
    window = summaries.ProfilerWindow((100, 105), 1, str(tmp_path))
    drive(window, 28, 1, profiler)
    with caplog.at_level(logging.WARNING):
        window.close()
    assert profiler.calls == []
    assert "--profile_steps=100,105: no profiler trace recorded" in caplog.text
    assert "trained steps 1-28" in caplog.text


def test_run_ending_inside_the_window_stops_the_real_profiler_with_a_warning(tmp_path,
                                                                             caplog):
    window = summaries.ProfilerWindow((3, 50), 1, str(tmp_path))
    for step in range(10):
        window.before_train_steps(step)
        tf.reduce_sum(tf.random.uniform([100, 100]))  # Something to trace.
    with caplog.at_level(logging.WARNING):
        window.close()
    assert "training ended at step 9, inside the window" in caplog.text
    assert list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))
    # Stopped for real: a new trace can start.
    tf.profiler.experimental.start(str(tmp_path / "again"))
    tf.profiler.experimental.stop()


def tiny_reporter(tensorboard_dir: Path, is_chief: bool = True, steps_per_call: int | None = None,
                  total_steps: int | None = None, **changes: str | int) -> summaries.Summaries:
    """Summaries for a tiny model, as train.py makes them."""
    config = Config(tensorboard_dir=str(tensorboard_dir), vocab_size=30, embedding_dim=2,
                    lstm_units=2, **changes)
    return summaries.Summaries(config, is_chief, model.build(config), keras.optimizers.Adam(),
                               steps_per_call=steps_per_call, total_steps=total_steps)


def test_only_the_chief_writes_and_profiles(tmp_path):
    reporter = tiny_reporter(tmp_path / "tb", is_chief=False, profile_steps="1,2")
    with reporter.train_call(0):
        pass
    reporter.train_progress(1, 1, 1, 10, {"train/loss": 0.7})
    reporter.close()
    assert not (tmp_path / "tb").exists()


def test_the_window_counts_the_loops_steps_per_call_not_steps_per_loop(monkeypatch, tmp_path):
    # --steps_per_loop=4, but the loop runs one step per call (e.g. bucketed sparse gradients
    # over replicas): the trace must still cover exactly steps 3-5.
    profiler = FakeProfiler(monkeypatch)
    reporter = tiny_reporter(tmp_path, profile_steps="3,5", steps_per_loop=4, steps_per_call=1)
    events = []
    for step in range(10):
        before = len(profiler.calls)
        with reporter.train_call(step):
            pass
        events += [(call, step) for call in profiler.calls[before:]]
    reporter.close()
    assert events == [("start", 2), ("stop", 5)]


def overview_page(trace: Path) -> list[dict]:
    """TensorBoard's Profile overview of a trace, converted by xprof as the Profile tab does."""
    from xprof.convert import raw_to_tool_data

    data, _ = raw_to_tool_data.xspace_to_tool_data([str(trace)], "overview_page", {})
    return json.loads(data)


def test_traced_training_calls_carry_step_markers_for_the_overview_page(tmp_path):
    reporter = tiny_reporter(tmp_path, profile_steps="3,5")
    total = tf.Variable(0.0)

    @tf.function
    def train_steps() -> None:  # Stands in for the loop's compiled training steps.
        x = tf.random.uniform([200, 200])
        total.assign_add(tf.reduce_sum(tf.matmul(x, x)))

    for step in range(8):
        with reporter.train_call(step):
            train_steps()
    reporter.close()
    [trace] = tmp_path.glob("plugins/profile/*/*.xplane.pb")
    overview = overview_page(trace)
    assert "No step marker" not in json.dumps(overview)
    step_table = next(table for table in overview if "steptime_ms_average" in table["p"])
    # One marked step per call in the window, named by the step count before the call.
    assert [row["c"][0]["v"] for row in step_table["rows"]] == ["train 2", "train 3", "train 4"]
    assert float(step_table["p"]["steptime_ms_average"]) > 0


@pytest.mark.parametrize("seconds, text", [(4.4, "4s"), (65, "1m05s"), (3725, "1h02m")])
def test_durations_read_at_a_glance(seconds, text):
    assert summaries.format_duration(seconds) == text


def test_progress_lines_show_elapsed_time_and_the_eta_of_the_run(tmp_path, caplog,
                                                                  monkeypatch):
    clock = iter([100.0, 110.0, 110.0, 130.0, 130.0])  # perf_counter at each call, in order.
    reporter = tiny_reporter(tmp_path, total_steps=40)
    monkeypatch.setattr(summaries, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    with caplog.at_level(logging.INFO):
        with reporter.train_call(0):  # Training starts at step 0, at t=100.
            pass
        reporter.train_progress(10, 1, 10, 20, {"train/loss": 0.7})  # t=110: 1 s a step.
        reporter.epoch_end(20, 1, {"train/loss": 0.6})  # t=130: 1.5 s a step, 20 left.
    reporter.close()
    lines = [record.getMessage() for record in caplog.records]
    assert lines[-2].startswith("epoch 1/10 | step 10/20 | train/loss 0.7000")
    assert lines[-2].endswith(" | elapsed 10s | eta 30s")
    assert lines[-1].endswith(" | elapsed 30s | eta 30s")


def test_without_total_steps_the_line_has_no_eta(tmp_path, caplog):
    reporter = tiny_reporter(tmp_path)
    with caplog.at_level(logging.INFO):
        with reporter.train_call(0):
            pass
        reporter.train_progress(10, 1, 10, 20, {"train/loss": 0.7})
    reporter.close()
    assert " | elapsed " in caplog.text and "eta" not in caplog.text


def test_early_stopping_says_which_epoch_is_kept(tmp_path, caplog):
    reporter = tiny_reporter(tmp_path)
    with caplog.at_level(logging.INFO):
        reporter.early_stop(epoch=5, best_epoch=3, patience=2)
    reporter.close()
    assert ("early stopping after epoch 5: the validation loss has not improved for 2 epoch(s) "
            "(--early_stopping_patience=2); keeping epoch 3's weights") in caplog.text
