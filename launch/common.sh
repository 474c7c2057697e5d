# shellcheck shell=bash
# Shared by every launch/*.sh script (sourced, never run on its own):
#   setting NAME DEFAULT HELP   declare a setting read from the environment
#   parse_args "$@"             --help, --dry-run, --name=value for settings, `--` passthrough
#   run CMD...                  print CMD shell-quoted, then run it (unless DRY_RUN=1)
#   run_exec CMD...             the same, but CMD replaces this shell (the script's last step)
#   gc ARGS...                  run gcloud ARGS (with --project=$PROJECT when PROJECT is set)
#   fetch_results URI NAME FILE copy URI to runs/NAME, then print FILE from it (a results command)
# After parse_args: ARGS holds the script's own words (subcommand, N), TRAINER_ARGS
# everything after `--`, passed to `python -m trainer.main` untouched.

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(dirname "$LAUNCH_DIR")
SCRIPT_NAME=$(basename "$0")
ARGS=()
TRAINER_ARGS=()
SETTINGS=()
declare -A SETTING_DEFAULT=() SETTING_HELP=()

log() { printf '[%s] %s\n' "$SCRIPT_NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# setting NAME DEFAULT HELP: keep $NAME from the environment, else DEFAULT.
setting() {
  SETTINGS+=("$1")
  SETTING_DEFAULT[$1]=$2
  SETTING_HELP[$1]=$3
  if [[ -z ${!1:-} ]]; then printf -v "$1" '%s' "$2"; fi
}
setting DRY_RUN 0 "1 (or --dry-run): print every command, run none"

usage() {
  printf '%s\n\nSettings (environment variables; --lower-case-name=VALUE on the command line does the same):\n' "$USAGE"
  local name default
  for name in "${SETTINGS[@]}"; do
    default=${SETTING_DEFAULT[$name]}
    printf '  %-18s %s%s\n' "$name" "${SETTING_HELP[$name]}" "${default:+ [default: $default]}"
  done
}

parse_args() {
  local name
  while (($#)); do
    case $1 in
      -h | --help) usage; exit 0 ;;
      --) shift; TRAINER_ARGS=("$@"); return 0 ;;
      --*)
        name=${1#--}; name=${name%%=*}; name=${name//-/_}; name=${name^^}
        [[ $name =~ ^[A-Z][A-Z0-9_]*$ && -v SETTING_HELP[$name] ]] ||
          { log "unknown option $1 (trainer flags go after --; see --help)"; exit 2; }
        if [[ $1 == *=* ]]; then
          printf -v "$name" '%s' "${1#*=}"
        elif [[ ${SETTING_DEFAULT[$name]} == 0 ]]; then
          printf -v "$name" 1   # a switch: --spot is SPOT=1
        else
          log "option $1 needs a value: $1=VALUE"; exit 2
        fi ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}

print_settings() {
  local name
  log "settings:"
  for name in "${SETTINGS[@]}"; do printf '    %s=%s\n' "$name" "$(shquote "${!name}")" >&2; done
  if ((${#TRAINER_ARGS[@]})); then
    printf '    trainer flags: %s\n' "$(quote_words "${TRAINER_ARGS[@]}")" >&2
  fi
  if [[ $DRY_RUN == 1 ]]; then log "DRY RUN: printing the commands, running none"; fi
}

# shquote WORD: WORD as one shell word (like Python's shlex.quote).
shquote() {
  if [[ -n $1 && $1 != *[!A-Za-z0-9_./:=,@%+-]* ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# quote_words WORD...: the words as one line of shell, each quoted as needed.
quote_words() {
  local word quoted=()
  for word in "$@"; do quoted+=("$(shquote "$word")"); done
  printf '%s' "${quoted[*]}"
}

# quote_cmd WORD...: a copy-pasteable command line; long ones get one --option per line.
quote_cmd() {
  local word out='' sep=' ' all="$*"
  if (($# > 4 && ${#all} > 100)); then sep=$' \\\n    '; fi
  for word in "$@"; do
    if [[ -z $out ]]; then out=$(shquote "$word")
    elif [[ $word == --?* ]]; then out+="$sep$(shquote "$word")"
    else out+=" $(shquote "$word")"
    fi
  done
  printf '%s' "$out"
}

run() {
  printf '+ %s\n' "$(quote_cmd "$@")" >&2
  if [[ $DRY_RUN != 1 ]]; then "$@"; fi
}

# run_exec CMD...: like run, but CMD takes over this process (and its PID), so a signal sent
# to the script (a VM's shutdown script, a container's init) reaches CMD itself.
run_exec() {
  printf '+ %s\n' "$(quote_cmd "$@")" >&2
  if [[ $DRY_RUN != 1 ]]; then exec "$@"; fi
}

# gc ARGS...: `gcloud ARGS`, printed and run like `run`, in $PROJECT if set (else gcloud's own).
gc() { run gcloud "$@" ${PROJECT:+"--project=$PROJECT"}; }

# fetch_results FOLDER NAME METRICS: copy the gs:// FOLDER to runs/NAME in the repo, then
# print METRICS (a path inside it) if the run wrote one.
fetch_results() {
  local local_dir=$REPO_ROOT/runs/$2
  run mkdir -p "$local_dir"
  run gcloud storage rsync --recursive "$1" "$local_dir"
  if [[ -f $local_dir/$3 ]]; then cat "$local_dir/$3"; fi
}

# require NAME EXAMPLE: stop unless $NAME is set; a dry run uses a placeholder instead.
require() {
  [[ -n ${!1} ]] && return 0
  if [[ $DRY_RUN == 1 ]]; then
    printf -v "$1" '%s' "$2"
    log "warning: $1 is not set; this dry run uses $1=$2"
  else
    die "set $1, e.g. $1=$2 $SCRIPT_NAME ... (see --help)"
  fi
}

# json_str STRING: STRING as a JSON (and YAML) double-quoted string.
json_str() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/\\r}
  printf '"%s"' "$s"
}

show_file() {
  printf '    --- %s ---\n' "$1" >&2
  printf '%s\n' "$(sed 's/^/    /' "$1")" >&2
  printf '    ---\n' >&2
}

# make_tmp_dir: a scratch folder in $TMP_DIR (made once), removed when the script exits.
make_tmp_dir() {
  [[ -z ${TMP_DIR:-} ]] || return 0
  TMP_DIR=$(mktemp -d "${TMPDIR:-/tmp}/${SCRIPT_NAME%.sh}.XXXXXX")
  trap 'rm -rf "$TMP_DIR"' EXIT
}

# ensure_venv EXTRA: create $VENV with $PYTHON if needed, then `pip install -e REPO[EXTRA]`
# unless the package already imports there (REINSTALL=1 forces it). Sets VENV_PYTHON.
ensure_venv() {
  [[ $VENV == /* ]] || VENV=$REPO_ROOT/$VENV
  VENV_PYTHON=$VENV/bin/python
  if [[ ! -x $VENV_PYTHON ]]; then
    command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3.10+ or set PYTHON"
    run "$PYTHON" -m venv "$VENV"
  elif [[ $REINSTALL != 1 ]] && "$VENV_PYTHON" -I -c \
      'import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, ("trainer", "tensorflow", "absl"))))' \
      2>/dev/null; then
    log "the trainer is already installed in $VENV (REINSTALL=1 installs again)"
    return 0
  fi
  run "$VENV_PYTHON" -m pip install --upgrade pip
  run "$VENV_PYTHON" -m pip install -e "${REPO_ROOT}[$1]"
}
