#!/usr/bin/env bash
# Train as a Vertex AI custom job: build and push the trainer's image, submit the job.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: launch/vertex_submit.sh [submit|build|setup|logs JOB_ID|cancel JOB_ID|results] [--dry-run] [-- TRAINER_FLAGS...]

  submit   (default) build launch/Dockerfile (TensorFlow 2.21 with CUDA 12 and cuDNN 9 from
           pip), push it to \$IMAGE_URI, tagged with the git commit (SKIP_BUILD=1: use the
           pushed one), then create a custom job whose container runs trainer.doctor, then
           python -m trainer.main TRAINER_FLAGS... (--require_gpu first when
           ACCELERATOR_COUNT>0). Without a local docker engine, Cloud Build builds it.
           The job's baseOutputDirectory is \$BUCKET/\$JOB_NAME, so Vertex AI sets
           AIP_MODEL_DIR (.../model), AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR, which the
           trainer uses as its default output folders (metrics.json is in .../model).
           REPLICAS>1: a chief pool of 1 and a worker pool of REPLICAS-1 machines, trained
           with --strategy=multi_worker from the TF_CONFIG that Vertex AI sets.
           (restartJobOnWorkerRestart: a restarted worker restarts them all, which resume).
           SPOT=1: spot VMs; a preempted worker is restarted and resumes from its checkpoint.
           TIMEOUT ends the job; TENSORBOARD streams its logs to a Vertex AI TensorBoard.
  build    only build and push the image
  setup    once per project and region: create the Artifact Registry repository of IMAGE_URI
  logs     follow a job's logs          cancel   cancel a job
  results  copy \$BUCKET/\$JOB_NAME to runs/vertex-\$JOB_NAME and print metrics.json
Needs: gcloud (logged in), docker or the Cloud Build API, the Vertex AI API enabled, quota
for the accelerator.

Examples:
  PROJECT=my-proj BUCKET=gs://my-bucket/tf-imdb launch/vertex_submit.sh -- --epochs=10
  PROJECT=my-proj BUCKET=gs://my-bucket/tf-imdb REPLICAS=2 SPOT=1 launch/vertex_submit.sh
  DRY_RUN=1 launch/vertex_submit.sh -- --smoke_test"

setting PROJECT "" "Google Cloud project (required to name the default IMAGE_URI)"
setting REGION us-central1 "Vertex AI region"
setting BUCKET "" "gs:// folder for outputs (required), e.g. gs://my-bucket/tf-imdb"
setting MACHINE_TYPE n1-standard-8 "machine type of every replica"
setting ACCELERATOR_TYPE NVIDIA_TESLA_T4 "GPU type per replica (NVIDIA_L4, NVIDIA_TESLA_A100, ...)"
setting ACCELERATOR_COUNT 1 "GPUs per replica (0: CPU only)"
setting REPLICAS 1 "machines; more than 1 trains with --strategy=multi_worker"
setting SPOT 0 "1 (or --spot): spot VMs"
setting IMAGE_URI "" "trainer image [default: \$REGION-docker.pkg.dev/\$PROJECT/tf-imdb/trainer:GIT_SHORT_SHA, -dirty if uncommitted]"
setting JOB_NAME "" "job display name and output subfolder [default: tf-imdb-YYYYmmdd-HHMMSS]"
setting SKIP_BUILD 0 "1 (or --skip-build): submit without building and pushing the image"
setting TIMEOUT 24h "longest the job may run (Ns, Nm, Nh or Nd); Vertex AI stops it then"
setting TENSORBOARD "" "Vertex AI TensorBoard for the job's logs: projects/P/locations/R/tensorboards/ID"
setting SERVICE_ACCOUNT "" "service account the job runs as (required with TENSORBOARD)"
parse_args "$@"
command=${ARGS[0]:-submit}
job_id=${ARGS[1]:-}
case $command in
  logs | cancel) [[ -n $job_id ]] || die "give the job ID: launch/vertex_submit.sh $command JOB_ID" ;;
  results) [[ -n $JOB_NAME ]] || die "set JOB_NAME to the job's display name" ;;
  submit | build | setup) ;;
  *) die "unknown command $command (see --help)" ;;
esac
JOB_NAME=${JOB_NAME:-tf-imdb-$(date +%Y%m%d-%H%M%S)}

# image_tag: the commit the image is built from (short SHA, -dirty with uncommitted changes),
# so a job names exactly the code it ran; a copy outside git gets a timestamp.
image_tag() {
  local sha
  if ! sha=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null); then
    date +dev-%Y%m%d-%H%M%S
    return 0
  fi
  if [[ -n $(git -C "$REPO_ROOT" status --porcelain 2>/dev/null) ]]; then sha+=-dirty; fi
  printf '%s' "$sha"
}
if [[ -z $IMAGE_URI ]]; then
  require PROJECT YOUR_PROJECT
  IMAGE_URI=$REGION-docker.pkg.dev/$PROJECT/tf-imdb/trainer:$(image_tag)
fi
if [[ $command == submit || $command == results ]]; then require BUCKET gs://YOUR_BUCKET/tf-imdb; fi
[[ -z $BUCKET || $BUCKET == gs://* ]] || die "BUCKET=$BUCKET must be a gs:// folder"
((REPLICAS >= 1)) || die "REPLICAS must be 1 or more"
case $TIMEOUT in
  *[0-9]s) timeout_secs=${TIMEOUT%s} ;;
  *[0-9]m) timeout_secs=$((${TIMEOUT%m} * 60)) ;;
  *[0-9]h) timeout_secs=$((${TIMEOUT%h} * 3600)) ;;
  *[0-9]d) timeout_secs=$((${TIMEOUT%d} * 86400)) ;;
  *) timeout_secs='' ;;
esac
[[ $timeout_secs =~ ^[1-9][0-9]*$ ]] || die "TIMEOUT=$TIMEOUT: give a duration like 90m, 24h or 86400s"
if [[ -n $TENSORBOARD ]]; then
  [[ $TENSORBOARD =~ ^projects/[^/]+/locations/[^/]+/tensorboards/[^/]+$ ]] ||
    die "TENSORBOARD=$TENSORBOARD: use projects/PROJECT/locations/REGION/tensorboards/ID"
  [[ -n $SERVICE_ACCOUNT ]] ||
    die "TENSORBOARD needs SERVICE_ACCOUNT (Vertex AI writes to a TensorBoard only as a service account), e.g. SERVICE_ACCOUNT=trainer@$PROJECT.iam.gserviceaccount.com"
fi
ACCELERATOR_TYPE=${ACCELERATOR_TYPE^^}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE//-/_}   # nvidia-tesla-t4 (Compute Engine's name) works too
output_dir=${BUCKET%/}/$JOB_NAME
registry=${IMAGE_URI%%/*}
print_settings

build() {
  if ! docker info >/dev/null 2>&1; then  # read-only, so a dry run looks too
    cloud_build
    return 0
  fi
  log "building and pushing $IMAGE_URI"
  run docker build --platform=linux/amd64 -f "$LAUNCH_DIR/Dockerfile" -t "$IMAGE_URI" "$REPO_ROOT"
  if [[ $registry == *.pkg.dev || $registry == *gcr.io ]]; then
    run gcloud auth configure-docker "$registry" --quiet  # lets docker push there
  fi
  run docker push "$IMAGE_URI"
}

# cloud_build: no docker engine here, so Cloud Build builds and pushes the image. Its --tag
# shortcut only builds ./Dockerfile, so a one-step config names launch/Dockerfile; the
# upload skips what launch/Dockerfile.dockerignore keeps out of a local build.
cloud_build() {
  log "no docker engine here (docker info failed): building $IMAGE_URI with Cloud Build"
  make_tmp_dir
  local config=$TMP_DIR/cloudbuild.json image
  image=$(json_str "$IMAGE_URI")
  printf '{\n  "steps": [{\n    "name": "gcr.io/cloud-builders/docker",\n    "args": [%s]\n  }],\n  "images": [%s],\n  "timeout": "3600s"\n}\n' \
    "\"build\", \"--platform=linux/amd64\", \"-f\", \"launch/Dockerfile\", \"-t\", $image, \".\"" \
    "$image" >"$config"
  show_file "$config"
  gc builds submit "$REPO_ROOT" --config="$config" --ignore-file=launch/Dockerfile.dockerignore
}

# json_list ITEM...: the ITEMs (JSON values) as a JSON list, one per line.
json_list() {
  (($#)) || { printf '[]'; return 0; }
  local out=$1 item
  shift
  for item in "$@"; do out+=$',\n          '$item; done
  printf '[\n          %s\n        ]' "$out"
}

# worker_pool REPLICA_COUNT: one entry of workerPoolSpecs, as JSON.
worker_pool() {
  local accel='' args=() arg
  if ((ACCELERATOR_COUNT > 0)); then
    accel=$(printf ',\n        "acceleratorType": %s,\n        "acceleratorCount": %d' \
      "$(json_str "$ACCELERATOR_TYPE")" "$ACCELERATOR_COUNT")
  fi
  for arg in "${job_args[@]}"; do args+=("$(json_str "$arg")"); done
  printf '    {\n      "replicaCount": %d,\n' "$1"
  printf '      "machineSpec": {\n        "machineType": %s%s\n      },\n' \
    "$(json_str "$MACHINE_TYPE")" "$accel"
  printf '      "containerSpec": {\n        "imageUri": %s,\n' "$(json_str "$IMAGE_URI")"
  printf '        "args": %s\n      }\n    }' "$(json_list "${args[@]}")"
}

# scheduling: the job's "scheduling" object (a CustomJobSpec's Scheduling), as JSON.
scheduling() {
  local fields=("\"timeout\": \"${timeout_secs}s\"")
  if [[ $SPOT == 1 ]]; then fields+=('"strategy": "SPOT"'); fi
  # MultiWorkerMirroredStrategy cannot take a worker back mid-run: restart them all.
  if ((REPLICAS > 1)); then fields+=('"restartJobOnWorkerRestart": true'); fi
  local IFS=,
  printf '{%s}' "${fields[*]}" | sed 's/,"/, "/g'
}

submit() {
  job_args=("${TRAINER_ARGS[@]}")
  # A job that pays for GPUs must not quietly train on the CPU.
  if ((ACCELERATOR_COUNT > 0)); then job_args=(--require_gpu "${job_args[@]}"); fi
  if ((REPLICAS > 1)); then job_args=(--strategy=multi_worker "${job_args[@]}"); fi
  make_tmp_dir
  local config=$TMP_DIR/custom_job.json pools
  pools=$(worker_pool 1)   # pool 0 has exactly one replica: the chief
  if ((REPLICAS > 1)); then pools+=$(printf ',\n%s' "$(worker_pool $((REPLICAS - 1)))"); fi
  {
    printf '{\n  "baseOutputDirectory": {"outputUriPrefix": %s},\n' "$(json_str "$output_dir")"
    printf '  "scheduling": %s,\n' "$(scheduling)"
    if [[ -n $TENSORBOARD ]]; then
      printf '  "tensorboard": %s,\n  "serviceAccount": %s,\n' "$(json_str "$TENSORBOARD")" \
        "$(json_str "$SERVICE_ACCOUNT")"
    elif [[ -n $SERVICE_ACCOUNT ]]; then
      printf '  "serviceAccount": %s,\n' "$(json_str "$SERVICE_ACCOUNT")"
    fi
    printf '  "workerPoolSpecs": [\n%s\n  ]\n}\n' "$pools"
  } >"$config"
  log "job spec (a CustomJobSpec; JSON is YAML, which --config reads):"
  show_file "$config"
  gc ai custom-jobs create --region="$REGION" --display-name="$JOB_NAME" --config="$config"
  log "outputs: $output_dir/model (metrics.json), .../checkpoints, .../logs (TensorBoard)"
  log "next: launch/vertex_submit.sh logs JOB_ID (the number ending the job name above);"
  log "      JOB_NAME=$JOB_NAME launch/vertex_submit.sh results"
}

case $command in
  submit)
    if [[ $SKIP_BUILD != 1 ]]; then build; fi
    submit
    ;;
  build) build ;;
  setup)
    repo=${IMAGE_URI#*/*/}; repo=${repo%%/*}
    [[ $registry == *-docker.pkg.dev ]] || die "setup creates Artifact Registry repositories only"
    gc artifacts repositories create "$repo" --repository-format=docker \
      --location="${registry%-docker.pkg.dev}"
    ;;
  logs) gc ai custom-jobs stream-logs "$job_id" --region="$REGION" ;;
  cancel) gc ai custom-jobs cancel "$job_id" --region="$REGION" ;;
  results) fetch_results "$output_dir" "vertex-$JOB_NAME" model/metrics.json ;;
esac
