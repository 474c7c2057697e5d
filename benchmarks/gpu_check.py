"""GPU acceptance check: ``python -m benchmarks.gpu_check --data_path=aclImdb_v1.tar.gz``.

Run it on a GPU machine after installing ``.[gpu]`` (``launch/gpu.sh --check`` does
both). Three short trainer runs, each in its own process, answer:

1. Does TensorFlow see a GPU? (in this process, before anything else)
2. Does the LSTM run as the fused cuDNN op? A float32 run profiles a few steps;
   its trace must hold a ``CudnnRNN`` op.
3. What does a training step cost in float32, in mixed_float16, and with the
   generic (non-cuDNN) kernel that ``--mask_padding --padding=pre`` forces?
4. Does the export serve anywhere? The mixed_float16 run's export scores the same
   reviews here and in a CPU-only process (``CUDA_VISIBLE_DEVICES=""``).

Prints one JSON object (also written to ``<output_dir>/gpu_check.json``) and exits
0 when every check passed, 1 when one failed (``failed`` names it), 2 on bad
flags, 3 when TensorFlow sees no GPU here (one line on stderr; nothing to check).
Trainer flags after ours are passed to every run and win over the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from trainer import tf_log

EXIT_FAILED, EXIT_NO_GPU = 1, 3  # 2, bad flags: argparse's own
# Small runs: the point is what runs where, not accuracy.
RUN_FLAGS = ["--smoke_test", "--epochs=1", "--max_train_examples=2000",
             "--max_test_examples=500", "--log_every_steps=10", "--require_gpu"]
RUNS = {  # name: the flags that make it
    "float32": ["--precision=float32", "--profile_steps=5,8"],
    "mixed_float16": ["--precision=mixed_float16"],
    "generic_kernel": ["--precision=float32", "--mask_padding", "--padding=pre"],
}
REVIEWS = ["A wonderful film, moving and funny.", "Dull and far too long.",
           "The plot made no sense but the actors were great.", "I hated every minute."]
SCORE = """
import json, sys
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = serve(reviews=tf.constant(json.loads(sys.argv[2])))["positive_probability"]
print(json.dumps({"gpus": len(tf.config.list_physical_devices("GPU")),
                  "scores": [float(x) for x in tf.reshape(out, [-1]).numpy()]}))
"""


def visible_gpus() -> list[str]:
    """Names of the GPUs TensorFlow sees in this process."""
    tf_log.import_tensorflow()  # Its C++ start-up notes kept to errors.
    import tensorflow as tf

    return [gpu.name for gpu in tf.config.list_physical_devices("GPU")]


def train(name: str, run_dir: Path, trainer_flags: list[str]) -> dict:
    """One trainer run in a subprocess; its metrics.json, or the end of its log on failure."""
    command = [sys.executable, "-m", "trainer.main", *RUN_FLAGS, *RUNS[name],
               f"--model_dir={run_dir}", *trainer_flags]
    process = subprocess.run(command, capture_output=True, text=True, check=False)
    if process.returncode != 0:
        return {"error": f"exit {process.returncode}: {process.stderr[-1500:]}"}
    return json.loads((run_dir / "metrics.json").read_text())


def step_ms(metrics: dict) -> float | None:
    """Milliseconds per training step of the global batch, over the run."""
    per_sec = metrics.get("train_examples_per_sec")
    batch = metrics.get("flags", {}).get("batch_size")
    return round(1000 * batch / per_sec, 2) if per_sec and batch else None


def ran_cudnn(run_dir: Path) -> bool:
    """Whether the run's profiler trace holds the fused cuDNN LSTM op (CudnnRNN*)."""
    traces = list((run_dir / "tensorboard").rglob("*.xplane.pb"))
    return any(b"CudnnRNN" in trace.read_bytes() for trace in traces)


def score(export_dir: Path, cpu_only: bool) -> dict:
    """Scores REVIEWS with the export in a fresh process (with the GPUs hidden if cpu_only)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""
    process = subprocess.run([sys.executable, "-c", SCORE, str(export_dir), json.dumps(REVIEWS)],
                             capture_output=True, text=True, env=env, check=False)
    if process.returncode != 0:
        return {"error": process.stderr[-1500:]}
    return json.loads(process.stdout.strip().splitlines()[-1])


def check(output_dir: Path, trainer_flags: list[str]) -> dict:
    """Runs every check; the report, with ``failed`` listing what did not pass."""
    report: dict = {"gpus": visible_gpus(), "runs": {}, "failed": []}
    for name in RUNS:
        metrics = train(name, output_dir / name, trainer_flags)
        if "error" in metrics:
            report["failed"].append(f"the {name} run failed")
        report["runs"][name] = {"step_ms": step_ms(metrics),
                                "examples_per_sec": metrics.get("train_examples_per_sec"),
                                "cudnn_eligible": metrics.get("cudnn_eligible"),
                                **({"error": metrics["error"]} if "error" in metrics else {})}
    report["cudnn_op_in_trace"] = ran_cudnn(output_dir / "float32")
    if not report["cudnn_op_in_trace"]:
        report["failed"].append("no CudnnRNN op in the float32 run's profiler trace")
    if report["runs"]["generic_kernel"]["cudnn_eligible"] is not False:
        report["failed"].append("--mask_padding --padding=pre was not reported as non-cuDNN")
    # The newest SavedModel under export/ (a versioned export/N/ or export/ itself).
    exports = sorted((output_dir / "mixed_float16" / "export").glob("**/saved_model.pb"))
    export = exports[-1].parent if exports else output_dir / "mixed_float16" / "export"
    here, cpu = score(export, cpu_only=False), score(export, cpu_only=True)
    pairs = zip(here.get("scores", []), cpu.get("scores", []), strict=False)
    diffs = [abs(a - b) for a, b in pairs]
    report["export"] = {"reviews": REVIEWS, "gpu_process": here, "cpu_only_process": cpu,
                        "max_abs_diff": max(diffs) if diffs else None}
    if cpu.get("gpus") != 0 or len(diffs) != len(REVIEWS) or max(diffs) > 1e-3:
        report["failed"].append("the export does not score the same in a CPU-only process")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0],
        epilog="Other flags (e.g. --data_path) go to every trainer run.")
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="where the runs and gpu_check.json go [default: a new temp folder]")
    args, trainer_flags = parser.parse_known_args(argv)
    if not visible_gpus():
        print("error: TensorFlow sees no GPU here, so there is nothing to check; run this on "
              "an NVIDIA GPU machine with .[gpu] installed (launch/gpu.sh --check).",
              file=sys.stderr)
        return EXIT_NO_GPU
    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    output_dir.mkdir(parents=True, exist_ok=True)
    report = check(output_dir, trainer_flags)
    text = json.dumps(report, indent=2)
    (output_dir / "gpu_check.json").write_text(text + "\n")
    print(text)
    print("gpu_check: " + ("passed" if not report["failed"] else
                           "FAILED: " + "; ".join(report["failed"])), file=sys.stderr)
    return EXIT_FAILED if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
