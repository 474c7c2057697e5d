"""trainer/stream.py: sharded files streamed with every row accounted for, on the real reader.

The splits, the shard division and the row counts are checked on the real
tf.data pipeline; the runs go through the real CLI: a bad row in a shard the
sample never read, a resume on changed shards, a SIGTERM mid-epoch, and two
local workers each reading their own shards.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from tests.conftest import REPO, review_text, trainer_env
from tests.test_cluster import Group
from trainer import phases, stream, train
from trainer.config import Config
from trainer.errors import UserError

SIZES = (150, 150, 150, 90)  # Rows per shard: uneven, as real shards are.
FLAGS = ["--max_len=32", "--batch_size=16", "--embedding_dim=8", "--lstm_units=8",
         "--test_split=0.2", "--validation_split=0.2", "--log_every_steps=4"]


def write_shards(folder: Path, sizes: tuple[int, ...] = SIZES) -> dict[str, tuple[str, str]]:
    """CSV shards part-0.csv... with a header; shard 1 repeats it mid-file and has a blank line.

    Returns:
      {text: (label, shard name)} of every data row.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[str, tuple[str, str]] = {}
    number = 0
    for shard, size in enumerate(sizes):
        name = f"part-{shard}.csv"
        with (folder / name).open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["text", "label"])
            for i in range(size):
                label = ("neg", "pos")[number % 2]
                text = f"{review_text(label, number)} row{number}"
                rows[text] = (label, name)
                writer.writerow([text, label])
                number += 1
                if shard == 1 and i == size // 2:
                    writer.writerow(["text", "label"])
                    file.write("\r\n")
    return rows


def read(source: stream.Source, config: Config, split: str, worker: int = 0, workers: int = 1,
         seed: int | None = None) -> list[tuple[str, int]]:
    paths = stream.worker_shards(source.train_paths, worker, workers, "--data_path")
    return [(text.decode(), int(label)) for text, label in
            stream.rows(source, config, split, paths, seed).as_numpy_iterator()]


def test_every_row_is_in_one_split_chosen_by_its_text(tmp_path):
    rows = write_shards(tmp_path / "shards")
    config = Config(data_path=str(tmp_path / "shards" / "*.csv"), test_split=0.2,
                    validation_split=0.2)
    source, sample = stream.prepare(config)
    assert source.class_names == ("neg", "pos") and source.kind == "csv"
    assert len(source.train_paths) == 4
    splits = {split: read(source, config, split) for split in ("train", "validation", "test")}
    seen = [text for split in splits.values() for text, _ in split]
    assert sorted(seen) == sorted(rows)  # Every row once: no header, no blank line, no repeat.
    for split, code in (("train", 0), ("validation", 1), ("test", 2)):
        assert {source.split_of(stream.bucket(text), True) for text, _ in splits[split]} == {code}
        assert all(source.class_names[label] == rows[text][0] for text, label in splits[split])
    assert 0.1 < len(splits["test"]) / len(rows) < 0.3  # --test_split=0.2 of the buckets.
    assert {text for text in sample} <= {text for text, _ in splits["train"]}


def test_validation_is_the_same_rows_every_epoch_and_divided_among_workers(tmp_path):
    write_shards(tmp_path / "shards")
    config = Config(data_path=str(tmp_path / "shards"), stream="on", validation_split=0.2)
    source, _ = stream.prepare(config)
    epoch1, epoch2 = (read(source, config, "train", seed=seed) for seed in (1001, 1002))
    assert epoch1 != epoch2 and sorted(epoch1) == sorted(epoch2)  # Reshuffled, same rows.
    one = read(source, config, "validation")
    halves = [read(source, config, "validation", worker, 2) for worker in (0, 1)]
    assert sorted(one) == sorted(halves[0] + halves[1]) and all(halves)
    assert not {text for text, _ in halves[0]} & {text for text, _ in halves[1]}
    assert read(source, config, "train", seed=1001) == epoch1  # Seeded: resumable.


def test_each_worker_reads_whole_shards_and_too_few_shards_is_one_line():
    paths = tuple(f"part-{i}.csv" for i in range(5))
    assert stream.worker_shards(paths, 0, 2, "--data_path") == ["part-0.csv", "part-2.csv",
                                                                 "part-4.csv"]
    assert stream.worker_shards(paths, 1, 2, "--data_path") == ["part-1.csv", "part-3.csv"]
    with pytest.raises(UserError, match=r"^--data_path names 5 shards for 8 workers; .* at "
                                        r"least 8 files"):
        stream.worker_shards(paths, 0, 8, "--data_path")


def test_classes_and_a_vocab_file_are_taken_as_given(tmp_path):
    write_shards(tmp_path / "shards")
    path = str(tmp_path / "shards" / "*.csv")
    source, _ = stream.prepare(Config(data_path=path, classes="pos,neg"))
    assert source.class_names == ("pos", "neg") and source.label_ids["neg"] == 1
    with pytest.raises(UserError, match=r"label 'neg' is not one of --classes=pos,other"):
        stream.prepare(Config(data_path=path, classes="pos,other"))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n[UNK]\ngreat\nawful\n")
    vectorizer = stream.vocabulary([], Config(data_path=path, vocab_file=str(vocab)))
    assert vectorizer.get_vocabulary() == ["", "[UNK]", "great", "awful"]
    vocab.write_text("great\nawful\n")
    with pytest.raises(UserError, match=r"^--vocab_file=.* is not a vocab.txt a run wrote"):
        stream.vocabulary([], Config(data_path=path, vocab_file=str(vocab)))


def shard_lines(log: str) -> dict[str, dict[str, int]]:
    """{shard: {what: rows}} from the 'data: worker W read SHARD: N train, ...' lines."""
    counts: dict[str, dict[str, int]] = {}
    for shard, parts in re.findall(r"data: worker \d+ read (\S+): (.*)", log):
        counts[shard] = {what: int(n) for n, what in
                         (part.split(" ", 1) for part in parts.split(", "))}
    return counts


@pytest.mark.slow
def test_a_streamed_run_counts_every_row_and_refuses_changed_shards(run_trainer, tmp_path):
    rows = write_shards(tmp_path / "shards")
    command = [f"--data_path={tmp_path / 'shards'}/*.csv", f"--model_dir={tmp_path / 'run'}",
               *FLAGS, "--epochs=2"]
    first = run_trainer(*command)
    assert first.returncode == 0, first.stderr[-3000:]
    counts = shard_lines(first.stderr)
    assert set(counts) == {f"part-{i}.csv" for i in range(4)}
    for shard, size in enumerate(SIZES):
        got = counts[f"part-{shard}.csv"]
        assert sum(n for what, n in got.items() if not what.startswith("skipped")) == size
    assert counts["part-1.csv"]["skipped (header)"] == 2  # Its header and its repeat.
    assert counts["part-1.csv"]["skipped (blank line)"] == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2 and metrics["test_accuracy"] > 0.5

    shard = tmp_path / "shards" / "part-2.csv"
    text = next(t for t, (_, name) in rows.items() if name == "part-2.csv")
    shard.write_text(shard.read_text().replace(text, text.replace("row", "r0w")))
    again = run_trainer(*command)
    assert again.returncode == 2, again.stderr[-3000:]
    last = again.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "data_fingerprint" in last, last


@pytest.mark.slow
def test_a_bad_row_past_the_sample_stops_the_run_in_one_line(run_trainer, tmp_path):
    write_shards(tmp_path / "shards")
    with (tmp_path / "shards" / "part-3.csv").open("a") as file:
        file.write("one,two,three\n")
    process = run_trainer(f"--data_path={tmp_path / 'shards'}/*.csv", *FLAGS,
                          f"--model_dir={tmp_path / 'run'}", "--stream_sample_rows=40")
    assert process.returncode == 2, process.stderr[-3000:]
    last = process.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: --data_path=\S+part-3\.csv: line 92 has 3 fields, but the "
                        r"header \(text, label\) has 2; .*", last), last
    assert "Traceback" not in process.stderr


@pytest.mark.slow
def test_sigterm_mid_epoch_resumes_to_the_uninterrupted_result(run_trainer, tmp_path):
    write_shards(tmp_path / "shards", sizes=(300, 300, 300, 180))
    flags = [f"--data_path={tmp_path / 'shards'}/*.csv", *FLAGS, "--epochs=2",
             "--checkpoint_every_steps=5"]
    reference = run_trainer(*flags, f"--model_dir={tmp_path / 'reference'}")
    assert reference.returncode == 0, reference.stderr[-3000:]
    command = [sys.executable, "-m", "trainer.main", *flags, f"--model_dir={tmp_path / 'run'}"]
    process = subprocess.Popen(command, cwd=REPO, env=trainer_env(), stderr=subprocess.PIPE,
                               text=True)
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "epoch 1/2 | step 12/" in line:  # Mid-epoch, past a checkpoint.
            process.send_signal(signal.SIGTERM)
            break
    lines.extend(process.stderr)
    assert process.wait(timeout=120) == 75, "".join(lines[-20:])
    resumed = run_trainer(*flags, f"--model_dir={tmp_path / 'run'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    want, got = (json.loads((tmp_path / name / "metrics.json").read_text())
                 for name in ("reference", "run"))
    assert got["train_steps"] == want["train_steps"]
    assert got["test_accuracy"] == want["test_accuracy"]
    assert got["test_loss"] == pytest.approx(want["test_loss"], abs=1e-4)


@pytest.mark.slow
def test_two_local_workers_each_read_their_own_shards(tmp_path):
    rows = write_shards(tmp_path / "shards")
    group = Group(tmp_path / "run", [f"--data_path={tmp_path / 'shards'}/*.csv", *FLAGS,
                                     "--epochs=1"])
    assert group.wait(timeout=300) == [0, 0], group.tail(0) + group.tail(1)
    logs = [log.read_text() for log in group.logs]
    assert "worker 0 of 2 reads 2 of 4 shards: part-0.csv, part-2.csv" in logs[0]
    assert "worker 1 of 2 reads 2 of 4 shards: part-1.csv, part-3.csv" in logs[1]
    read = [shard_lines(log) for log in logs]
    assert set(read[0]) == {"part-0.csv", "part-2.csv"}
    assert set(read[1]) == {"part-1.csv", "part-3.csv"}
    total = sum(n for counts in read for shard in counts.values()
                for what, n in shard.items() if not what.startswith("skipped"))
    assert total == len(rows)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_completed"] == 1


def test_shards_sorted_by_class_are_named_in_a_warning(tmp_path, caplog):
    folder = tmp_path / "sorted"
    folder.mkdir()
    with (folder / "all.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        for number in range(2 * stream._SORTED_RUN):
            label = "neg" if number < stream._SORTED_RUN else "pos"
            writer.writerow([f"{review_text(label, number)} row{number}", label])
    stream.prepare(Config(data_path=str(folder / "all.csv"), stream="on"))
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert warning.startswith(f"data: the first {stream._SORTED_RUN} rows read of all.csv are "
                              "all of the class 'neg' (1 of 1 sampled shards start so)")


def test_auto_streams_a_glob_or_a_folder_of_shards_not_class_folders(tmp_path):
    write_shards(tmp_path / "shards")
    assert stream.wanted(Config(data_path=str(tmp_path / "shards")))
    assert stream.wanted(Config(data_path=str(tmp_path / "shards" / "part-*.csv")))
    assert not stream.wanted(Config(data_path=str(tmp_path / "shards" / "part-0.csv")))
    assert stream.wanted(Config(data_path=str(tmp_path / "shards" / "part-0.csv"), stream="on"))
    assert not stream.wanted(Config(data_path=str(tmp_path / "shards"), stream="off"))
    (tmp_path / "shards" / "pos").mkdir()  # A folder with folders is class folders.
    assert not stream.wanted(Config(data_path=str(tmp_path / "shards")))


@pytest.mark.slow
def test_max_steps_ends_the_run_and_its_schedule_at_that_step(run_trainer, tmp_path):
    write_shards(tmp_path / "shards")
    process = run_trainer(f"--data_path={tmp_path / 'shards'}", *FLAGS, "--epochs=3",
                          "--max_steps=7", f"--model_dir={tmp_path / 'run'}")
    assert process.returncode == 0, process.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["train_steps"], metrics["epochs_completed"]) == (7, 1)
    assert "epoch 1/3 done | step 7 " in process.stderr
    # The cosine runs over the 7 steps: at step 4, 1e-3 x (1 + cos(4/7 pi)) / 2.
    assert "step 4/" in process.stderr and "train/learning_rate 0.000389 " in process.stderr


def test_gzipped_json_lines_shards_stream_like_csv(tmp_path):
    rows = write_shards(tmp_path / "csv", sizes=(60, 40))
    folder = tmp_path / "jsonl"
    folder.mkdir()
    texts = list(rows)
    for shard, part in enumerate((texts[:60], texts[60:])):
        with gzip.open(folder / f"part-{shard}.jsonl.gz", "wt", encoding="utf-8") as file:
            file.writelines(json.dumps({"text": text, "label": rows[text][0]}) + "\n"
                            for text in part)
    config = Config(data_path=str(folder), validation_split=0.2, test_split=0.2)
    source, _ = stream.prepare(config)
    assert source.kind == "jsonl" and len(source.train_paths) == 2
    read_back = [text for split in ("train", "validation", "test")
                 for text, _ in read(source, config, split)]
    assert sorted(read_back) == sorted(texts)
    with pytest.raises(UserError, match=r"streamed shards must all be .csv, all .tsv or all "
                                        r"\.jsonl"):
        stream.shard_paths(str(tmp_path / "*" / "part-0*"), "--data_path")


def test_a_small_validation_set_is_kept_after_its_first_pass(tmp_path):
    write_shards(tmp_path / "shards")
    config = Config(data_path=str(tmp_path / "shards"), validation_split=0.2, test_split=0.2)
    _, _, datasets, _ = train._stream_data(config, phases.Phases())
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=1)
    validation = datasets.evaluation["val"]
    first = [labels.numpy().tolist() for _, labels in validation(context)]
    shutil.rmtree(tmp_path / "shards")  # Epoch 2's validation reads no shard: none is left.
    assert [labels.numpy().tolist() for _, labels in validation(context)] == first
    assert sum(map(len, first)) > 0
