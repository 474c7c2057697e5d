"""A whole run, top to bottom: folder, strategy, data, model, loop, test, outputs.

This is the one function to read to see how the job fits together; each step
calls the module that owns it. What a run folder promises (one owner, one
meaning of resume, whole files) is ``trainer.rundir``'s; what a signal does at
each stage is ``trainer.preemption``'s.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from trainer import (
    checkpoints,
    cluster,
    data,
    distribute,
    export,
    loop,
    model,
    phases,
    rundir,
    sources,
    stream,
    summaries,
)
from trainer.config import Config
from trainer.errors import UserError
from trainer.preemption import DONE, EVALUATING, SIGNALS, STARTING, WRITING
from trainer.task import Tally, Task, per_class_scalars, report

METRICS_FILE = "metrics.json"
VOCAB_FILE = "vocab.txt"
MODEL_FILE = "model.keras"
LABELS_FILE = export.LABELS_FILE  # The class names, one a line: id = line number - 1.
EVAL_BATCH_MULTIPLE = 8  # Evaluation batches hold this many training batches' reviews.
# What --overwrite removes, metrics.json (the "done" mark) first.
_OUTPUTS = (METRICS_FILE, rundir.MANIFEST_FILE, VOCAB_FILE, LABELS_FILE, MODEL_FILE,
            summaries.CURVES_FILE, export.EXPORT_DIR)


def train_and_evaluate(config: Config) -> dict[str, Any]:
    """Trains, evaluates on the test split, and writes the run's outputs.

    Args:
      config: the run's settings.

    Returns:
      The metrics also written to ``<model_dir>/metrics.json`` (read from there when
      ``model_dir`` holds a finished run and --overwrite is not given).

    Raises:
      UserError: bad input (flags, data, model folder, TF_CONFIG), with a one-line message.
      TrainingDivergedError: the loss became non-finite or exploded.
      Stopped: SIGTERM or Ctrl-C (PreemptedError when the state was saved).
      ClusterError: a worker did not start, or was lost.
    """
    start = time.time()
    clock = phases.Phases()  # From the process's start: what the user waits for.
    SIGNALS.enter(STARTING)
    chief = cluster.is_chief_task(cluster.parse_tf_config(os.environ.get("TF_CONFIG")))
    created = rundir.is_local(config.model_dir) and not os.path.exists(config.model_dir)
    try:
        if chief:  # Cheap checks first: before TensorFlow starts or any data is read.
            for flag, path in (("--model_dir", config.model_dir),
                               ("--checkpoint_dir", config.checkpoint_dir),
                               ("--tensorboard_dir", config.tensorboard_dir)):
                rundir.check_local_folder(path, flag)
        owner = (rundir.owned(config.model_dir) if chief and rundir.is_local(config.model_dir)
                 else contextlib.nullcontext())
        with owner:
            return _run(config, start, clock)
    except UserError:
        if created and chief:
            rundir.remove_if_unused(config.model_dir)
        raise


def _run(config: Config, start: float, clock: phases.Phases) -> dict[str, Any]:
    runtime = _start(config)
    precision, chief = runtime.precision, runtime.chief
    finished = rundir.read_json(f"{config.model_dir}/{METRICS_FILE}")
    if finished is not None and not config.overwrite:
        # Done already, e.g. killed after writing its outputs: the same command succeeds
        # again, so a supervisor that restarts it sees the run as finished; a command with
        # other data or settings is refused, as its resume would be.
        return _answer_finished(config, finished, precision)
    manifest = rundir.Manifest(config.model_dir)
    early_state = rundir.state_settings(config, precision=precision,
                                        data_source=sources.resolve(config))
    if (not config.overwrite and checkpoints.listed(config.checkpoint_dir, repair=False)
            and (changed := manifest.differences(early_state))):
        raise manifest.refuse(changed, config.model_dir)  # Before the data is read.
    logging.info("strategy %s with %d replica(s); precision %s; model_dir %s",
                 runtime.strategy_name, runtime.num_replicas, precision, config.model_dir)

    clock.lap(phases.STARTUP)
    splits, vectorizer, datasets, test_batches = _read_data(config, clock)
    classes = Task(splits.class_names)
    SIGNALS.pause_point("data read")
    # The class names too: renamed classes keep the label ids the fingerprint hashes.
    state = {**early_state, **_fingerprints(splits, vectorizer),
             "class_names": list(splits.class_names)}
    start_over = _starts_over(config, manifest, finished is not None, state)
    if chief and start_over:
        _remove_old_run(config)
        manifest = rundir.Manifest(config.model_dir)
    _barrier(runtime)  # Every worker sees the chief's folder as it will train from it.
    resuming = bool(checkpoints.listed(config.checkpoint_dir, repair=False))
    if resuming and (changed := manifest.differences(state)):
        raise manifest.refuse(changed, config.model_dir)

    net, fit, tally = _train(config, runtime, splits, datasets, test_batches, classes,
                             manifest, state, clock)
    test = tally.metrics("test")
    logging.info("test | %s", summaries.format_metrics(test))
    metrics = _metrics(config, runtime, net, splits, classes, fit, tally, start)
    SIGNALS.enter(WRITING)
    if chief:
        write_outputs(config, net, vectorizer, metrics, classes, clock)
    logging.info("time by phase: %s", clock.line())
    SIGNALS.enter(DONE)
    return metrics


def _train(config: Config, runtime: distribute.Runtime, splits: data.Splits,
           datasets: loop.Datasets, test_batches: tf.data.Dataset, classes: Task,
           manifest: rundir.Manifest, state: dict[str, Any], clock: phases.Phases
           ) -> tuple[keras.Model, loop.FitResult, Tally]:
    """Builds the model, resumes, trains and tallies the test split; returns what it kept."""
    strategy, chief = runtime.strategy, runtime.chief
    plan = loop.make_plan(config, datasets.train_examples, strategy.num_replicas_in_sync)
    with strategy.scope():
        net = model.build(config, task=classes)
        optimizer = model.make_optimizer(config, plan.total_steps)
    trainer = loop.Loop(config, strategy, net, optimizer, config.batch_size, task=classes,
                        class_weight=data.class_weights(splits))
    _log_model(net, config, runtime)
    checkpoint_dir = cluster.private_dir(config.checkpoint_dir, strategy)
    try:
        manager, best_manager = checkpoints.make_managers(trainer.checkpoint,
                                                          trainer.best_weights, config,
                                                          checkpoint_dir)
        latest = _restore(trainer, strategy, config, chief)
        if chief:
            if latest is not None:  # Each setting a resume may change, said when it does.
                for name, (old, new) in manifest.safe_changes(config).items():
                    logging.info("--%s changed from %s to %s: training goes on with %s",
                                 name, old, new, new)
            manifest.record_attempt(config, state, new_run=latest is None,
                                    by_overwrite=config.overwrite, resumed_from=latest)
        reporter = summaries.Summaries(config, chief, net, optimizer,
                                       steps_per_call=plan.steps_per_call,
                                       total_steps=plan.total_steps)
        clock.lap(phases.MODEL)
        try:
            with cluster.lost_workers_stop(strategy, config.checkpoint_dir):
                fit = trainer.fit(datasets, plan, reporter, manager, best_manager)
                clock.lap(phases.TRAINING_STEPS)
                clock.split_training(fit.train_seconds, fit.epoch_end_seconds)
                SIGNALS.enter(EVALUATING)
                logging.info("evaluating the kept weights on %d test reviews", len(splits.test))
                tally = trainer.tally(test_batches)
                clock.lap(phases.TEST)
            test = tally.metrics("test")
            # The HParams table's result columns, beside the flags written at the start.
            reporter.scalars(fit.train_steps,
                             {**test, **per_class_scalars(tally, classes.class_names, "test")})
            reporter.evaluated(fit.train_steps, "test", tally, classes.class_names)
        finally:
            reporter.close()
    finally:
        cluster.remove_private_dir(checkpoint_dir, config.checkpoint_dir)
    return net, fit, tally


def _start(config: Config) -> distribute.Runtime:
    """The runtime (the process's first TensorFlow work), its precision and seed set."""
    runtime = distribute.make_runtime(config)
    replicas = runtime.num_replicas
    if config.batch_size % replicas:
        raise UserError(f"--batch_size={config.batch_size} does not split evenly across "
                        f"{replicas} replicas; use a multiple of {replicas}.")
    keras.mixed_precision.set_global_policy(runtime.precision)
    keras.utils.set_random_seed(config.seed)
    if runtime.chief and not rundir.is_local(config.model_dir):
        rundir.check_remote_folder(config.model_dir)
        rundir.note_remote_holder(config.model_dir)
    return runtime


def _read_data(config: Config, clock: phases.Phases
               ) -> tuple[data.Splits, keras.layers.TextVectorization | None, loop.Datasets,
                          tf.data.Dataset]:
    """Reads the splits, adapts the vocabulary on the training split, encodes them all.

    Returns:
      The splits, the vocabulary (None for token ids), what the loop trains and
      validates on, and the test batches.
    """
    if stream.wanted(config):
        return _stream_data(config, clock)
    splits = sources.load(config)
    clock.lap(phases.READING)
    logging.info("data: %d train, %d validation, %d test reviews from %s", len(splits.train),
                 len(splits.validation), len(splits.test), splits.source)
    if len(splits.train) < config.batch_size:
        raise UserError(f"--batch_size={config.batch_size} is larger than the {len(splits.train)} "
                        "training reviews; lower it or raise --max_train_examples.")
    vectorizer = None
    if not splits.pretokenized:
        logging.info("building the %d-token vocabulary from %d training reviews",
                     config.vocab_size, len(splits.train))
        vectorizer = data.make_vectorizer(splits.train, config)
    train = data.encode(splits.train, vectorizer, config)
    evaluation = ({loop.VALIDATION: evaluation_batches(
        data.encode(splits.validation, vectorizer, config), config)}
        if len(splits.validation) else {})
    datasets = loop.Datasets(train=epoch_batches(train, config), train_examples=len(train),
                             evaluation=evaluation)
    test = evaluation_batches(data.encode(splits.test, vectorizer, config), config)
    clock.lap(phases.VECTORIZING)
    return splits, vectorizer, datasets, test


def _stream_data(config: Config, clock: phases.Phases
                 ) -> tuple[stream.Splits, keras.layers.TextVectorization, loop.Datasets,
                            loop.Batches]:
    """``_read_data`` for streamed shards: the sample, the vocabulary, per-worker batches."""
    source, texts = stream.prepare(config)
    clock.lap(phases.READING)
    vectorizer = stream.vocabulary(texts, config)
    del texts

    def batches(split: str, seed: int | None = None, drop_remainder: bool = False,
                cache: bool = False) -> loop.Batches:
        made: dict[tuple[int, int], tf.data.Dataset] = {}

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            worker = (context.input_pipeline_id, context.num_input_pipelines)
            if worker not in made or not cache:
                made[worker] = stream.batches(
                    source, config, split, vectorizer,
                    batch_size=context.get_per_replica_batch_size(config.batch_size),
                    worker=worker[0], workers=worker[1], seed=seed,
                    drop_remainder=drop_remainder)
                if cache:  # Kept after the first pass: later epochs read no shard for it.
                    made[worker] = made[worker].cache()
            return made[worker]

        return dataset_fn

    evaluation = ({loop.VALIDATION: batches("validation", cache=stream.validation_is_small(
        source))} if source.validation_buckets else {})
    datasets = loop.Datasets(
        train=lambda epoch: batches("train", config.seed * 1000 + epoch, drop_remainder=True),
        train_examples=source.train_rows, evaluation=evaluation)
    clock.lap(phases.VECTORIZING)
    return stream.split_sizes(source, config), vectorizer, datasets, batches("test")


def _load(config: Config) -> data.Splits | stream.Splits:
    """The splits, in memory or (``--stream``) as a streamed source's sizes and fingerprint."""
    if stream.wanted(config):
        return stream.split_sizes(stream.prepare(config)[0], config)
    return sources.load(config)


def epoch_batches(train: data.Encoded, config: Config) -> Callable[[int], tf.data.Dataset]:
    """``epoch -> that epoch's training batches``: whole global batches, in a seeded order.

    The one place the shuffle seed is made: from ``--seed`` and the epoch, so a
    resumed epoch replays the same order (and the loop skips what it did).
    """

    def batches(epoch: int) -> tf.data.Dataset:
        return data.batches(train, config, global_batch_size=config.batch_size,
                            shuffle_seed=config.seed * 1000 + epoch, drop_remainder=True)

    return batches


def evaluation_batches(encoded: data.Encoded, config: Config) -> tf.data.Dataset:
    """Every example of ``encoded``, in order, the last batch partial.

    Batches of ``EVAL_BATCH_MULTIPLE`` training batches: a forward pass has no
    optimizer step to keep small, and fewer, wider calls cost less per review.
    """
    return data.batches(encoded, config,
                        global_batch_size=config.batch_size * EVAL_BATCH_MULTIPLE)


def _fingerprints(splits: data.Splits | stream.Splits,
                  vectorizer: keras.layers.TextVectorization | None) -> dict[str, str]:
    """Hashes of what was trained on: training and validation reviews, and the vocabulary."""
    vocabulary = {"vocabulary_fingerprint": rundir.fingerprint(
        vectorizer.get_vocabulary() if vectorizer is not None else [])}
    if isinstance(splits, stream.Splits):
        return {"data_fingerprint": splits.fingerprint, **vocabulary}

    def items(split: data.Split) -> list[Any]:
        return [r.tobytes() if isinstance(r, np.ndarray) else str(r).encode()
                for r in split.reviews]

    return {
        "data_fingerprint": rundir.fingerprint(items(splits.train), [splits.train.labels.tobytes()],
                                               items(splits.validation),
                                               [splits.validation.labels.tobytes()]),
        **vocabulary,
    }


def _answer_finished(config: Config, finished: dict[str, Any], precision: str) -> dict[str, Any]:
    """The finished run's metrics as this command's result, if this command is the run's.

    Checked as a resume is: other state settings are refused before the data
    is read; then the data is read and other data (its fingerprint) or other
    class names are refused too. Nothing is trained again, so a setting a
    resume may change (--epochs, --learning_rate...) takes no effect: the one line
    says so. A folder from before the manifest has nothing to compare.

    Raises:
      UserError: other data or settings than the finished run's (or unreadable data).
    """
    manifest = rundir.Manifest(config.model_dir)
    if changed := manifest.differences(rundir.state_settings(
            config, precision=precision, data_source=sources.resolve(config))):
        raise manifest.refuse(changed, config.model_dir, finished=True)  # Before the data.
    if manifest.value:
        splits = _load(config)
        changed = manifest.differences(
            {"data_fingerprint": _fingerprints(splits, None)["data_fingerprint"]})
        recorded, names = finished.get("class_names"), list(splits.class_names)
        if recorded is not None and list(recorded) != names:
            changed.append(f"class_names: {recorded!r} -> {names!r}")
        if changed:
            raise manifest.refuse(changed, config.model_dir, finished=True)
    logging.warning("%s/%s holds a finished run (test accuracy %.4f): not training it again%s; "
                    "pass --overwrite to start over, or pick a new --model_dir.",
                    config.model_dir, METRICS_FILE, finished.get("test_accuracy", float("nan")),
                    rundir.unused_changes(manifest.safe_changes(config)))
    return finished


def _starts_over(config: Config, manifest: rundir.Manifest, finished: bool,
                 state: dict[str, Any]) -> bool:
    """Whether --overwrite starts this folder over, or resumes the run it started before.

    --overwrite starts a new run once: the same command again (a launcher
    restarting a preempted job) resumes that run, unless it finished or its
    settings changed.
    """
    if not config.overwrite:
        return False
    if not finished and manifest.started_by_overwrite and not manifest.differences(state):
        logging.info("resuming the run --overwrite started in %s (%s): a restarted command "
                     "does not start over again; delete the folder to do that.",
                     config.model_dir, manifest.value.get("created", "?"))
        return False
    return True


def _remove_old_run(config: Config) -> None:
    """--overwrite: removes the old outputs (metrics.json first), checkpoints and logs."""
    for name in _OUTPUTS:
        path = f"{config.model_dir}/{name}"
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    for folder in (config.checkpoint_dir, config.tensorboard_dir):
        if tf.io.gfile.exists(folder):
            tf.io.gfile.rmtree(folder)
    logging.info("--overwrite: removed the previous run's outputs, checkpoints and logs from %s",
                 config.model_dir)


def _barrier(runtime: distribute.Runtime) -> None:
    """Waits for every worker (a one-number all-reduce); nothing to wait for in one process."""
    if runtime.num_workers > 1:
        strategy = runtime.strategy
        strategy.reduce(tf.distribute.ReduceOp.SUM,
                        strategy.run(lambda: tf.constant(1.0)), axis=None)


def _restore(trainer: loop.Loop, strategy: tf.distribute.Strategy, config: Config,
             chief: bool) -> str | None:
    """Restores the newest readable checkpoint; takes the learning rate of this command."""
    # Every worker resumes from the chief's checkpoints, the only ones kept, at the same
    # time: under MultiWorkerMirroredStrategy a restore broadcasts the chief's values. Only
    # the chief moves unreadable ones aside; the others skip the same ones.
    with strategy.scope():
        latest = checkpoints.restore_newest(trainer.checkpoint, config.checkpoint_dir,
                                            repair=chief)
    if latest is None:
        return None
    logging.info("resuming from %s: epoch %d done, step %d", latest, int(trainer.epoch),
                 trainer.step)
    if not isinstance(model.learning_rate_schedule(config, 1), float):
        return latest  # A schedule: rebuilt from this command's flags, never checkpointed.
    restored_rate = float(keras.ops.convert_to_numpy(trainer.optimizer.learning_rate))
    if not np.isclose(restored_rate, config.learning_rate, rtol=1e-6):  # Logged by run().
        trainer.optimizer.learning_rate = config.learning_rate
    return latest


def _log_model(net: keras.Model, config: Config, runtime: distribute.Runtime) -> None:
    blockers = model.cudnn_blockers(net, config)
    logging.info("model: %d parameters; LSTM %s%s", net.count_params(),
                 "is cuDNN-eligible" if not blockers else
                 "is NOT cuDNN-eligible: " + "; ".join(blockers),
                 "" if runtime.num_gpus else
                 f" (no GPU here: it runs {model.cpu_lstm_kernel(net)})")


def _metrics(config: Config, runtime: distribute.Runtime, net: keras.Model,
             splits: data.Splits, classes: Task, fit: loop.FitResult, tally: Tally,
             start: float) -> dict[str, Any]:
    """What metrics.json records about the run."""
    blockers = model.cudnn_blockers(net, config)
    gpus = runtime.num_gpus
    test = tally.metrics("test")
    return {
        "test_accuracy": test["test/accuracy"],
        "test_loss": test["test/loss"],
        "epochs_completed": fit.epochs_completed,
        "best_epoch": fit.best_epoch,
        "stopped_early": fit.stopped_early,
        "train_steps": fit.train_steps,
        "train_examples_per_sec": fit.train_examples_per_sec,
        "num_params": net.count_params(),
        "strategy": runtime.strategy_name,
        "num_replicas": runtime.num_replicas,
        "precision": runtime.precision,
        "cudnn_eligible": not blockers,
        "cudnn_blockers": blockers,
        "cpu_lstm_kernel": None if gpus else model.cpu_lstm_kernel(net),
        "gpus": gpus,
        "data": {"source": splits.source, "train": len(splits.train),
                 "validation": len(splits.validation), "test": len(splits.test)},
        "history": fit.history,
        "wall_time_sec": time.time() - start,
        "flags": config.to_dict(),
        "num_classes": classes.num_classes,
        "class_names": list(classes.class_names),
        "test_macro_f1": test["test/macro_f1"],
        **report(tally, classes.class_names),
    }


def write_outputs(config: Config, net: keras.Model,
                  vectorizer: keras.layers.TextVectorization | None,
                  metrics: dict[str, Any], classes: Task,
                  clock: phases.Phases | None = None) -> None:
    """Writes what a finished run leaves for people and programs; chief only.

    The vocabulary, the class names (labels.txt), the .keras model (token ids
    in), the serving SavedModel (raw reviews in), the training curves picture
    and, last, metrics.json (the "done" mark). Each file is written under a
    temporary name and renamed, so a kill at any moment leaves no half-written
    file under its real name. With ``clock``, metrics.json records the run's
    seconds by phase (``phases_sec``), up to the moment it is written.
    """
    model_dir = config.model_dir
    if vectorizer is not None:
        rundir.write_atomically(f"{model_dir}/{VOCAB_FILE}",
                                lambda f: f.write("\n".join(vectorizer.get_vocabulary()) + "\n"))
    export.write_labels(model_dir, classes.class_names)
    with rundir.renamed_into_place(f"{model_dir}/{MODEL_FILE}", suffix=".keras") as temporary:
        # Keras' own layers only, so that keras.saving.load_model needs no trainer import.
        export.serving_model(config, net, classes, use_cudnn="auto").save(temporary)
    export_path = export.save(config, net, vectorizer, classes)
    if export_path:
        metrics["export_path"] = export_path
    with rundir.renamed_into_place(f"{model_dir}/{summaries.CURVES_FILE}",
                                   suffix=".png") as curves:
        summaries.write_training_curves(metrics["history"], curves)
    if clock is not None:
        clock.lap(phases.OUTPUTS)
        metrics["phases_sec"] = clock.report()
    rundir.write_json(f"{model_dir}/{METRICS_FILE}", metrics)
    logging.info("wrote %s, %s, %s, %s, %s/ and %s to %s", VOCAB_FILE, LABELS_FILE, MODEL_FILE,
                 summaries.CURVES_FILE, export.EXPORT_DIR, METRICS_FILE, model_dir)
