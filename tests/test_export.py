"""trainer/export.py: the SavedModel that scores raw review strings."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import data, export, model
from trainer.config import Config
from trainer.errors import UserError

# Long enough to be truncated at max_len 8, with markup, case and punctuation to standardize.
REVIEWS = [
    "A GREAT movie!<br /><br />Really great, the best; great acting, great story, great end.",
    "awful film, bad plot",
    "Bad. BAD! bad<br />acting...",
    "great",
    "",
]

# Runs in a fresh interpreter that imports TensorFlow only, as a server would.
SCORE_IN_FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    export_dir, reviews_file = sys.argv[1:]
    with open(reviews_file) as f:
        test = json.load(f)
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    probabilities = np.concatenate([
        serve(reviews=tf.constant(test["reviews"][i:i + 256]))["positive_probability"].numpy()
        for i in range(0, len(test["reviews"]), 256)])
    print(json.dumps({"accuracy": float(np.mean((probabilities > 0.5) == test["labels"]))}))
""")


def tiny_run(tmp_path: Path, **changes) -> tuple[Config, keras.layers.TextVectorization,
                                                  keras.Model]:
    config = Config(vocab_size=20, max_len=8, embedding_dim=4, lstm_units=3,
                    model_dir=str(tmp_path / "run"), **changes)
    train = data.Split(np.array(REVIEWS * 3, dtype=object), np.arange(15, dtype=np.int32) % 2)
    keras.utils.set_random_seed(0)
    return config, data.make_vectorizer(train, config), model.build(config)


def training_probabilities(config, vectorizer, net) -> np.ndarray:
    """P(positive) of each of REVIEWS through training's own encode and batches."""
    # The label carries the review's index: bucketed batches reorder reviews.
    split = data.Split(np.array(REVIEWS, dtype=object), np.arange(len(REVIEWS), dtype=np.int32))
    probabilities = np.zeros(len(REVIEWS), np.float32)
    for ids, index in data.batches(data.encode(split, vectorizer, config), config,
                                   global_batch_size=2):
        probabilities[index.numpy()] = net(ids, training=False).numpy()[:, 0]
    return probabilities


@pytest.mark.parametrize("padding, bucket_by_length", [
    ("pre", False), ("post", False), ("post", True), ("pre", True)])
def test_export_scores_raw_text_exactly_as_training_does(tmp_path, padding, bucket_by_length):
    config, vectorizer, net = tiny_run(tmp_path, padding=padding,
                                       bucket_by_length=bucket_by_length)
    assert export.save(config, net, vectorizer) == f"{config.model_dir}/{export.EXPORT_DIR}/1"
    score = export.load(config.model_dir)
    np.testing.assert_allclose(score(REVIEWS), training_probabilities(config, vectorizer, net),
                               atol=1e-6)


def test_signature_takes_a_batch_of_strings_and_returns_probabilities(tmp_path):
    config, vectorizer, net = tiny_run(tmp_path)
    export.save(config, net, vectorizer)
    serve = tf.saved_model.load(f"{config.model_dir}/export/1").signatures["serving_default"]
    _, inputs = serve.structured_input_signature
    assert inputs == {"reviews": tf.TensorSpec([None], tf.string, name="reviews")}
    probabilities = serve(reviews=tf.constant(REVIEWS))["positive_probability"]
    assert probabilities.shape == [len(REVIEWS)] and probabilities.dtype == tf.float32
    assert np.all((probabilities.numpy() >= 0) & (probabilities.numpy() <= 1))


def test_token_id_data_has_no_raw_text_export_and_says_so(tmp_path, caplog):
    config, _, net = tiny_run(tmp_path, data_source="keras_npz")
    with caplog.at_level(logging.WARNING):
        assert export.save(config, net, None) is None
    assert "no raw-text export" in caplog.text
    assert not Path(config.model_dir, export.EXPORT_DIR).exists()


def test_unreadable_model_dirs_are_named_in_the_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        export.load(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="holds no exported model"):
        export.load(str(tmp_path))
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "saved_model.pb").write_bytes(b"not a SavedModel")
    with pytest.raises(UserError, match="not a readable SavedModel"):
        export.load(str(tmp_path))


@pytest.mark.slow
def test_export_reloaded_in_a_fresh_process_reproduces_the_test_accuracy(small_run, tmp_path):
    metrics = json.loads((small_run / "metrics.json").read_text())
    test = data.load(Config(**metrics["flags"])).test  # The run's own test reviews.
    reviews_file = tmp_path / "test.json"
    reviews_file.write_text(json.dumps({"reviews": list(test.reviews),
                                        "labels": test.labels.tolist()}))
    process = subprocess.run(
        [sys.executable, "-c", SCORE_IN_FRESH_PROCESS, str(small_run / "export"),
         str(reviews_file)], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    accuracy = json.loads(process.stdout.splitlines()[-1])["accuracy"]
    assert len(test) == 400
    # The same weights and preprocessing: at most one review may flip on float rounding.
    assert accuracy == pytest.approx(metrics["test_accuracy"], abs=1 / len(test))


@pytest.mark.slow
def test_run_keeps_the_keras_model_beside_the_export(small_run):
    net = keras.saving.load_model(str(small_run / "model.keras"))
    assert net.count_params() == json.loads((small_run / "metrics.json").read_text())[
        "num_params"]
