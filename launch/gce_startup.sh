#!/usr/bin/env bash
# Startup script of the VM that launch/gce_vm.sh creates. Compute Engine runs it as root
# at EVERY boot: the first boot trains from scratch; a boot after a spot preemption (or
# `launch/gce_vm.sh start`) resumes from the last checkpoint in the bucket, because the
# trainer resumes any --model_dir that holds one. Settings come from instance metadata:
#   output-dir   gs:// folder passed as --model_dir (checkpoints, TensorBoard, metrics.json)
#   source-uri   this repo as a .tar.gz in gs:// (or a local folder)
#   trainer-args the trainer flags, shell-quoted    data-uri  optional aclImdb .tar.gz
#   keep-vm      1: do not shut down after training
# Exit codes of the trainer: 0 -> write DONE and shut down; 75 (it checkpointed on SIGTERM),
# or any exit while the VM is stopping -> preempted: nothing is marked, the next boot
# resumes; anything else -> write FAILED and shut down. The trainer's PID goes to
# $WORK_DIR/trainer.pid for launch/gce_shutdown.sh, which signals it when the VM stops.
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,15s/^# \{0,1\}//p' "$0"; exit 0; fi

WORK_DIR=${WORK_DIR:-/opt/tf-imdb}
METADATA_URL=${METADATA_URL:-http://metadata.google.internal/computeMetadata/v1/instance/attributes}
DRY_RUN=${DRY_RUN:-0}
export HOME=${HOME:-/root}

say() { printf '[gce_startup] %s\n' "$*"; }
# The VM runs this file alone (no launch/common.sh yet): its own show and run.
show() {  # show CMD...: print CMD shell-quoted
  local word out=()
  for word in "$@"; do out+=("$(printf '%q' "$word")"); done
  printf '+ %s\n' "${out[*]}"
}
run() { show "$@"; if [[ $DRY_RUN != 1 ]]; then "$@"; fi; }
md() { curl -fsS -H 'Metadata-Flavor: Google' "$METADATA_URL/$1"; }

mkdir -p "$WORK_DIR"
# Left by the previous boot's shutdown script; this boot is a fresh start.
rm -f "$WORK_DIR/trainer.pid" "$WORK_DIR/stopping"
printf '%s\n' "$$" >"$WORK_DIR/startup.pid"
log_file=$WORK_DIR/startup-$(date +%Y%m%d-%H%M%S).log
exec > >(tee -a "$log_file") 2>&1   # also on the serial console: launch/gce_vm.sh logs

output_dir=$(md output-dir)
source_uri=$(md source-uri)
trainer_args=$(md trainer-args 2>/dev/null || true)
data_uri=$(md data-uri 2>/dev/null || true)
keep_vm=$(md keep-vm 2>/dev/null || echo 0)
say "boot at $(date -u); outputs go to $output_dir"

power_off() {
  if [[ $keep_vm == 1 ]]; then say "keep-vm=1: leaving the VM running"; exit 0; fi
  say "shutting down (launch/gce_vm.sh start trains again; delete removes the VM)"
  run shutdown -h now
  exit 0
}
finish() {  # finish DONE|FAILED: record the outcome in the bucket, upload this log, power off.
  printf '%s %s\n' "$1" "$(date -u)" | run gcloud storage cp - "$output_dir/$1"
  run gcloud storage cp "$log_file" "$output_dir/vm-logs/"
  power_off
}

if gcloud storage ls "$output_dir/DONE" >/dev/null 2>&1; then
  say "$output_dir/DONE exists: this run already finished (delete DONE to train again)"
  power_off
fi

# The code: the repo as uploaded by gce_vm.sh.
if [[ -d $source_uri ]]; then
  src=$source_uri
else
  src=$WORK_DIR/src
  run gcloud storage cp "$source_uri" "$WORK_DIR/source.tar.gz"
  run rm -rf "$src"
  run mkdir -p "$src"
  run tar -xzf "$WORK_DIR/source.tar.gz" -C "$src"
fi

# The trainer flags, exactly as given to gce_vm.sh after `--`.
eval "set -- $trainer_args"
flags=("--model_dir=$output_dir")
if [[ -n $data_uri ]]; then
  run mkdir -p "$WORK_DIR/data"
  run gcloud storage cp "$data_uri" "$WORK_DIR/data/"
  flags+=("--data_path=$WORK_DIR/data/${data_uri##*/}")
fi

# gpu.sh makes a virtualenv: Ubuntu's python3 needs python3-venv for that.
if ! python3 -c 'import ensurepip' 2>/dev/null; then
  run apt-get update && run apt-get install -y python3-venv
fi
# Deep Learning VM images may still be loading the NVIDIA driver at first boot: wait for it.
for _ in {1..30}; do
  nvidia-smi >/dev/null 2>&1 && break
  [[ $DRY_RUN == 1 ]] && break
  say "waiting for the NVIDIA driver"
  sleep 10
done

# In the background, so its PID can be written down: Compute Engine stops this script's
# service with KillMode=process, so only the script runner would hear the VM stopping.
# gpu.sh ends by exec-ing the trainer, so the PID becomes the trainer's own.
rc=0
cmd=(env "VENV=$WORK_DIR/venv" "$src/launch/gpu.sh" -- "${flags[@]}" "$@")
show "${cmd[@]}"
if [[ $DRY_RUN != 1 ]]; then
  "${cmd[@]}" &
  printf '%s\n' "$!" >"$WORK_DIR/trainer.pid"
  wait "$!" || rc=$?
  rm -f "$WORK_DIR/trainer.pid"
fi
say "the trainer exited with code $rc"
if ((rc != 0)) && [[ -e $WORK_DIR/stopping ]]; then
  say "the VM is stopping (launch/gce_shutdown.sh ran): treating exit $rc as a preemption"
  rc=75
fi
case $rc in
  0) finish DONE ;;
  75)
    say "preempted: the checkpoint is in $output_dir; 'launch/gce_vm.sh start' resumes"
    run gcloud storage cp "$log_file" "$output_dir/vm-logs/" || true
    ;;
  *) finish FAILED ;;
esac
