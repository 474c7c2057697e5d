"""Test accuracy on little data: the defaults, with and without the warm-up, vs the article.

Run from the repository's root (a few minutes per seed on 2 CPU cores; accuracy,
not speed, so other work on the machine changes nothing but the duration)::

    nohup python -m benchmarks.small_data --seeds=1,2,3 \\
        --data_path=../shared/data/aclImdb_v1_labeled.tar.gz \\
        --output=benchmarks/results/small_data-6000.json > /tmp/small_data.log 2>&1 &

Each harness variant is ``python -m trainer.main`` in a process of its own, with
``--max_train_examples=6000 --max_test_examples=3000 --epochs=2
--early_stopping_patience=0 --validation_split=0.02`` (``--train_flags``) and the
variant's own flags (``VARIANTS``): ``defaults`` is the trainer as it is,
``batch64_constant`` the defaults before the one-epoch recipe (batch 64, one constant
rate, ``beta_2`` 0.999), ``keras_ema`` the defaults with Keras' own average (no
warm-up) in ``trainer.ema.WarmAdam``'s. ``article_code`` is ``contenders.ArticleCode``
(``model.fit``, 2 epochs) on the same number of reviews. ``--smoke`` runs the smoke
preset (``SMOKE_VARIANTS``): the defaults against ``--article_settings`` (the article's
recipe on the preset's data) and ``batch64_constant``, or, named with ``--variants``,
Keras' average at 0.9 and 0.99. Results (test accuracy per run, means over seeds) go to
``--output`` as JSON, rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Before TensorFlow loads: C++ info noise.

SMALL = ("--max_train_examples=6000 --max_test_examples=3000 --epochs=2 "
         "--early_stopping_patience=0 --validation_split=0.02")
# The defaults before the one-epoch recipe (benchmarks/README.md): batch 64, one constant rate.
BEFORE = "--batch_size=64 --embedding_lr_scale=1 --adam_beta_2=0.999 --lr_schedule=constant"
# name: (optimizer class, extra trainer flags).
VARIANTS = {"defaults": ("warm", ""), "batch64_constant": ("warm", BEFORE),
            "keras_ema": ("keras", "")}
SMOKE_VARIANTS = {"smoke_defaults": ("warm", "--smoke_test"),
                  "smoke_article_settings": ("warm", "--smoke_test --article_settings"),
                  "smoke_batch64_constant": ("warm", f"--smoke_test {BEFORE}"),
                  "smoke_0.9_keras_ema": ("keras", "--smoke_test --ema_momentum=0.9"),
                  "smoke_0.99_keras_ema": ("keras", "--smoke_test --ema_momentum=0.99")}
DEFAULT_VARIANTS = "defaults,batch64_constant,article_code"
DEFAULT_SMOKE_VARIANTS = "smoke_defaults,smoke_article_settings,smoke_batch64_constant"


def _known(smoke: bool) -> dict[str, tuple[str, str]]:
    """The harness variants ``--variants`` may name (``article_code`` runs apart from them)."""
    return SMOKE_VARIANTS if smoke else VARIANTS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_path", default=os.environ.get("IMDB_ARCHIVE", ""))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--train_flags", default=SMALL, help="Flags of every harness run.")
    parser.add_argument("--smoke", action="store_true",
                        help="The smoke preset's variants instead (no article_code).")
    parser.add_argument("--variants", default="",
                        help=f"Comma-separated names (default {DEFAULT_VARIANTS}; with --smoke "
                        f"{DEFAULT_SMOKE_VARIANTS}).")
    parser.add_argument("--output", required=True, help="JSON file, rewritten after each run.")
    args = parser.parse_args(argv)
    known = [*_known(args.smoke), *([] if args.smoke else ["article_code"])]
    args.variants = (args.variants or (DEFAULT_SMOKE_VARIANTS if args.smoke
                                       else DEFAULT_VARIANTS)).split(",")
    if unknown := sorted(set(args.variants) - set(known)):
        parser.error(f"--variants: unknown {', '.join(unknown)}; known: {', '.join(known)}.")
    if not args.data_path:
        parser.error("--data_path (or $IMDB_ARCHIVE) must name the aclImdb archive or folder.")
    return args


def run_harness(optimizer: str, flags: list[str]) -> dict:
    """``python -m trainer.main`` with ``optimizer`` ("warm" or "keras"); its metrics.json."""
    with tempfile.TemporaryDirectory() as model_dir:
        command = [sys.executable, "-m", "benchmarks.small_data", "--child", optimizer,
                   *flags, f"--model_dir={model_dir}/run"]
        process = subprocess.run(command, capture_output=True, text=True, check=False)
        if process.returncode:
            raise RuntimeError(f"{command} exited {process.returncode}:\n{process.stderr[-3000:]}")
        metrics = json.loads((Path(model_dir) / "run" / "metrics.json").read_text())
    return {"test_accuracy": round(metrics["test_accuracy"], 4),
            "epochs": [round(h.get("val/accuracy", float("nan")), 4)
                       for h in metrics.get("history", [])]}


def run_article(data_path: str, seed: int, train: int, test: int, epochs: int) -> dict:
    """The article's code on ``train`` reviews, test accuracy after each epoch."""
    code = ("import json, sys; from benchmarks import contenders as c; "
            f"s = c.load_splits({data_path!r}, {train}, {test}, {seed}); "
            f"a = c.ArticleCode(c.vectorize(s), {seed}); accs = []\n"
            f"for _ in range({epochs}): a.train_epoch(); accs.append(round(a.test_accuracy(), 4))\n"
            "print(json.dumps(accs))")
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=False)
    if process.returncode:
        raise RuntimeError(f"article_code exited {process.returncode}:\n{process.stderr[-3000:]}")
    accuracies = json.loads(process.stdout.strip().splitlines()[-1])
    return {"test_accuracy": accuracies[-1], "test_accuracy_by_epoch": accuracies}


def _flag(flags: str, name: str, default: int) -> int:
    for flag in flags.split():
        if flag.startswith(f"--{name}="):
            return int(flag.split("=", 1)[1])
    return default


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    known = _known(args.smoke)
    runs: dict[str, dict[int, dict]] = {name: {} for name in args.variants}
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.variants:
            if name == "article_code":
                runs[name][seed] = run_article(
                    args.data_path, seed, _flag(args.train_flags, "max_train_examples", 6000),
                    _flag(args.train_flags, "max_test_examples", 3000),
                    _flag(args.train_flags, "epochs", 2))
            else:
                optimizer, extra = known[name]
                flags = [f"--data_path={args.data_path}", f"--seed={seed}",
                         *("" if args.smoke else args.train_flags).split(), *extra.split()]
                runs[name][seed] = run_harness(optimizer, flags)
            _write(args, runs)
    return _write(args, runs)


def _write(args: argparse.Namespace, runs: dict[str, dict[int, dict]]) -> dict:
    result = {"benchmark": "small_data", "train_flags": "" if args.smoke else args.train_flags,
              "smoke": args.smoke, "runs": runs,
              "mean_test_accuracy": {name: round(statistics.mean(
                  r["test_accuracy"] for r in by_seed.values()), 4)
                  for name, by_seed in runs.items() if by_seed}}
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["mean_test_accuracy"]), file=sys.stderr, flush=True)
    return result


def child(optimizer: str) -> None:
    """``trainer.main`` as it is ("warm"), or with Keras' average where it builds ``WarmAdam``."""
    import keras

    from trainer import ema, main, model

    class KerasAverage(ema.WarmAdam):
        """WarmAdam (its rates per layer too) with Keras' average, which has no warm-up."""

        _update_model_variables_moving_average = (
            keras.optimizers.Adam._update_model_variables_moving_average)

    if optimizer == "keras":  # make_optimizer's settings and loss scaling stay the same.
        model.WarmAdam = KerasAverage
    main.run()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        optimizer_name = sys.argv[2]
        del sys.argv[1:3]
        child(optimizer_name)
    else:
        main()
