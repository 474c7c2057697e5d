"""trainer/predict.py: ``python -m trainer.predict`` on a trained run's export."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import predict

REPO = Path(__file__).resolve().parents[1]
POSITIVE = ("This movie was wonderful, the acting was superb and the story moving. One of the "
            "best films I have seen, I loved it.")
NEGATIVE = ("Awful. Boring, badly acted, the worst film I have ever seen; a total waste of "
            "time. Terrible.")
LINE = re.compile(r'^(?P<probability>[01]\.\d{4})  (?P<label>positive|negative)  "(?P<words>.*)"$')


def run_predict(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "trainer.predict", *args], cwd=REPO, env=env,
                          input=stdin if stdin is not None else "", capture_output=True,
                          text=True, timeout=120)


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


def test_line_shows_probability_label_and_first_words():
    assert predict.format_line("Dull.", 0.0312, 0.5) == '0.0312  negative  "Dull."'
    line = predict.format_line("one two three four five six seven eight nine", 0.97, 0.5)
    assert line == '0.9700  positive  "one two three four five six seven eight ..."'
    assert predict.format_line("Fine.", 0.6, threshold=0.7).split()[1] == "negative"
