#!/usr/bin/env bash
# Shutdown script of the VM that launch/gce_vm.sh creates (metadata shutdown-script).
# Compute Engine runs it as root when the VM stops: a spot preemption, `gcloud compute
# instances stop`, or a shutdown from inside. The trainer never hears the VM stopping by
# itself (the startup script's service is stopped with KillMode=process), so this script
# sends SIGTERM to the trainer named in $WORK_DIR/trainer.pid, which checkpoints and exits
# 75, and waits for it and for the startup script's bookkeeping for at most GRACE_SECS
# (default 25: a spot VM gets about 30 s in all). It marks $WORK_DIR/stopping so the
# startup script counts whatever exit follows as a preemption, never as FAILED or DONE.
set -uo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,9s/^# \{0,1\}//p' "$0"; exit 0; fi

WORK_DIR=${WORK_DIR:-/opt/tf-imdb}
GRACE_SECS=${GRACE_SECS:-25}
say() { printf '[gce_shutdown] %s\n' "$*"; }
alive() { [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; }

# wait_for PID: until PID exits or the grace period (counted from the start) is over.
wait_for() {
  local left=$((GRACE_SECS - SECONDS))
  ((left > 0)) && timeout "$left" tail --pid="$1" -f /dev/null
}

[[ -d $WORK_DIR ]] || { say "no $WORK_DIR: nothing to stop"; exit 0; }
touch "$WORK_DIR/stopping"
trainer=$(cat "$WORK_DIR/trainer.pid" 2>/dev/null)
startup=$(cat "$WORK_DIR/startup.pid" 2>/dev/null)
if ! alive "$trainer"; then
  say "no trainer is running"
  exit 0
fi
say "the VM is stopping: SIGTERM to the trainer (pid $trainer), waiting up to ${GRACE_SECS}s"
kill -TERM "$trainer"
if wait_for "$trainer"; then
  say "the trainer has exited after ${SECONDS}s"
else
  say "the trainer is still running after ${GRACE_SECS}s: its last periodic checkpoint stands"
  exit 0
fi
# The startup script now records the outcome and uploads its log.
if alive "$startup" && ! wait_for "$startup"; then
  say "the startup script had not finished within ${GRACE_SECS}s"
fi
exit 0
