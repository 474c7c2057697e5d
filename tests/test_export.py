"""trainer/export.py: the SavedModel that scores raw review strings."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from trainer import data, export, model, sources
from trainer.config import Config
from trainer.errors import UserError
from trainer.lstm import LeanLSTM
from trainer.task import Task

# One xdist_group: the session's small_run and this module's exports are built once.
pytestmark = pytest.mark.xdist_group("small_run")

SAVED_MODEL_CLI = str(Path(sys.executable).parent / "saved_model_cli")
# The serving host of the issue: a CPU only, whatever trained the model.
CPU_ONLY = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}

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


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory) -> tuple[str, np.ndarray]:
    """A tiny run's export (version folder) and its P(positive) of REVIEWS through the model."""
    config, vectorizer, net = tiny_run(tmp_path_factory.mktemp("tiny"))
    return export.save(config, net, vectorizer), training_probabilities(config, vectorizer, net)


def op_types(saved_model_dir: str) -> set[str]:
    """Every op type in a SavedModel's graphs: the graph and its function library."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(Path(saved_model_dir, "saved_model.pb").read_bytes())
    types = set()
    for meta_graph in saved_model.meta_graphs:
        types.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            types.update(node.op for node in function.node_def)
    return types


def model_outputs(config, vectorizer, net) -> np.ndarray:
    """The model's outputs for REVIEWS through training's own encode and batches, [5, 1 or K]."""
    # The label carries the review's index: bucketed batches reorder reviews.
    split = data.Split(np.array(REVIEWS, dtype=object), np.arange(len(REVIEWS), dtype=np.int32))
    outputs = np.zeros((len(REVIEWS), net.output_shape[-1]), np.float32)
    for ids, index in data.batches(data.encode(split, vectorizer, config), config,
                                   global_batch_size=2):
        outputs[index.numpy()] = net(ids, training=False).numpy()
    return outputs


def training_probabilities(config, vectorizer, net) -> np.ndarray:
    """P(positive) of each of REVIEWS through training's own encode and batches."""
    return model_outputs(config, vectorizer, net)[:, 0]


@pytest.mark.parametrize("padding, bucket_by_length", [
    ("pre", False), ("post", False), ("post", True), ("pre", True)])
def test_export_scores_raw_text_exactly_as_training_does(tmp_path, padding, bucket_by_length):
    config, vectorizer, net = tiny_run(tmp_path, padding=padding,
                                       bucket_by_length=bucket_by_length)
    assert export.save(config, net, vectorizer) == f"{config.model_dir}/{export.EXPORT_DIR}/1"
    score = export.load(config.model_dir).positive_probability
    probabilities = training_probabilities(config, vectorizer, net)
    np.testing.assert_allclose(score(REVIEWS), probabilities, atol=1e-6)
    # Alone, each in a batch of its own width (the empty review: one masked step).
    np.testing.assert_allclose([score([review])[0] for review in REVIEWS], probabilities,
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
    # Every export also gives the classes' probabilities and the predicted class's name.
    outputs = serve(reviews=tf.constant(REVIEWS))
    both = outputs["probabilities"].numpy()
    np.testing.assert_allclose(both, np.stack([1 - probabilities, probabilities], 1), atol=1e-6)
    assert [label.decode() for label in outputs["label"].numpy()] == [
        "positive" if p > 0.5 else "negative" for p in probabilities.numpy()]
    assert export.load(config.model_dir).class_names == ("negative", "positive")


def test_saved_graph_holds_no_device_only_lstm_op(tmp_path):
    config, vectorizer, net = tiny_run(tmp_path)  # lean_lstm: BlockLSTM on this CPU in training.
    assert isinstance(net.get_layer(model.LSTM_LAYER_NAME), LeanLSTM)
    types = op_types(export.save(config, net, vectorizer))
    assert not [op for op in types if op.startswith(("CudnnRNN", "BlockLSTM"))], sorted(types)
    # The walk reaches the function library: the generic LSTM's loop lives there.
    assert types & {"While", "StatelessWhile"}


def test_serving_copy_is_keras_generic_lstm_in_float32_with_the_same_weights(tmp_path):
    keras.config.set_dtype_policy("mixed_float16")  # As a GPU run trains.
    try:
        config, _, net = tiny_run(tmp_path)
        copy = export.serving_model(config, net)
    finally:
        keras.config.set_dtype_policy("float32")
    lstm = copy.get_layer(model.LSTM_LAYER_NAME)
    # LeanLSTM (BlockLSTM on a CPU) is a subclass: the type must be Keras' own layer.
    assert type(lstm) is keras.layers.LSTM and lstm.use_cudnn is False
    assert {layer.compute_dtype for layer in copy.layers} == {"float32"}
    for trained, served in zip(net.get_weights(), copy.get_weights(), strict=True):
        np.testing.assert_array_equal(trained, served)


def test_exports_are_numbered_and_the_highest_is_loaded(tmp_path):
    config, vectorizer, net = tiny_run(tmp_path)
    root = f"{config.model_dir}/export"
    assert export.save(config, net, vectorizer) == f"{root}/1"
    net.get_layer("positive").bias.assign([3.0])  # A different model, told apart by its output.
    assert export.save(config, net, vectorizer) == f"{root}/2"
    second = export.load(f"{root}/2").positive_probability(REVIEWS)
    assert not np.allclose(second, export.load(f"{root}/1").positive_probability(REVIEWS))
    assert sorted(os.listdir(root)) == ["1", "2"]  # Nothing left of the writing.
    for path in (config.model_dir, root, f"{root}/"):
        assert export.find(path) == f"{root}/2"
        np.testing.assert_array_equal(export.load(path).positive_probability(REVIEWS), second)
    # What a crash mid-export leaves: neither is loaded, and the next number stays unique.
    Path(root, ".3.tmp-99").mkdir()
    Path(root, ".3.tmp-99", "saved_model.pb").write_bytes(b"half written")
    Path(root, "3").mkdir()
    assert export.find(config.model_dir) == f"{root}/2"
    assert export.next_version(root) == 4


def test_runs_exported_before_versions_still_load(tmp_path, tiny_export):
    version_dir, probabilities = tiny_export
    run = tmp_path / "old_run"
    shutil.copytree(version_dir, run / "export")  # The old layout: export/saved_model.pb.
    for path in (run, run / "export"):
        assert export.find(str(path)) == str(run / "export")
        np.testing.assert_allclose(export.load(str(path)).positive_probability(REVIEWS),
                                   probabilities, atol=1e-6)


def test_saved_model_cli_shows_the_signature(tiny_export):
    process = subprocess.run([SAVED_MODEL_CLI, "show", "--dir", tiny_export[0], "--tag_set",
                              "serve", "--signature_def", "serving_default"],
                             capture_output=True, text=True, timeout=120, env=CPU_ONLY)
    assert process.returncode == 0, process.stderr[-3000:]
    shown = " ".join(process.stdout.split())
    assert "inputs['reviews'] tensor_info: dtype: DT_STRING shape: (-1)" in shown
    assert "outputs['positive_probability'] tensor_info: dtype: DT_FLOAT shape: (-1)" in shown


def test_saved_model_cli_runs_raw_strings_like_tf_serving_loads(tiny_export):
    # saved_model_cli run restores the SavedModel in a TF1 session, as TF Serving's C++
    # loader does: variables the graph cannot find fail here, not in tf.saved_model.load.
    version_dir, probabilities = tiny_export
    # --input_exprs splits its argument at ";", so the first review cannot be sent.
    sent = [index for index, review in enumerate(REVIEWS) if ";" not in review]
    reviews = [REVIEWS[index] for index in sent]
    process = subprocess.run(
        [SAVED_MODEL_CLI, "run", "--dir", version_dir, "--tag_set", "serve",
         "--signature_def", "serving_default", "--input_exprs", f"reviews={reviews!r}"],
        capture_output=True, text=True, timeout=120, env=CPU_ONLY)
    assert process.returncode == 0, process.stderr[-3000:]
    # Each output key is printed in a block of its own; take this one's.
    printed = process.stdout.split("Result for output key positive_probability:")[1]
    printed = printed.split("Result for output key")[0]
    numbers = re.findall(r"\d+\.\d*(?:e[-+]?\d+)?", printed)  # numpy's print of the array.
    np.testing.assert_allclose(np.array(numbers, dtype=np.float32), probabilities[sent],
                               atol=1e-6)


def test_rest_instances_give_one_probability_per_review(tiny_export):
    version_dir, probabilities = tiny_export
    body = json.loads(json.dumps({"instances": REVIEWS}))  # What a client POSTs to :predict.
    serve = tf.saved_model.load(version_dir).signatures["serving_default"]
    # TF Serving's row format: a one-input signature gets the instances as its batch.
    outputs = serve(reviews=tf.constant(body["instances"]))
    response = {"predictions": outputs["positive_probability"].numpy().tolist()}
    assert len(response["predictions"]) == len(body["instances"])
    np.testing.assert_allclose(response["predictions"], probabilities, atol=1e-6)


def test_fresh_cpu_only_process_loads_and_scores(tiny_export, tmp_path):
    version_dir, probabilities = tiny_export
    reviews_file = tmp_path / "reviews.json"
    reviews_file.write_text(json.dumps({"reviews": REVIEWS, "labels": [1] * len(REVIEWS)}))
    script = SCORE_IN_FRESH_PROCESS + "print(json.dumps(probabilities.tolist()))\n"
    process = subprocess.run([sys.executable, "-c", script, version_dir, str(reviews_file)],
                             capture_output=True, text=True, timeout=120, env=CPU_ONLY)
    assert process.returncode == 0, process.stderr[-3000:]
    np.testing.assert_allclose(json.loads(process.stdout.splitlines()[-1]), probabilities,
                               atol=1e-6)


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
    test = sources.load(Config(**metrics["flags"])).test  # The run's own test reviews.
    reviews_file = tmp_path / "test.json"
    reviews_file.write_text(json.dumps({"reviews": list(test.reviews),
                                        "labels": test.labels.tolist()}))
    process = subprocess.run(
        [sys.executable, "-c", SCORE_IN_FRESH_PROCESS, str(small_run / "export" / "1"),
         str(reviews_file)], capture_output=True, text=True, timeout=300, env=CPU_ONLY)
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
    # A user's own script loads it with Keras alone (no trainer import registering LeanLSTM).
    path = str(small_run / "model.keras")
    script = (f"import keras, numpy as np; net = keras.saving.load_model({path!r}); "
              "print(float(net.predict(np.array([[5, 6, 7]]), verbose=0)[0, 0]))")
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=300, env=CPU_ONLY, cwd="/")
    assert process.returncode == 0, process.stderr[-3000:]
    mine = float(net.predict(np.array([[5, 6, 7]]), verbose=0)[0, 0])
    assert float(process.stdout.splitlines()[-1]) == pytest.approx(mine, abs=1e-5)


THREE = Task(("world", "sports", "business"))


@pytest.fixture(scope="module")
def three_class_export(tmp_path_factory) -> tuple[str, np.ndarray]:
    """A tiny 3-class export and the model's own probabilities of REVIEWS, [5, 3]."""
    config = Config(vocab_size=20, max_len=8, embedding_dim=4, lstm_units=3,
                    model_dir=str(tmp_path_factory.mktemp("three") / "run"))
    train = data.Split(np.array(REVIEWS * 3, dtype=object), np.arange(15, dtype=np.int32) % 3)
    keras.utils.set_random_seed(0)
    vectorizer = data.make_vectorizer(train, config)
    net = model.build(config, task=THREE)
    net.get_layer("probabilities").bias.assign([0.0, 0.3, -0.3])  # Unequal classes.
    return export.save(config, net, vectorizer, THREE), model_outputs(config, vectorizer, net)


def test_three_class_export_serves_probabilities_and_class_names(three_class_export):
    version_dir, probabilities = three_class_export
    assert Path(version_dir, "assets.extra", "labels.txt").read_text() == (
        "world\nsports\nbusiness\n")
    classifier = export.load(version_dir)
    assert classifier.class_names == THREE.class_names
    np.testing.assert_allclose(classifier.probabilities(REVIEWS), probabilities, atol=1e-6)
    outputs = tf.saved_model.load(version_dir).signatures["serving_default"](
        reviews=tf.constant(REVIEWS))
    assert "positive_probability" not in outputs
    assert [label.decode() for label in outputs["label"].numpy()] == [
        THREE.class_names[i] for i in probabilities.argmax(axis=1)]
    with pytest.raises(UserError, match="3 classes, not two"):
        classifier.positive_probability(REVIEWS)


def test_saved_model_cli_runs_a_three_class_export(three_class_export):
    version_dir, probabilities = three_class_export
    reviews = REVIEWS[1:]  # --input_exprs splits at ";", which the first review holds.
    process = subprocess.run(
        [SAVED_MODEL_CLI, "run", "--dir", version_dir, "--tag_set", "serve",
         "--signature_def", "serving_default", "--input_exprs", f"reviews={reviews!r}"],
        capture_output=True, text=True, timeout=120, env=CPU_ONLY)
    assert process.returncode == 0, process.stderr[-3000:]
    printed = process.stdout.split("Result for output key ")
    by_key = {part.split(":", 1)[0]: part.split(":", 1)[1] for part in printed[1:]}
    assert set(by_key) == {"label", "probabilities"}
    numbers = re.findall(r"\d+\.\d*(?:e[-+]?\d+)?", by_key["probabilities"])
    np.testing.assert_allclose(np.array(numbers, np.float32).reshape(-1, 3), probabilities[1:],
                               atol=1e-6)
    assert re.findall(r"b'(\w+)'", by_key["label"]) == [
        THREE.class_names[i] for i in probabilities[1:].argmax(axis=1)]


# --- labels.txt: lines end at \n only -----------------------------------------------------

@pytest.mark.parametrize("name", ["two\nlines", "carriage\rreturn", "   "])
def test_a_class_name_that_cannot_be_one_line_is_refused_not_written(tmp_path, name):
    with pytest.raises(UserError, match=r"cannot be one line of labels\.txt"):
        export.write_labels(str(tmp_path), ["fine", name])
    assert list(tmp_path.iterdir()) == []  # Nothing written, not even a temporary file.


def test_labels_read_back_as_written_whatever_the_characters(tmp_path):
    names = ("a\u2028b", "c\x85d", "e\x1cf\x1dg\x1eh", "i\x0bj\x0ck", "l\u2029m", "ñ 😐")
    export.write_labels(str(tmp_path), names)
    assert (tmp_path / "labels.txt").read_bytes() == "".join(f"{n}\n" for n in names).encode()
    assert export.read_labels(str(tmp_path / "labels.txt")) == names


def test_labels_edited_on_windows_read_back(tmp_path):
    # A byte-order mark, CRLF line ends and a blank last line, as Notepad saves them.
    (tmp_path / "labels.txt").write_bytes("\ufeffworld\r\nsports\r\n\r\n".encode())
    assert export.read_labels(str(tmp_path / "labels.txt")) == ("world", "sports")
