#!/usr/bin/env bash
# Train on this machine's NVIDIA GPUs: check the driver, install the GPU extra, run.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: launch/gpu.sh [--profile] [--check] [--dry-run] [-- TRAINER_FLAGS...]

Checks that nvidia-smi works, installs this package with the GPU extra
(pip install -e '.[gpu]', i.e. tensorflow[and-cuda]) into \$VENV, checks that TensorFlow
sees the GPUs, then runs
  \$VENV/bin/python -m trainer.main --strategy=S --precision=\$PRECISION --require_gpu TRAINER_FLAGS...
with S = mirrored for several GPUs, one_device for one; --require_gpu makes the trainer stop
at once instead of training on the CPU if TensorFlow loses the GPU. --profile adds
--profile_steps=\$PROFILE_STEPS: a TensorBoard profiler trace of those steps (open the
Profile tab of: tensorboard --logdir=MODEL_DIR). Your flags come last and win.
--check runs the GPU acceptance check instead of training:
  \$VENV/bin/python -m benchmarks.gpu_check TRAINER_FLAGS...
(the GPU is used, the LSTM runs as cuDNN, step times of float32, mixed_float16 and the
generic kernel as JSON, the export scores the same on a CPU-only process; exit 0 = passed).

Examples:
  launch/gpu.sh -- --data_path=aclImdb_v1.tar.gz --model_dir=runs/gpu
  launch/gpu.sh --profile -- --smoke_test --data_path=aclImdb_v1.tar.gz
  launch/gpu.sh --check -- --data_path=aclImdb_v1.tar.gz
  DRY_RUN=1 launch/gpu.sh"

setting VENV .venv-gpu "virtualenv folder, apart from the CPU one (relative paths are inside the repo)"
setting PYTHON python3 "Python that creates the virtualenv"
setting REINSTALL 0 "1: pip install even when the package already imports"
setting PRECISION mixed_float16 "--precision for the trainer"
setting PROFILE 0 "1 (or --profile): profile PROFILE_STEPS with the TensorBoard profiler"
setting PROFILE_STEPS 10,15 "first,last step to profile"
setting CHECK 0 "1 (or --check): run the GPU acceptance check (benchmarks.gpu_check), not training"
parse_args "$@"
((${#ARGS[@]} == 0)) || die "unexpected argument ${ARGS[0]} (trainer flags go after --)"
print_settings

# 1. The driver: nvidia-smi lists one line per GPU (read-only, so a dry run checks too).
gpus=''
if ! command -v nvidia-smi >/dev/null; then
  problem="nvidia-smi not found: this machine has no NVIDIA driver installed."
elif ! gpus=$(nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>&1); then
  problem="nvidia-smi failed, so the NVIDIA driver or GPU is not usable: $gpus"
fi
if [[ -n ${problem:-} ]]; then
  msg="$problem
  Fix: install or repair the NVIDIA driver (check with: nvidia-smi), or train on CPU with launch/local.sh."
  [[ $DRY_RUN == 1 ]] || die "$msg"
  log "warning: $msg"
  gpus="0, (one GPU assumed for this dry run)"
fi
num_gpus=$(grep -c . <<<"$gpus")
log "nvidia-smi sees $num_gpus GPU(s):"
printf '    %s\n' "${gpus//$'\n'/$'\n    '}" >&2

# 2. The Python side, and whether TensorFlow sees the same GPUs.
ensure_venv gpu
tf_check='import tensorflow as tf; print(len(tf.config.list_physical_devices("GPU")))'
tf_gpus=$(run "$VENV_PYTHON" -c "$tf_check" | tail -n 1) || tf_gpus=0
if [[ $DRY_RUN != 1 ]]; then
  if [[ $tf_gpus != [1-9]* ]]; then
    die "nvidia-smi sees $num_gpus GPU(s) but TensorFlow sees none. Usual causes: the virtualenv
  $VENV holds tensorflow-cpu (use a fresh VENV, or REINSTALL=1), the driver is older than the
  CUDA that tensorflow[and-cuda] needs (update it), or this is not Linux x86_64. Details:
  $VENV_PYTHON -c 'import tensorflow as tf; print(tf.config.list_physical_devices())'"
  fi
  log "TensorFlow sees $tf_gpus GPU(s)"
fi

# 3. Train (exec: a SIGTERM for this script, e.g. from gce_shutdown.sh, reaches the trainer).
if [[ $CHECK == 1 ]]; then
  log "running the GPU acceptance check"
  run_exec "$VENV_PYTHON" -m benchmarks.gpu_check "${TRAINER_ARGS[@]}"
  exit 0  # a dry run
fi
strategy=one_device
if ((num_gpus > 1)); then strategy=mirrored; fi
flags=("--strategy=$strategy" "--precision=$PRECISION")
# Never train on the CPU by accident; gce_vm.sh may have asked for it already.
if [[ " ${TRAINER_ARGS[*]} " != *" --require_gpu "* ]]; then flags+=(--require_gpu); fi
if [[ $PROFILE == 1 ]]; then flags+=("--profile_steps=$PROFILE_STEPS"); fi
log "training on $num_gpus GPU(s) with --strategy=$strategy"
run_exec "$VENV_PYTHON" -m trainer.main "${flags[@]}" "${TRAINER_ARGS[@]}"
