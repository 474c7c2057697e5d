"""trainer/predict.py: ``python -m trainer.predict`` on a trained run's export."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer import data, export, model, predict
from trainer.config import Config
from trainer.task import BINARY_CLASS_NAMES, Task

# One xdist_group: this module's trained run and exports are built once, on one test process.
pytestmark = pytest.mark.xdist_group("predict")

REPO = Path(__file__).resolve().parents[1]
POSITIVE = ("This movie was wonderful, the acting was superb and the story moving. One of the "
            "best films I have seen, I loved it.")
NEGATIVE = ("Awful. Boring, badly acted, the worst film I have ever seen; a total waste of "
            "time. Terrible.")
LINE = re.compile(r'^(?P<probability>[01]\.\d{4})  (?P<label>positive|negative)  "(?P<words>.*)"$')


# Runs predict as a child of a fresh interpreter and prints the child's peak RSS in KiB:
# RUSAGE_CHILDREN of the test process would also count the trainer runs of other tests.
PEAK_RSS_OF_PREDICT = textwrap.dedent("""
    import resource, subprocess, sys
    code = subprocess.run([sys.executable, "-m", "trainer.predict", *sys.argv[1:]]).returncode
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
    sys.exit(code)
""")


def run_predict(*args: str, stdin: str | bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    stdin = stdin if stdin is not None else ""
    process = subprocess.run([sys.executable, "-m", "trainer.predict", *args], cwd=REPO,
                             env=env, input=stdin.encode() if isinstance(stdin, str) else stdin,
                             capture_output=True, timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode,
                                       process.stdout.decode(), process.stderr.decode())


@pytest.fixture(scope="module")
def full_size_export(tmp_path_factory) -> Path:
    """An untrained export of the real model's size, with the article's padding to 500.

    Without a mask every batch runs all 500 steps however short its reviews
    are: the case where scoring all input in one batch took 16.5 GB.
    """
    config = Config(model_dir=str(tmp_path_factory.mktemp("full") / "run"), padding="pre",
                    bucket_by_length=False, lean_lstm=False)
    assert (config.vocab_size, config.lstm_units, config.max_len) == (10000, 100, 500)
    reviews = np.array([POSITIVE, NEGATIVE] * 4, dtype=object)
    train = data.Split(reviews, np.arange(len(reviews), dtype=np.int32) % 2)
    keras.utils.set_random_seed(0)
    export.save(config, model.build(config), data.make_vectorizer(train, config))
    return Path(config.model_dir)


def parse(stdout: str) -> list[dict[str, str]]:
    lines = stdout.splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    return [match.groupdict() for match in matches]  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def trained_run(run_trainer, imdb_archive, tmp_path_factory) -> Path:
    """A smoke run that learns enough to tell a clearly positive review from a negative one."""
    model_dir = tmp_path_factory.mktemp("predict") / "run"
    process = run_trainer("--smoke_test", f"--data_path={imdb_archive}",
                          f"--model_dir={model_dir}", "--max_train_examples=3000",
                          "--max_test_examples=400", "--epochs=3", "--max_len=64",
                          "--batch_size=32")
    assert process.returncode == 0, process.stderr[-3000:]
    return model_dir


@pytest.mark.slow
def test_clear_reviews_get_their_labels(trained_run):
    process = run_predict(f"--model_dir={trained_run}", POSITIVE, NEGATIVE)
    assert process.returncode == 0, process.stderr[-3000:]
    positive, negative = parse(process.stdout)
    assert positive["label"] == "positive" and float(positive["probability"]) > 0.5
    assert negative["label"] == "negative" and float(negative["probability"]) < 0.5
    assert positive["words"] == "This movie was wonderful, the acting was superb ..."
    assert negative["words"].startswith("Awful. Boring, badly acted")


@pytest.mark.slow
def test_reviews_from_stdin_lines_and_an_export_path(trained_run):
    process = run_predict(f"--model_dir={trained_run / 'export'}",
                          stdin=f"{NEGATIVE}\n\n{POSITIVE}\n")
    assert process.returncode == 0, process.stderr[-3000:]
    assert [line["label"] for line in parse(process.stdout)] == ["negative", "positive"]


@pytest.mark.parametrize("folder, needle", [
    ("nowhere", "does not exist"),
    (".", "holds no exported model"),
])
def test_unreadable_model_dir_is_a_one_line_error(tmp_path, folder, needle):
    process = run_predict(f"--model_dir={tmp_path / folder}", "A fine film.")
    assert process.returncode == 2
    assert process.stdout == ""
    assert "Traceback" not in process.stderr
    [error] = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert needle in error


@pytest.mark.slow
def test_ten_thousand_piped_reviews_keep_memory_flat_and_their_order(full_size_export):
    reviews = [f"Review {i} of a film {'I loved ' if i % 2 else 'so dull '}" * 3
               for i in range(10_000)]
    process = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_OF_PREDICT, f"--model_dir={full_size_export}"],
        cwd=REPO, input="\n".join(reviews) + "\n", capture_output=True, text=True,
        timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    words = [line["words"] for line in parse(process.stdout)]
    assert words == [" ".join(review.split()[:predict.PREVIEW_WORDS]) + " ..."
                     for review in reviews]
    peak_gib = int(process.stderr.splitlines()[-1]) / 2**20
    # Scored all at once, padded to 500, 10,000 reviews took 16.5 GB.
    assert peak_gib < 1.5, f"predict peaked at {peak_gib:.2f} GiB"


def test_stdin_is_scored_as_it_comes(full_size_export):
    # Each line is answered while stdin is still open: nothing waits for the end of input.
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer.predict", f"--model_dir={full_size_export}",
         "--batch_size=1"], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(300, process.kill)  # Only a hang ever waits this long.
    watchdog.start()
    try:
        for review in ("First review, still typing.", "Second one."):
            process.stdin.write(review + "\n")
            process.stdin.flush()
            [line] = parse(process.stdout.readline())
            assert line["words"] == review
        process.stdin.close()
        assert process.wait() == 0 and process.stdout.read() == ""
    finally:
        watchdog.cancel()
        process.kill()


def test_non_utf8_stdin_is_a_one_line_error_naming_the_line(full_size_export):
    process = run_predict(f"--model_dir={full_size_export}", "--batch_size=1",
                          stdin=b"A fine film.\n\nCaf\xe9 scenes, in Latin-1.\nNever read.\n")
    assert process.returncode == 2
    assert "Traceback" not in process.stderr
    # The reviews before it, in their own batch, were already scored and printed.
    assert [line["words"] for line in parse(process.stdout)] == ["A fine film."]
    [error] = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: stdin line 3 is not valid UTF-8")


def test_blank_stdin_is_a_one_line_error(full_size_export):
    process = run_predict(f"--model_dir={full_size_export}", stdin="\n  \n")
    assert (process.returncode, process.stdout) == (2, "")
    assert process.stderr.splitlines()[-1] == "error: no reviews: stdin held no non-blank lines."


def test_arguments_are_scored_in_batches_in_order(full_size_export):
    reviews = [f"Argument number {i}." for i in range(5)]
    process = run_predict(f"--model_dir={full_size_export / 'export' / '1'}", "--batch_size=2",
                          *reviews)
    assert process.returncode == 0, process.stderr[-3000:]
    assert [line["words"] for line in parse(process.stdout)] == reviews


def test_batches_are_taken_without_reading_ahead():
    read = []

    def lines():
        for i in range(5):
            read.append(i)
            yield str(i)

    batches = predict.batched(lines(), 2)
    assert next(batches) == ["0", "1"] and read == [0, 1]
    assert list(batches) == [["2", "3"], ["4"]]


def test_line_shows_probability_label_and_first_words():
    def line(review: str, positive: float, threshold: float = 0.5) -> str:
        return predict.format_prediction(review, [1.0 - positive, positive],
                                         BINARY_CLASS_NAMES, threshold=threshold)

    assert line("Dull.", 0.0312) == '0.0312  negative  "Dull."'
    assert line("one two three four five six seven eight nine", 0.97) == (
        '0.9700  positive  "one two three four five six seven eight ..."')
    assert line("Fine.", 0.6, threshold=0.7).split()[1] == "negative"


def test_binary_lines_take_their_labels_from_the_class_names():
    line = predict.format_prediction("Dull.", [0.9688, 0.0312], ("bad", "good"))
    assert line == '0.0312  bad  "Dull."'
    every = predict.format_prediction("Dull.", [0.9688, 0.0312], ("bad", "good"),
                                      every_class=True)
    assert every == '0.0312  bad  bad=0.9688  good=0.0312  "Dull."'


def test_many_class_lines_name_the_most_probable_class():
    names = ("world", "sports", "business")
    assert predict.format_prediction("Goal!", [0.1, 0.7, 0.2], names) == '0.7000  sports  "Goal!"'
    assert predict.format_prediction("Goal!", [0.1, 0.7, 0.2], names, every_class=True) == (
        '0.7000  sports  world=0.1000  sports=0.7000  business=0.2000  "Goal!"')


THREE = Task(("world", "sports", "business"))


@pytest.fixture(scope="module")
def three_class_export(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A tiny untrained 3-class export, and the model's own probabilities of two reviews."""
    config = Config(model_dir=str(tmp_path_factory.mktemp("three") / "run"), vocab_size=20,
                    max_len=8, embedding_dim=4, lstm_units=3)
    reviews = np.array([POSITIVE, NEGATIVE] * 3, dtype=object)
    train = data.Split(reviews, np.arange(len(reviews), dtype=np.int32) % 3)
    keras.utils.set_random_seed(0)
    net = model.build(config, task=THREE)
    net.get_layer("probabilities").bias.assign([0.0, 0.5, -0.5])
    vectorizer = data.make_vectorizer(train, config)
    export.save(config, net, vectorizer, THREE)
    # Through training's encode and batches, not the export: the label is the review's index.
    scored = data.encode(data.Split(reviews[:2], np.arange(2, dtype=np.int32)), vectorizer,
                         config)
    (ids, index), = data.batches(scored, config, global_batch_size=2)
    probabilities = np.zeros((2, 3), np.float32)
    probabilities[index.numpy()] = net(ids, training=False).numpy()
    return Path(config.model_dir), probabilities


def test_predict_all_prints_every_class_of_a_three_class_run(three_class_export):
    run, probabilities = three_class_export
    process = run_predict(f"--model_dir={run}", "--all", POSITIVE, NEGATIVE)
    assert process.returncode == 0, process.stderr[-3000:]
    names = THREE.class_names
    for line, expected in zip(process.stdout.splitlines(), probabilities, strict=True):
        fields = line.split("  ")
        best = int(np.argmax(expected))
        assert fields[1] == names[best]
        assert float(fields[0]) == pytest.approx(expected[best], abs=1e-4)
        # Each "name=p" to 4 places (format_prediction's own tests pin the text).
        assert [field.split("=")[0] for field in fields[2:5]] == list(names)
        assert [float(field.split("=")[1]) for field in fields[2:5]] == pytest.approx(
            expected, abs=1e-4)
        assert fields[5].startswith('"')
    plain = run_predict(f"--model_dir={run}", POSITIVE)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert plain.stdout.split("  ")[1] == names[int(np.argmax(probabilities[0]))]
    assert "=" not in plain.stdout.split('"')[0]


def test_predict_all_on_a_binary_export_keeps_the_line_and_adds_both_classes(full_size_export):
    process = run_predict(f"--model_dir={full_size_export}", "--all", "A fine film.")
    assert process.returncode == 0, process.stderr[-3000:]
    probability, label, negative, positive, words = process.stdout.strip().split("  ")
    assert label in ("positive", "negative") and words == '"A fine film."'
    assert negative.startswith("negative=") and positive == f"positive={probability}"


# --- Input as files hold it, class names of any Unicode -----------------------------------

BOM = "\ufeff"


def test_a_byte_order_mark_is_no_part_of_the_first_word(full_size_export):
    # Without the fix the first word is "\ufeffThis", a word the vocabulary never saw.
    classifier = export.load(str(full_size_export))
    with_bom, without = classifier.probabilities([BOM + POSITIVE, POSITIVE])
    assert (with_bom != without).any()
    flags = (f"--model_dir={full_size_export}", "--all")
    clean = run_predict(*flags, POSITIVE, NEGATIVE)
    assert clean.returncode == 0, clean.stderr[-3000:]
    # A file saved "UTF-8 with BOM", and two of them cat-ed together; the same as arguments.
    for process in (run_predict(*flags, stdin=f"{BOM}{POSITIVE}\r\n{BOM}{NEGATIVE}\r\n"),
                    run_predict(*flags, BOM + POSITIVE, BOM + NEGATIVE)):
        assert process.returncode == 0, process.stderr[-3000:]
        assert process.stdout == clean.stdout
    assert BOM not in clean.stdout


# Every character str.splitlines() breaks at (and labels.txt must not): U+2028, U+2029,
# U+0085, \x1c-\x1e, \v, \f; with other scripts, an emoji and a joiner.
SEPARATED = Task(("good\u2028one", "bad\x85one", "meh\x1cone", "para\u2029graph",
                  "tab\x0bform\x0cfeed", "group\x1dsep\x1erec", "é 😐\u200d日本"))


@pytest.fixture(scope="module")
def separated_export(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A tiny untrained export whose class names hold line separators, and its scores."""
    config = Config(model_dir=str(tmp_path_factory.mktemp("separated") / "run"), vocab_size=20,
                    max_len=8, embedding_dim=4, lstm_units=3)
    reviews = np.array([POSITIVE, NEGATIVE] * 7, dtype=object)
    train = data.Split(reviews, np.arange(len(reviews), dtype=np.int32) % 7)
    keras.utils.set_random_seed(0)
    net = model.build(config, task=SEPARATED)
    net.get_layer("probabilities").bias.assign([0.0, 0.5, -0.5, 0.2, -0.2, 0.1, 0.3])
    version = export.save(config, net, data.make_vectorizer(train, config), SEPARATED)
    served = tf.saved_model.load(version).signatures["serving_default"](
        reviews=tf.constant([POSITIVE, NEGATIVE]))
    return Path(version), served


def test_class_names_of_any_unicode_survive_labels_txt_the_export_and_predict(
        separated_export):
    version, served = separated_export
    names = SEPARATED.class_names
    labels = version / "assets.extra" / "labels.txt"
    assert labels.read_bytes() == "".join(f"{name}\n" for name in names).encode()
    assert export.read_labels(str(labels)) == names
    assert export.load(str(version)).class_names == names
    best = served["probabilities"].numpy().argmax(axis=1)
    assert [label.decode() for label in served["label"].numpy()] == [names[i] for i in best]

    # Under an ASCII locale too: predict writes UTF-8 whatever the locale says.
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    process = subprocess.run([sys.executable, "-m", "trainer.predict", f"--model_dir={version}",
                              "--all", POSITIVE, NEGATIVE], cwd=REPO, env=env,
                             capture_output=True, timeout=120)
    assert process.returncode == 0, process.stderr.decode()[-3000:]
    lines = process.stdout.decode("utf-8").split("\n")  # Lines end at \n only.
    assert lines[-1] == "" and len(lines) == 3
    for line, i in zip(lines[:2], best, strict=True):
        fields = line.split("  ")
        assert fields[1] == names[i]
        assert [field.rsplit("=", 1)[0] for field in fields[2:-1]] == list(names)


@pytest.mark.parametrize("edit, needle", [
    (lambda text: text + "one more\n", "names 8 classes but the model"),
    (lambda text: text.replace("\u2028", "\n"), "names 8 classes but the model"),
    (lambda text: text.split("\n", 1)[1], "names 6 classes but the model"),
])
def test_labels_that_do_not_fit_the_model_are_one_line_exit_2(separated_export, tmp_path,
                                                               edit, needle):
    version, _ = separated_export
    copy = tmp_path / "1"
    shutil.copytree(version, copy)
    labels = copy / "assets.extra" / "labels.txt"
    labels.write_text(edit(labels.read_text(encoding="utf-8")), encoding="utf-8")
    process = run_predict(f"--model_dir={copy}", POSITIVE)
    assert (process.returncode, process.stdout) == (2, "")
    assert "Traceback" not in process.stderr
    [error] = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert needle in error and "scores 7" in error and str(labels) in error


def test_labels_that_are_not_utf8_are_one_line_exit_2(separated_export, tmp_path):
    version, _ = separated_export
    copy = tmp_path / "1"
    shutil.copytree(version, copy)
    (copy / "assets.extra" / "labels.txt").write_bytes(b"caf\xe9\n")
    process = run_predict(f"--model_dir={copy}", POSITIVE)
    assert (process.returncode, process.stdout) == (2, "")
    assert "Traceback" not in process.stderr
    assert process.stderr.splitlines()[-1].startswith("error: ")
    assert "labels.txt is not valid UTF-8" in process.stderr.splitlines()[-1]


@pytest.mark.slow
def test_a_run_on_class_folders_named_in_any_script_predicts_with_their_names(
        run_trainer, tmp_path):
    # Where a user meets it: class folders, the trainer, labels.txt, the export, predict.
    names = ("bad \u05e8\u05e2", "good\u00a0one", "m\u00e9h\u200d\U0001f610")
    cues = ("awful boring worst dull", "great wonderful superb loved", "plain average okay so")
    rng = random.Random(0)
    for name, cue in zip(names, cues, strict=True):
        (tmp_path / "data" / name).mkdir(parents=True)
        words = [*cue.split(), "the", "film", "a", "scene", "story", "actor", "plot"]
        for i in range(120):
            text = " ".join(rng.choice(words) for _ in range(14))
            (tmp_path / "data" / name / f"{i}.txt").write_text(text, encoding="utf-8")
    model_dir = tmp_path / "run"
    trained = run_trainer(f"--data_path={tmp_path / 'data'}", f"--model_dir={model_dir}",
                          "--batch_size=16", "--max_len=16", "--epochs=3")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (model_dir / "labels.txt").read_text(encoding="utf-8") == "".join(
        f"{name}\n" for name in sorted(names))
    process = run_predict(f"--model_dir={model_dir}", "great wonderful superb film",
                          "awful boring worst", "plain average okay")
    assert process.returncode == 0, process.stderr[-3000:]
    assert [line.split("  ")[1] for line in process.stdout.split("\n")[:-1]] == [
        names[1], names[0], names[2]]
