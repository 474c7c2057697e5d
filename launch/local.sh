#!/usr/bin/env bash
# Train on this machine's CPU: make (or reuse) a virtualenv, install the trainer, run it.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: launch/local.sh [--smoke] [--dry-run] [-- TRAINER_FLAGS...]

Creates the virtualenv \$VENV if missing, installs this package for CPU into it
(pip install -e '.[cpu]', skipped when already installed), then runs
  \$VENV/bin/python -m trainer.main TRAINER_FLAGS...
--smoke adds --smoke_test (a tiny model in under 2 minutes) and --data_path=\$IMDB_ARCHIVE
(or ../shared/data/aclImdb_v1_labeled.tar.gz when it exists). Your flags come last and win.

Examples:
  launch/local.sh --smoke
  launch/local.sh -- --data_path=aclImdb_v1.tar.gz --epochs=3 --model_dir=runs/cpu
  DRY_RUN=1 launch/local.sh --smoke"

setting VENV .venv "virtualenv folder (relative paths are inside the repo)"
setting PYTHON python3 "Python that creates the virtualenv"
setting REINSTALL 0 "1: pip install even when the package already imports"
setting SMOKE 0 "1 (or --smoke): run the smoke test"
setting IMDB_ARCHIVE "" "aclImdb .tar.gz for --smoke [default: ../shared/data/aclImdb_v1_labeled.tar.gz if present]"
parse_args "$@"
((${#ARGS[@]} == 0)) || die "unexpected argument ${ARGS[0]} (trainer flags go after --)"

flags=()
if [[ $SMOKE == 1 ]]; then
  flags+=(--smoke_test)
  shared_archive=$REPO_ROOT/../shared/data/aclImdb_v1_labeled.tar.gz
  if [[ -z $IMDB_ARCHIVE && -f $shared_archive ]]; then
    IMDB_ARCHIVE=$(cd "$(dirname "$shared_archive")" && pwd)/$(basename "$shared_archive")
  fi
  if [[ -n $IMDB_ARCHIVE ]]; then flags+=("--data_path=$IMDB_ARCHIVE"); fi
fi

print_settings
ensure_venv cpu
log "training on CPU"
run "$VENV_PYTHON" -m trainer.main "${flags[@]}" "${TRAINER_ARGS[@]}"
