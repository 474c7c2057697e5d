"""trainer/summaries.py: TensorBoard scalars and hparams, the profiler window, the curves PNG."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import logging
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from trainer import model, rundir, summaries
from trainer.config import Config
from trainer.task import Tally

# One xdist_group: the session's small_run is built once, on one test process.
pytestmark = pytest.mark.xdist_group("small_run")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_events(logdir: Path) -> event_accumulator.EventAccumulator:
    events = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    return events


def confusion_images(events: event_accumulator.EventAccumulator
                     ) -> dict[str, dict[int, Image.Image]]:
    """{tag: {step: the decoded picture}} of every */confusion_matrix image."""
    images = {}
    for tag in events.Tags()["tensors"]:
        if tag.endswith("/" + summaries.CONFUSION_TAG):
            assert events.SummaryMetadata(tag).plugin_data.plugin_name == "images"
            images[tag] = {}
            for event in events.Tensors(tag):
                width, height, png = tf.make_ndarray(event.tensor_proto)
                assert png.startswith(PNG_SIGNATURE)
                picture = Image.open(io.BytesIO(png))
                picture.load()
                assert picture.size == (int(width), int(height))
                images[tag][event.step] = picture
    return images


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
def test_confusion_matrices_are_pictures_per_epoch_and_at_the_end(small_run):
    metrics = json.loads((small_run / "metrics.json").read_text())
    images = confusion_images(read_events(small_run / "tensorboard"))
    assert set(images) == {"val/confusion_matrix", "test/confusion_matrix"}
    assert sorted(images["val/confusion_matrix"]) == [entry["step"]
                                                      for entry in metrics["history"]]
    assert sorted(images["test/confusion_matrix"]) == [metrics["train_steps"]]
    picture = images["test/confusion_matrix"][metrics["train_steps"]]
    assert picture.size == (390, 360)  # Two classes.
    pixels = np.asarray(picture.convert("L"))
    assert pixels.min() < 60 and pixels.max() > 200  # Drawn: dark text and cells on white.


def hparams_columns(events: event_accumulator.EventAccumulator) -> dict:
    """The HParams table's columns of a run: {name: the value's protobuf}."""
    metadata = events.SummaryMetadata("_hparams_/session_start_info")
    assert metadata.plugin_data.plugin_name == "hparams"
    start = plugin_data_pb2.HParamsPluginData.FromString(metadata.plugin_data.content)
    return dict(start.session_start_info.hparams)


def text_summary(events: event_accumulator.EventAccumulator, tag: str) -> tuple[int, str]:
    [event] = events.Tensors(tag)
    return event.step, tf.make_ndarray(event.tensor_proto).item().decode()


# Plumbing: where files go, how often to log or save, devices, speed. Not HParams columns.
NOT_HPARAMS = ("model_dir", "checkpoint_dir", "tensorboard_dir", "data_path", "test_data_path",
               "tfds_data_dir", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
               "profile_steps", "overwrite", "steps_per_loop", "strategy", "num_gpus",
               "cpu_replicas", "cluster_timeout_secs", "intra_op_threads", "require_gpu",
               "lean_lstm", "max_test_examples")


@pytest.mark.slow
def test_hparams_hold_what_changes_learning_and_the_text_tab_every_setting(small_run):
    events = read_events(small_run / "tensorboard")
    [event] = events.Tensors("_hparams_/session_start_info")
    assert event.step == 0
    columns = hparams_columns(events)
    assert columns["max_len"].number_value == 64
    assert columns["learning_rate"].number_value == pytest.approx(1e-3)
    assert columns["lr_schedule"].string_value == "cosine"
    assert columns["padding"].string_value in ("pre", "post")
    assert columns["presets"].string_value == "smoke_test"  # The values are the resolved ones.
    assert columns["data_source"].string_value == "aclimdb"  # auto, resolved.
    assert columns["precision"].string_value == "float32"  # auto, resolved.
    for name in (*rundir.STATE_SETTINGS, "epochs", "clip_norm", "ema_momentum",
                 "embedding_lr_scale", "adam_beta_2", "warmup_steps", "dense_embedding_gradient",
                 "early_stopping_patience"):
        assert name in columns, name
    assert not set(NOT_HPARAMS) & set(columns)
    assert len(columns) < 35

    step, table = text_summary(events, summaries.SETTINGS_TAG)
    assert step == 0
    flags = json.loads((small_run / "metrics.json").read_text())["flags"]
    rows = {line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    assert set(rows) == {f"--{name}" for name in flags if name != "presets"} | {"presets"}
    assert "`64`" in rows["--max_len"] and "| yes |" in rows["--max_len"]
    assert f"`{small_run}`" in rows["--model_dir"] and "| yes |" not in rows["--model_dir"]


def test_hparams_are_the_state_and_training_settings_less_the_speed_ones():
    config = Config(max_len=77, steps_per_loop=5, presets=("article_settings", "smoke_test"))
    columns = summaries.hparams(config, precision="mixed_float16")
    group = {field.name: field.metadata.get("group") for field in dataclasses.fields(Config)}
    training = {name for name in group if group[name] == "Training"}
    assert set(columns) == ((set(rundir.STATE_SETTINGS) | training) - {"steps_per_loop"}
                            | {"presets", "precision"})
    assert columns["max_len"] == 77 and columns["precision"] == "mixed_float16"
    assert columns["presets"] == "article_settings,smoke_test"
    assert columns["data_source"] == "tfds"  # auto with no --data_path, resolved.
    assert all(isinstance(value, str | bool | int | float) for value in columns.values())


def test_settings_table_lists_every_setting_and_escapes_pipes():
    config = Config(text_column="a|b", tensorboard_dir="")
    table = summaries.settings_table(config, summaries.hparams(config, precision="float32"))
    lines = table.splitlines()
    assert lines[0] == "| group | setting | value | in HParams |"
    assert len(lines) == 2 + len(dataclasses.fields(Config))
    assert "| Distribution | --precision | `auto` | yes, as `float32` |" in lines
    assert "| Data | --text_column | `a&#124;b` | yes |" in lines
    assert "| Outputs | --tensorboard_dir | *(empty)* |  |" in lines
    assert "| Distribution | --intra_op_threads | *(unset)* |  |" in lines  # None.
    assert "| Data | --data_source | `auto` | yes, as `tfds` |" in lines


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
          profiler: FakeProfiler) -> tuple[list[tuple[str, int]], list[int]]:
    """Calls the window as loop.fit does: (start|stop, step) in order, and the one-step calls."""
    events, one_step_calls, step = [], [], 0
    while step <= last_step:
        before = len(profiler.calls)
        one_step = window.one_step(step)
        window.before_train_steps(step)
        events += [(call, step) for call in profiler.calls[before:]]
        if one_step:
            one_step_calls.append(step)
        step += 1 if one_step else steps_per_loop
    return events, one_step_calls


@pytest.mark.parametrize("steps_per_loop, one_step_calls", [
    (1, [1, 2, 3, 4]),  # The call at step 1 (running step 2) builds the one-step function.
    (4, [0, 1, 2, 3, 4]),  # A call of 4 from step 0 would run past step 2.
    (20, [0, 1, 2, 3, 4]),
])
def test_profile_window_traces_exactly_the_asked_steps_one_call_each(
        monkeypatch, tmp_path, steps_per_loop, one_step_calls):
    profiler = FakeProfiler(monkeypatch)
    window = summaries.ProfilerWindow((3, 5), steps_per_loop, str(tmp_path))
    events, calls = drive(window, 30, steps_per_loop, profiler)
    assert events == [("start", 2), ("stop", 5)]  # Around the calls running steps 3, 4, 5.
    assert calls == one_step_calls
    window.close()
    assert profiler.calls == ["start", "stop"]


def test_workers_that_do_not_trace_run_the_same_calls(monkeypatch, tmp_path):
    # Collectives need the same calls on every worker: only the chief traces.
    profiler = FakeProfiler(monkeypatch)
    chief = summaries.ProfilerWindow((10, 15), 8, str(tmp_path))
    worker = summaries.ProfilerWindow((10, 15), 8, str(tmp_path), trace=False)
    _, chief_calls = drive(chief, 40, 8, profiler)
    assert profiler.calls == ["start", "stop"]
    _, worker_calls = drive(worker, 40, 8, profiler)
    assert worker_calls == chief_calls == [8, 9, 10, 11, 12, 13, 14]
    assert profiler.calls == ["start", "stop"]  # The worker started nothing.


def test_profile_window_the_run_never_reaches_is_a_warning(monkeypatch, tmp_path, caplog):
    profiler = FakeProfiler(monkeypatch)
    window = summaries.ProfilerWindow((100, 105), 1, str(tmp_path))
    assert drive(window, 28, 1, profiler) == ([], [])
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
    with reporter.train_call(0) as one_step:
        assert one_step  # The same one-step calls as the chief's.
    reporter.train_progress(1, 1, 1, 10, {"train/loss": 0.7})
    reporter.evaluated(1, "val", Tally(2, count=2.0, confusion=np.eye(2)), ("a", "b"))
    reporter.close()
    assert not (tmp_path / "tb").exists()


def test_the_window_counts_the_loops_steps_per_call_not_steps_per_loop(monkeypatch, tmp_path):
    # --steps_per_loop=4, but the loop runs one step per call (e.g. bucketed sparse gradients
    # over replicas): the trace must still cover exactly steps 3-5.
    profiler = FakeProfiler(monkeypatch)
    reporter = tiny_reporter(tmp_path, profile_steps="3,5", steps_per_loop=4, steps_per_call=1)
    events, one_step_calls = [], []
    for step in range(10):
        before = len(profiler.calls)
        with reporter.train_call(step) as one_step:
            if one_step:
                one_step_calls.append(step)
        events += [(call, step) for call in profiler.calls[before:]]
    reporter.close()
    assert events == [("start", 2), ("stop", 5)]
    assert one_step_calls == [1, 2, 3, 4]  # Not from step 0, as 4 steps a call would need.


def test_confusion_matrix_is_an_image_per_evaluation(tmp_path):
    reporter = tiny_reporter(tmp_path)
    tally = Tally(2, loss_sum=1.0, count=100.0, confusion=np.array([[40.0, 10.0], [5.0, 45.0]]))
    reporter.evaluated(28, "val", tally, ("negative", "positive"))
    reporter.evaluated(56, "val", tally, ("negative", "positive"))
    reporter.evaluated(56, "test", tally, ("negative", "positive"))
    reporter.close()
    images = confusion_images(read_events(tmp_path))
    assert {tag: sorted(steps) for tag, steps in images.items()} == {
        "val/confusion_matrix": [28, 56], "test/confusion_matrix": [56]}
    assert images["val/confusion_matrix"][28].size == (390, 360)


def test_a_reused_confusion_picture_redraws_and_keeps_its_size():
    picture = summaries.ConfusionPicture(("World", "Sports", "Business", "Sci/Tech"))
    first = picture.draw(np.diag([5.0, 6.0, 7.0, 8.0]), "val: step 1")
    again = picture.draw(np.ones([4, 4]), "val: step 2, a longer title than before")
    assert first.shape == again.shape and first.dtype == np.uint8 and first.shape[2] == 3
    assert not np.array_equal(first, again)
    many = summaries.ConfusionPicture([f"class {i}" for i in range(21)])  # Past MAX_ANNOTATED.
    assert many.draw(np.eye(21), "no numbers in the cells").shape[0] > 1000
    huge = summaries.ConfusionPicture([str(i) for i in range(300)]).draw(np.eye(300), "")
    assert huge.shape[:2] == (1600, 1630)  # Capped, whatever the number of classes.


def test_profiling_keras_generic_lstm_loop_is_warned_about(tmp_path, caplog):
    # Its loop over time steps would be xprof's steps (no GPU here: the CPU kernels).
    assert summaries.runs_keras_loop(model.build(Config(lean_lstm=False, lstm_units=2)),
                                     Config(lean_lstm=False))
    assert not summaries.runs_keras_loop(model.build(Config(lstm_units=2)), Config())
    with caplog.at_level(logging.WARNING):
        tiny_reporter(tmp_path, profile_steps="3,5", lean_lstm=False).close()
    assert "its overview page will show no step time" in caplog.text


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
    assert lines[-2].startswith(f"epoch 1/{Config().epochs} | step 10/20 | train/loss 0.7000")
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
