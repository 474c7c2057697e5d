"""A whole run, top to bottom: strategy, data, model, loop, test, outputs.

This is the one function to read to see how the job fits together; each step
calls the module that owns it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from trainer import data, distribute, export, loop, model, summaries
from trainer.config import Config
from trainer.errors import UserError

METRICS_FILE = "metrics.json"
VOCAB_FILE = "vocab.txt"
MODEL_FILE = "model.keras"


def train_and_evaluate(config: Config) -> dict[str, Any]:
    """Trains, evaluates on the test split, and writes the run's outputs.

    Args:
      config: the run's settings.

    Returns:
      The metrics also written to ``<model_dir>/metrics.json`` (read from there when
      ``model_dir`` holds a finished run and --overwrite is not given).

    Raises:
      UserError: bad input (flags, data, TF_CONFIG), with a one-line message.
      loop.TrainingDivergedError: the loss became NaN or infinite.
      preemption.PreemptedError: SIGTERM; the state was saved.
      distribute.ClusterError: a worker did not start, or was lost.
    """
    start = time.time()
    strategy = distribute.make_strategy(config)  # First TensorFlow work of the process.
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise UserError(f"--batch_size={config.batch_size} does not split evenly across "
                        f"{replicas} replicas; use a multiple of {replicas}.")
    precision = resolve_precision(config)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(config.seed)
    chief = distribute.is_chief(strategy)
    metrics_path = f"{config.model_dir}/{METRICS_FILE}"
    if tf.io.gfile.exists(metrics_path) and not config.overwrite:
        # Done already, e.g. killed after writing its outputs: the same command succeeds
        # again, so a supervisor that restarts it sees the run as finished.
        with tf.io.gfile.GFile(metrics_path) as f:
            metrics = json.load(f)
        logging.warning("%s holds a finished run (test accuracy %.4f): not training it again; "
                        "pass --overwrite to start over, or pick a new --model_dir.",
                        metrics_path, metrics.get("test_accuracy", float("nan")))
        return metrics
    logging.info("strategy %s with %d replica(s); precision %s; model_dir %s",
                 distribute.strategy_name(strategy), replicas, precision, config.model_dir)

    splits = data.load(config)
    logging.info("data: %d train, %d validation, %d test reviews from %s", len(splits.train),
                 len(splits.validation), len(splits.test), splits.source)
    vectorizer = None if splits.pretokenized else data.make_vectorizer(splits.train, config)
    datasets = loop.Datasets(
        train=data.encode(splits.train, vectorizer, config),
        validation=data.encode(splits.validation, vectorizer, config) if len(
            splits.validation) else None,
        test=data.encode(splits.test, vectorizer, config),
        global_batch_size=config.batch_size)
    if len(splits.train) < config.batch_size:
        raise UserError(f"--batch_size={config.batch_size} is larger than the {len(splits.train)} "
                        "training reviews; lower it or raise --max_train_examples.")

    with strategy.scope():
        net = model.build(config)
        optimizer = model.make_optimizer(config)
    trainer = loop.Loop(config, strategy, net, optimizer, config.batch_size)
    blockers = model.cudnn_blockers(net, config)
    gpus = len(tf.config.list_logical_devices("GPU"))
    cpu_lstm_kernel = None if gpus else model.cpu_lstm_kernel(net)
    logging.info("model: %d parameters; LSTM %s%s", net.count_params(),
                 "is cuDNN-eligible" if not blockers else
                 "is NOT cuDNN-eligible: " + "; ".join(blockers),
                 "" if gpus else f" (no GPU here: it runs {cpu_lstm_kernel})")

    if config.overwrite and chief and tf.io.gfile.exists(config.checkpoint_dir):
        tf.io.gfile.rmtree(config.checkpoint_dir)  # Start over: no old state to resume.
    checkpoint_dir = distribute.private_dir(config.checkpoint_dir, strategy)
    manager, best_manager = loop.make_managers(trainer, config, checkpoint_dir)
    # Every worker resumes from the chief's checkpoints, the only ones kept.
    latest = None if config.overwrite else tf.train.latest_checkpoint(config.checkpoint_dir)
    if latest:
        with strategy.scope():
            trainer.checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("resuming from %s: epoch %d done, step %d", latest, int(trainer.epoch),
                     trainer.step)
    reporter = summaries.Summaries(config, chief, net, optimizer)
    try:
        with distribute.lost_workers_stop(strategy, config.checkpoint_dir):
            fit = trainer.fit(datasets, reporter, manager, best_manager)
            test = trainer.evaluate(datasets.test, "test")
        # The HParams table's result columns, beside the flags written at the start.
        reporter.scalars(fit.train_steps, test)
    finally:
        reporter.close()
        distribute.remove_private_dir(checkpoint_dir, config.checkpoint_dir)
    logging.info("test | %s", summaries.format_metrics(test))

    metrics = {
        "test_accuracy": test["test/accuracy"],
        "test_loss": test["test/loss"],
        "epochs_completed": fit.epochs_completed,
        "best_epoch": fit.best_epoch,
        "stopped_early": fit.stopped_early,
        "train_steps": fit.train_steps,
        "train_examples_per_sec": fit.train_examples_per_sec,
        "num_params": net.count_params(),
        "strategy": distribute.strategy_name(strategy),
        "num_replicas": replicas,
        "precision": precision,
        "cudnn_eligible": not blockers,
        "cudnn_blockers": blockers,
        "cpu_lstm_kernel": cpu_lstm_kernel,
        "gpus": gpus,
        "data": {"source": splits.source, "train": len(splits.train),
                 "validation": len(splits.validation), "test": len(splits.test)},
        "history": fit.history,
        "wall_time_sec": time.time() - start,
        "flags": config.to_dict(),
    }
    if chief:
        write_outputs(config, net, vectorizer, metrics)
    return metrics


def resolve_precision(config: Config) -> str:
    """The Keras dtype policy: ``auto`` is mixed_float16 with a GPU, float32 without."""
    if config.precision != "auto":
        return config.precision
    return "mixed_float16" if tf.config.list_logical_devices("GPU") else "float32"


def write_outputs(config: Config, net: keras.Model,
                  vectorizer: keras.layers.TextVectorization | None,
                  metrics: dict[str, Any]) -> None:
    """Writes what a finished run leaves for people and programs; chief only.

    The vocabulary, the .keras model (token ids in), the serving SavedModel
    (raw reviews in), the training curves picture and, last, metrics.json
    (the "done" mark).
    """
    tf.io.gfile.makedirs(config.model_dir)
    if vectorizer is not None:
        with tf.io.gfile.GFile(f"{config.model_dir}/{VOCAB_FILE}", "w") as f:
            f.write("\n".join(vectorizer.get_vocabulary()) + "\n")
    net.save(f"{config.model_dir}/{MODEL_FILE}")
    export.save(config, net, vectorizer)
    summaries.write_training_curves(metrics["history"],
                                    f"{config.model_dir}/{summaries.CURVES_FILE}")
    with tf.io.gfile.GFile(f"{config.model_dir}/{METRICS_FILE}", "w") as f:
        json.dump(metrics, f, indent=2)
    logging.info("wrote %s, %s, %s, %s/ and %s to %s", VOCAB_FILE, MODEL_FILE,
                 summaries.CURVES_FILE, export.EXPORT_DIR, METRICS_FILE, config.model_dir)

