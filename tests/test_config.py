"""trainer/config.py and trainer/flags.py: validation, presets, defaults from the environment."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
import types
from pathlib import Path

import pytest
from absl import flags as absl_flags

from trainer import flags
from trainer.config import PRESETS, Config, apply_presets
from trainer.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def parse(*argv: str) -> Config:
    values = absl_flags.FlagValues()
    for flag in absl_flags.FLAGS.get_flags_for_module(flags.__name__):  # Every project flag.
        values[flag.name] = flag
    values.unparse_flags()
    values(["trainer", *argv])
    return flags.to_config(values)


def test_defaults_are_the_articles_model_at_the_measured_batch_and_rates():
    config = Config()
    assert (config.vocab_size, config.max_len, config.embedding_dim, config.lstm_units,
            config.learning_rate) == (10000, 500, 32, 100, 1e-3)
    # docs/performance.md#batch-32-the-embedding-at-10x-adams-beta_2-099: 0.87 within
    # the first epoch on 3 of 3 seeds.
    assert (config.batch_size, config.embedding_lr_scale, config.adam_beta_2) == (32, 10.0, 0.99)


@pytest.mark.parametrize("changes, flag", [
    ({"batch_size": 0}, "--batch_size=0"),
    ({"epochs": -1}, "--epochs=-1"),
    ({"max_len": 0}, "--max_len=0"),
    ({"strategy": "parameter_server"}, "--strategy='parameter_server'"),
    ({"validation_split": 1.0}, "--validation_split=1.0"),
    ({"max_train_examples": -5}, "--max_train_examples=-5"),
    ({"learning_rate": 0.0}, "--learning_rate=0.0"),
    ({"clip_norm": -1.0}, "--clip_norm=-1.0"),
    ({"ema_momentum": 1.0}, "--ema_momentum=1.0"),
    ({"ema_momentum": -0.5}, "--ema_momentum=-0.5"),
    ({"embedding_lr_scale": 0.0}, "--embedding_lr_scale=0.0"),
    ({"adam_beta_2": 1.0}, "--adam_beta_2=1.0"),
    ({"profile_steps": "5"}, "--profile_steps='5'"),
    ({"profile_steps": "9,3"}, "--profile_steps='9,3'"),
    ({"intra_op_threads": -1}, "--intra_op_threads=-1"),
])
def test_invalid_values_name_the_flag(changes, flag):
    with pytest.raises(UserError) as error:
        Config(**changes)
    assert str(error.value).startswith(flag)


def test_early_stopping_needs_validation_data():
    with pytest.raises(UserError, match="--validation_split"):
        Config(validation_split=0.0, early_stopping_patience=2)


def test_smoke_preset_yields_to_explicit_flags(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = parse("--smoke_test", "--epochs=1", "--model_dir=/tmp/x")
    assert config.epochs == 1
    assert config.max_train_examples == PRESETS["smoke_test"]["max_train_examples"]
    assert config.max_len == PRESETS["smoke_test"]["max_len"]
    assert config.presets == ("smoke_test",)
    assert config.to_dict()["presets"] == ("smoke_test",)  # metrics.json's flags record it.


def test_presets_are_one_mechanism_and_the_smoke_test_wins_over_the_article(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    default = parse("--model_dir=/tmp/x")
    assert default.presets == ()
    article = parse("--article_settings", "--model_dir=/tmp/x")
    assert article == default.replace(**PRESETS["article_settings"],
                                      presets=("article_settings",))
    both = parse("--smoke_test", "--article_settings", "--model_dir=/tmp/x")
    assert both.presets == ("article_settings", "smoke_test")
    assert (both.max_len, both.padding) == (128, "pre")  # Smoke's length, the article's side.
    assert parse("--article_settings", "--clip_norm=1", "--model_dir=/tmp/x").clip_norm == 1
    # Given explicitly, even at the default's value, a flag still wins.
    assert parse("--smoke_test", "--max_len=500", "--model_dir=/tmp/x").max_len == 500
    with pytest.raises(UserError, match="unknown preset"):
        apply_presets({}, ["fast"], explicit=())


def test_fast_settings_is_a_deprecated_no_op_with_a_warning(monkeypatch, caplog):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with caplog.at_level(logging.WARNING):
        fast = parse("--fast_settings", "--model_dir=/tmp/x")
    assert fast == parse("--model_dir=/tmp/x")
    assert "--fast_settings is deprecated and does nothing" in caplog.text


def test_every_config_field_is_a_flag_with_its_default_help_and_group():
    help_text = flags.help_text()
    for field in dataclasses.fields(Config):
        if field.name == "presets":
            assert field.name not in absl_flags.FLAGS  # A record, set only by the switches.
            continue
        flag = absl_flags.FLAGS[field.name]
        assert flag.default == field.default, field.name
        assert flag.help.endswith(field.metadata["help"]), field.name
        group = field.metadata["group"]
        section = help_text.split(f"\n{group}:\n", 1)[1].split("\n\n", 1)[0]
        assert f"--{field.name}" in section or f"--[no]{field.name}" in section, field.name
        if field.metadata["choices"]:
            assert tuple(flag.parser.enum_values) == field.metadata["choices"], field.name


def test_a_settings_rules_name_its_flag_and_what_zero_means():
    with pytest.raises(UserError, match=r"--warmup_steps=-1 must be 0 or more \(0 means no "
                                        r"warm-up\)"):
        Config(warmup_steps=-1)
    with pytest.raises(UserError, match="--lr_schedule='linear' is not one of constant, cosine"):
        Config(lr_schedule="linear")
    with pytest.raises(UserError, match="--epochs=0 must be a positive integer"):
        Config(epochs=0)


def test_help_strings_and_docstrings_carry_no_measured_numbers():
    for path in ("trainer/flags.py", "trainer/config.py", "trainer/main.py"):
        text = (REPO / path).read_text()
        for measured in ("1.52x", "3.7-4.4x", "2.3x", "about a minute", "a quarter of the"):
            assert measured not in text, (path, measured)


def test_output_folders_default_under_model_dir_or_vertex_variables(monkeypatch):
    for name in ("AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR", "TF_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    config = parse("--model_dir=/tmp/run/")
    assert (config.model_dir, config.checkpoint_dir, config.tensorboard_dir) == (
        "/tmp/run", "/tmp/run/checkpoints", "/tmp/run/tensorboard")
    assert parse().model_dir.startswith("runs/")
    monkeypatch.setenv("AIP_MODEL_DIR", "gs://bucket/job/model/")
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", "gs://bucket/job/checkpoints/")
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", "gs://bucket/job/logs/")
    config = parse()
    assert (config.model_dir, config.checkpoint_dir, config.tensorboard_dir) == (
        "gs://bucket/job/model", "gs://bucket/job/checkpoints", "gs://bucket/job/logs")


def test_default_run_folders_are_unique_even_within_one_second(monkeypatch):
    for name in ("AIP_MODEL_DIR", "TF_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    # Ten runs started in the same second.
    second = datetime.datetime(2026, 12, 2, 0, 30, 15)
    monkeypatch.setattr(flags, "datetime", types.SimpleNamespace(
        datetime=types.SimpleNamespace(now=lambda: second)))
    folders = [parse().model_dir for _ in range(10)]
    assert len(set(folders)) == 10
    for folder in folders:
        assert re.fullmatch(r"runs/20261202-003015-[0-9a-f]{6}", folder), folder


def test_require_gpu_is_off_by_default_and_a_flag(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert Config().require_gpu is False
    assert parse("--require_gpu", "--model_dir=/tmp/x").require_gpu is True


def test_a_cluster_needs_an_explicit_model_dir(monkeypatch):
    for name in ("AIP_MODEL_DIR",):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, '
                                    '"task": {"type": "worker", "index": 0}}')
    with pytest.raises(UserError, match="--model_dir is required"):
        parse()


@pytest.mark.parametrize("flagfile", sorted((REPO / "configs").glob("*.flags")),
                         ids=lambda p: p.name)
def test_every_flagfile_loads_and_says_what_it_is_for(flagfile, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert flagfile.read_text().startswith("# "), "first line must say what the preset is for"
    config = parse(f"--flagfile={flagfile}", "--model_dir=/tmp/x")
    assert config.data_path.endswith("aclImdb_v1_labeled.tar.gz")
