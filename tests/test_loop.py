"""trainer/loop.py: the training loop, in process, on tiny token-id data."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import tensorflow as tf

from trainer import checkpoints, data, loop, model, train
from trainer.config import Config


class Recorder:
    """A loop.Reporter that remembers what it was told."""

    def __init__(self):
        self.epochs: list[dict] = []
        self.progress: list[int] = []

    def train_progress(self, step, epoch, epoch_step, steps_in_epoch, metrics):
        self.progress.append(step)

    def epoch_end(self, step, epoch, metrics):
        self.epochs.append({"step": step, "epoch": epoch, **metrics})

    def train_call(self, step):
        return contextlib.nullcontext()

    def __getattr__(self, name):  # Hooks added later by other modules are no-ops here.
        return lambda *args, **kwargs: None


def tiny_config(**changes) -> Config:
    defaults = dict(vocab_size=30, max_len=10, embedding_dim=4, lstm_units=3, batch_size=8,
                    epochs=2, validation_split=0.25, early_stopping_patience=0,
                    log_every_steps=2, seed=1)
    return Config(**{**defaults, **changes})


def tiny_datasets(config: Config, n: int = 48, flip_validation: bool = False) -> loop.Datasets:
    """What train.py hands the loop: per-epoch training batches, and "val"."""
    rng = np.random.default_rng(0)
    labels = np.arange(n, dtype=np.int32) % 2
    reviews = np.empty(n, dtype=object)
    for i, label in enumerate(labels):
        # Positive reviews use ids 10-19, negative ones 20-29: learnable.
        reviews[i] = rng.integers(10 + 10 * (1 - label), 20 + 10 * (1 - label), size=5 + i % 5)
    encoded = data.encode(data.Split(reviews, labels), None, config)
    # Flipped validation labels: the better the model learns, the worse validation gets.
    validation = (data.encode(data.Split(reviews, 1 - labels), None, config)
                  if flip_validation else encoded)
    return loop.Datasets(train=train.epoch_batches(encoded, config), train_examples=n,
                         evaluation={"val": train.evaluation_batches(validation, config)})


def fit(trainer: loop.Loop, datasets: loop.Datasets, reporter, *managers) -> loop.FitResult:
    return trainer.fit(datasets, trainer.plan(datasets.train_examples), reporter, *managers)


def make_loop(config: Config, checkpoint_dir: str,
              total_steps: int | None = None) -> tuple[loop.Loop, tuple]:
    """A Loop and its checkpoint managers; the schedule spans tiny_datasets' run by default."""
    if total_steps is None:
        total_steps = loop.make_plan(config, tiny_datasets(config).train_examples, 1).total_steps
    tf.keras.utils.set_random_seed(config.seed)
    net = model.build(config)
    trainer = loop.Loop(config, tf.distribute.get_strategy(), net,
                        model.make_optimizer(config, total_steps), config.batch_size)
    return trainer, checkpoints.make_managers(trainer.checkpoint, trainer.best_weights, config,
                                              checkpoint_dir)


def test_a_train_step_changes_every_parameter(tmp_path):
    config = tiny_config(epochs=1)
    trainer, managers = make_loop(config, str(tmp_path))
    before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    fit(trainer, tiny_datasets(config), Recorder(), *managers)
    after = [v.numpy() for v in trainer.model.trainable_variables]
    for variable, old, new in zip(trainer.model.trainable_variables, before, after, strict=True):
        assert not np.allclose(old, new), f"{variable.path} did not change"


def test_fit_reports_each_epoch_and_learns(tmp_path):
    config = tiny_config(epochs=8, learning_rate=0.05)
    trainer, managers = make_loop(config, str(tmp_path))
    recorder = Recorder()
    result = fit(trainer, tiny_datasets(config), recorder, *managers)
    assert [e["epoch"] for e in recorder.epochs] == list(range(1, 9))
    assert result.train_steps == 8 * (48 // 8) == trainer.step
    assert recorder.progress and all(step % 2 == 0 for step in recorder.progress)
    assert recorder.epochs[-1]["val/accuracy"] > 0.9
    assert recorder.epochs[-1]["train/loss"] < recorder.epochs[0]["train/loss"]


def test_resume_continues_at_the_saved_step_and_epoch(tmp_path):
    config = tiny_config(epochs=2)
    first, managers = make_loop(config, str(tmp_path))
    fit(first, tiny_datasets(config), Recorder(), *managers)
    assert first.step == 12

    resumed_config = tiny_config(epochs=3)
    second, managers = make_loop(resumed_config, str(tmp_path))
    second.checkpoint.restore(tf.train.latest_checkpoint(str(tmp_path)))
    recorder = Recorder()
    result = fit(second, tiny_datasets(resumed_config), recorder, *managers)
    assert [e["epoch"] for e in recorder.epochs] == [3]  # Epochs 1 and 2 are not repeated.
    assert result.train_steps == 18
    assert [h["epoch"] for h in result.history] == [1, 2, 3]


def test_early_stopping_keeps_the_best_epochs_weights(tmp_path):
    config = tiny_config(epochs=12, early_stopping_patience=2, learning_rate=0.05)
    trainer, managers = make_loop(config, str(tmp_path))
    datasets = tiny_datasets(config, flip_validation=True)
    result = fit(trainer, datasets, Recorder(), *managers)
    best = min(result.history, key=lambda h: h["val/loss"])
    assert result.best_epoch == best["epoch"]
    assert result.stopped_early
    assert result.epochs_completed == result.best_epoch + 2 < 12
    restored = trainer.evaluate(datasets.evaluation["val"], "val")
    assert restored["val/loss"] == pytest.approx(best["val/loss"], rel=1e-4)


def test_the_kept_weights_are_the_validated_average_and_training_follows_the_raw_ones(tmp_path):
    config = tiny_config(epochs=2, learning_rate=0.05)
    assert config.ema_momentum == 0.99  # The default.
    trainer, managers = make_loop(config, str(tmp_path))
    recorder = Recorder()
    datasets = tiny_datasets(config)
    fit(trainer, datasets, recorder, *managers)
    kept = trainer.evaluate(datasets.evaluation["val"], "val")["val/loss"]
    assert kept == pytest.approx(recorder.epochs[-1]["val/loss"], rel=1e-5)

    # The training state holds the weights training follows, and the average beside them.
    resumed, _ = make_loop(config, str(tmp_path / "unused"))
    resumed.checkpoint.restore(tf.train.latest_checkpoint(str(tmp_path)))
    raw = resumed.evaluate(datasets.evaluation["val"], "val")["val/loss"]
    assert raw != pytest.approx(kept, rel=1e-3)
    with resumed.averaged_weights():
        assert resumed.evaluate(datasets.evaluation["val"], "val")["val/loss"] == pytest.approx(
            kept, rel=1e-5)
    assert resumed.evaluate(datasets.evaluation["val"], "val")["val/loss"] == raw


def test_without_the_average_the_kept_weights_are_the_last_steps(tmp_path):
    config = tiny_config(epochs=2, learning_rate=0.05, ema_momentum=0.0)
    trainer, managers = make_loop(config, str(tmp_path))
    datasets = tiny_datasets(config)
    fit(trainer, datasets, Recorder(), *managers)
    last = [v.numpy() for v in trainer.model.trainable_variables]
    resumed, _ = make_loop(config, str(tmp_path / "unused"))
    resumed.checkpoint.restore(tf.train.latest_checkpoint(str(tmp_path)))
    with resumed.averaged_weights():
        for variable, value in zip(resumed.model.trainable_variables, last, strict=True):
            np.testing.assert_array_equal(variable.numpy(), value)


def test_nan_loss_stops_at_once_naming_the_step_and_keeps_the_last_checkpoint(tmp_path):
    config = tiny_config(epochs=3)
    trainer, managers = make_loop(config, str(tmp_path))
    fit(trainer, tiny_datasets(config), Recorder(), *managers)
    good = tf.train.latest_checkpoint(str(tmp_path))
    more = tiny_config(epochs=5)
    broken, managers = make_loop(more, str(tmp_path))
    broken.checkpoint.restore(good)
    kernel = broken.model.get_layer("positive").kernel
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    with pytest.raises(loop.TrainingDivergedError, match=r"at step 19 \(epoch 4\)"):
        fit(broken, tiny_datasets(more), Recorder(), *managers)
    assert tf.train.latest_checkpoint(str(tmp_path)) == good


def test_a_half_written_checkpoint_is_never_picked(tmp_path):
    config = tiny_config(epochs=1)
    trainer, managers = make_loop(config, str(tmp_path))
    fit(trainer, tiny_datasets(config), Recorder(), *managers)
    complete = tf.train.latest_checkpoint(str(tmp_path))
    # What a kill -9 in the middle of the next save leaves: TensorFlow writes the shards to a
    # temporary folder and lists a checkpoint in the "checkpoint" file only once it is whole.
    (tmp_path / "ckpt-2_temp").mkdir()
    (tmp_path / "ckpt-2_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 9)
    (tmp_path / "ckpt-2.index").write_bytes(b"truncated")
    assert tf.train.latest_checkpoint(str(tmp_path)) == complete
    resumed, _ = make_loop(config, str(tmp_path))
    resumed.checkpoint.restore(complete).assert_existing_objects_matched()
    assert (resumed.step, int(resumed.epoch)) == (trainer.step, 1)


def test_only_the_newest_keep_checkpoints_stay_on_disk(tmp_path):
    config = tiny_config(epochs=2, checkpoint_every_steps=2, keep_checkpoints=2)
    trainer, managers = make_loop(config, str(tmp_path))
    fit(trainer, tiny_datasets(config), Recorder(), *managers)
    # 12 steps: saves at steps 2, 4, 6 (and the epoch end), 8, 10, 12 (and the epoch end).
    kept = sorted(int(p.name.split("-")[1].split(".")[0]) for p in tmp_path.glob("ckpt-*.index"))
    assert kept == [7, 8]
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-8")


@pytest.mark.parametrize("dense", [False, True])
def test_adam_squares_a_tokens_summed_gradient_only_when_asked(tmp_path, dense):
    config = tiny_config(dense_embedding_gradient=dense, clip_norm=0.0, batch_size=4)
    trainer, _ = make_loop(config, str(tmp_path))
    net = trainer.model
    ids = tf.constant([[11, 11, 11, 0], [22, 11, 0, 0], [11, 12, 13, 0], [21, 22, 0, 0]])
    labels = tf.constant([1, 0, 1, 0])
    with tf.GradientTape() as tape:  # The step's embedding gradient, before the step.
        probs = net(ids, training=True)
        loss = tf.reduce_mean(tf.keras.losses.binary_crossentropy(
            tf.cast(labels[:, None], probs.dtype), probs))
    slices = tape.gradient(loss, net.trainable_variables[0])
    assert isinstance(slices, tf.IndexedSlices)  # Token 11 is in it five times.
    trainer.train_steps(iter(tf.data.Dataset.from_tensors((ids, labels))), 1)

    velocity = trainer.optimizer._velocities[
        trainer.optimizer._get_variable_index(net.trainable_variables[0])].numpy()
    summed = tf.convert_to_tensor(slices).numpy()
    squares = tf.math.unsorted_segment_sum(tf.square(slices.values), slices.indices,
                                           config.vocab_size).numpy()
    expected = (summed ** 2 if dense else squares) * (1 - trainer.optimizer.beta_2)
    np.testing.assert_allclose(velocity[11], expected[11], rtol=1e-4, atol=1e-12)
    assert not np.allclose(summed[11] ** 2, squares[11], rtol=1e-2)  # The two differ here.


def test_an_exploding_loss_stops_and_sets_aside_the_checkpoints_it_did_not_vouch_for(tmp_path):
    # One rate for all weights: at the embedding's 10x (1e31) the steps happen to split this
    # toy's cue words perfectly (loss 0), which is no divergence.
    config = tiny_config(epochs=1, embedding_lr_scale=1.0)
    trainer, managers = make_loop(config, str(tmp_path))
    fit(trainer, tiny_datasets(config), Recorder(), *managers)
    good = tf.train.latest_checkpoint(str(tmp_path))
    more = tiny_config(epochs=3, checkpoint_every_steps=1, clip_norm=0.0, learning_rate=1e30,
                       embedding_lr_scale=1.0)
    exploding, managers = make_loop(more, str(tmp_path))
    exploding.checkpoint.restore(good)
    with pytest.raises(loop.TrainingDivergedError, match="Try a lower --learning_rate"):
        fit(exploding, tiny_datasets(more), Recorder(), *managers)
    # Whatever was saved after the last healthy loss is in diverged/, so the run resumes
    # from weights that were seen to train, all finite.
    kept = tf.train.latest_checkpoint(str(tmp_path))
    assert kept is not None
    resumed, _ = make_loop(config, str(tmp_path))
    resumed.checkpoint.restore(kept)
    assert all(np.isfinite(v.numpy()).all() and np.abs(v.numpy()).max() < 100
               for v in resumed.model.trainable_variables)
    assert (tmp_path / checkpoints.DIVERGED_DIR).is_dir()


def test_health_tells_a_dip_from_a_divergence():
    health = loop.Health(chance_loss=0.69)
    assert health.divergence(0.7) is None
    assert health.divergence(30.0) is None and not health.healthy  # One bad call: a dip.
    assert health.divergence(0.6) is None and health.healthy
    assert health.divergence(20.0) is None
    assert health.divergence(25.0).startswith("training loss exploded")  # 3 of the last 5.
    assert loop.Health(0.69).divergence(0.7) is None
    assert loop.Health(0.69).divergence(1e6).startswith("training loss exploded")  # Far, once.
    assert loop.Health(0.69).divergence(float("nan")) == "training loss became nan"


def test_a_resumed_schedule_goes_on_from_the_checkpointed_step_at_this_commands_rate(tmp_path):
    config = tiny_config(epochs=2, lr_schedule="cosine", warmup_steps=2,
                         checkpoint_dir=str(tmp_path))
    datasets = tiny_datasets(config)
    total = loop.make_plan(config, datasets.train_examples, 1).total_steps
    trainer, managers = make_loop(config, str(tmp_path), total)
    recorder = Recorder()
    fit(trainer, datasets, recorder, *managers)
    assert trainer.step == total == 12
    assert float(trainer.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)  # Decayed.

    # Resumed with 2 more epochs and twice the peak: the schedule is this command's, rebuilt
    # over the new total, on the restored step count (nothing of it is in the checkpoint).
    longer = config.replace(epochs=4, learning_rate=2e-3)
    resumed, _ = make_loop(longer, str(tmp_path), 2 * total)
    assert train._restore(resumed, tf.distribute.get_strategy(), longer, True).endswith("ckpt-2")
    assert resumed.step == 12
    expected = 2e-3 * 0.5 * (1 + np.cos(np.pi * (12 - 2) / (24 - 2)))  # Cosine after warm-up.
    assert float(resumed.optimizer.learning_rate) == pytest.approx(expected, rel=1e-4)
