#!/usr/bin/env bash
# Multi-worker training without a cluster: N trainer processes on this machine.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: launch/multiworker.sh N [--dry-run] [-- TRAINER_FLAGS...]

Starts N worker processes of
  \$PYTHON -m trainer.main --strategy=multi_worker --model_dir=DIR TRAINER_FLAGS...
on free loopback ports, each with its own TF_CONFIG
  {\"cluster\":{\"worker\":[\"localhost:P0\",...]},\"task\":{\"type\":\"worker\",\"index\":i}}
Worker 0 is the chief and writes the outputs to DIR (your --model_dir, else
runs/multiworker-TIMESTAMP). Each worker logs to \$LOG_DIR/worker-i.log. The script waits
for all of them; if one fails it stops the others and exits non-zero, naming the worker.
Ctrl-C stops them all.

Examples:
  launch/multiworker.sh 2 -- --smoke_test --data_path=../shared/data/aclImdb_v1_labeled.tar.gz
  DRY_RUN=1 launch/multiworker.sh 3 -- --epochs=1"

default_python=python3
if [[ -x $REPO_ROOT/.venv/bin/python ]]; then default_python=$REPO_ROOT/.venv/bin/python; fi
setting PYTHON "$default_python" "Python with the trainer installed (launch/local.sh makes .venv)"
setting LOG_DIR "" "folder for worker-i.log [default: the --model_dir when local, else runs/multiworker-TIMESTAMP]"
parse_args "$@"
((${#ARGS[@]} == 1)) && [[ ${ARGS[0]} =~ ^[1-9][0-9]*$ ]] ||
  { log "give the number of workers, e.g. launch/multiworker.sh 2 (see --help)"; exit 2; }
num_workers=${ARGS[0]}

# One --model_dir shared by all workers (the trainer requires it under TF_CONFIG).
model_dir=''
for ((i = 0; i < ${#TRAINER_ARGS[@]}; i++)); do
  case ${TRAINER_ARGS[i]} in
    --model_dir=*) model_dir=${TRAINER_ARGS[i]#*=} ;;
    --model_dir) model_dir=${TRAINER_ARGS[i + 1]:-} ;;
  esac
done
run_dir=runs/multiworker-$(date +%Y%m%d-%H%M%S)
flags=(--strategy=multi_worker)
if [[ -z $model_dir ]]; then model_dir=$run_dir; flags+=("--model_dir=$model_dir"); fi
if [[ -z $LOG_DIR ]]; then
  if [[ $model_dir == *://* ]]; then LOG_DIR=$run_dir; else LOG_DIR=$model_dir; fi
fi
print_settings

# Free ports: bind N sockets to port 0 at once, so the OS hands out N distinct ports.
if [[ $DRY_RUN == 1 ]]; then
  mapfile -t ports < <(seq 20000 $((20000 + num_workers - 1)))
  log "ports are picked when the script really runs; this dry run shows ${ports[*]}"
else
  mapfile -t ports < <("$PYTHON" -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("localhost", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))' "$num_workers")
  ((${#ports[@]} == num_workers)) || die "could not pick $num_workers free ports with $PYTHON"
fi
workers=$(printf '"localhost:%s",' "${ports[@]}")
workers=${workers%,}

pids=()
stop_workers() {  # TERM (the trainer checkpoints and exits), then KILL after 10 s
  local pid alive
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in {1..20}; do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'log "interrupted: stopping the workers"; stop_workers; exit 130' INT TERM
trap 'stop_workers' EXIT

if [[ $DRY_RUN != 1 ]]; then mkdir -p "$LOG_DIR"; fi
for ((i = 0; i < num_workers; i++)); do
  tf_config="{\"cluster\":{\"worker\":[$workers]},\"task\":{\"type\":\"worker\",\"index\":$i}}"
  cmd=(env "TF_CONFIG=$tf_config" "$PYTHON" -m trainer.main "${flags[@]}" "${TRAINER_ARGS[@]}")
  printf '+ %s > %s 2>&1 &\n' "$(quote_cmd "${cmd[@]}")" "$(shquote "$LOG_DIR/worker-$i.log")" >&2
  if [[ $DRY_RUN != 1 ]]; then
    "${cmd[@]}" >"$LOG_DIR/worker-$i.log" 2>&1 &
    pids+=($!)
  fi
done
[[ $DRY_RUN != 1 ]] || exit 0
log "started $num_workers workers (pids ${pids[*]}); follow them with: tail -f $LOG_DIR/worker-*.log"

# Wait for all; the first failure stops the rest.
running=$num_workers
declare -A done_workers=()
while ((running > 0)); do
  for ((i = 0; i < num_workers; i++)); do
    [[ -z ${done_workers[$i]:-} ]] || continue
    kill -0 "${pids[i]}" 2>/dev/null && continue
    rc=0
    wait "${pids[i]}" || rc=$?
    done_workers[$i]=1
    running=$((running - 1))
    if ((rc != 0)); then
      log "worker $i failed (exit code $rc); its log, $LOG_DIR/worker-$i.log, ends with:"
      tail -n 20 "$LOG_DIR/worker-$i.log" | sed 's/^/    /' >&2
      log "stopping the other workers"
      stop_workers
      exit "$rc"
    fi
    log "worker $i finished"
  done
  ((running == 0)) || sleep 1
done
pids=()
log "all $num_workers workers finished; outputs in $model_dir, logs in $LOG_DIR"
