#!/usr/bin/env bash
# Train as a Vertex AI custom job: build and push the trainer's image, submit the job.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: launch/vertex_submit.sh [submit|build|setup|logs JOB_ID|cancel JOB_ID|results] [--dry-run] [-- TRAINER_FLAGS...]

  submit   (default) build launch/Dockerfile (TensorFlow 2.21 GPU), push it to \$IMAGE_URI
           (SKIP_BUILD=1: use the pushed one), then create a custom job whose container runs
           python -m trainer.main TRAINER_FLAGS...
           The job's baseOutputDirectory is \$BUCKET/\$JOB_NAME, so Vertex AI sets
           AIP_MODEL_DIR (.../model), AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR, which the
           trainer uses as its default output folders (metrics.json is in .../model).
           REPLICAS>1: a chief pool of 1 and a worker pool of REPLICAS-1 machines, trained
           with --strategy=multi_worker from the TF_CONFIG that Vertex AI sets.
           SPOT=1: spot VMs; a preempted worker is restarted and resumes from its checkpoint.
  build    only build and push the image
  setup    once per project and region: create the Artifact Registry repository of IMAGE_URI
  logs     follow a job's logs          cancel   cancel a job
  results  copy \$BUCKET/\$JOB_NAME to runs/vertex-\$JOB_NAME and print metrics.json
Needs: gcloud (logged in), docker, the Vertex AI API enabled, quota for the accelerator.

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
setting IMAGE_URI "" "trainer image [default: \$REGION-docker.pkg.dev/\$PROJECT/tf-imdb/trainer:latest]"
setting JOB_NAME "" "job display name and output subfolder [default: tf-imdb-YYYYmmdd-HHMMSS]"
setting SKIP_BUILD 0 "1 (or --skip-build): submit without building and pushing the image"
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
if [[ -z $IMAGE_URI ]]; then
  require PROJECT YOUR_PROJECT
  IMAGE_URI=$REGION-docker.pkg.dev/$PROJECT/tf-imdb/trainer:latest
fi
if [[ $command == submit || $command == results ]]; then require BUCKET gs://YOUR_BUCKET/tf-imdb; fi
[[ -z $BUCKET || $BUCKET == gs://* ]] || die "BUCKET=$BUCKET must be a gs:// folder"
((REPLICAS >= 1)) || die "REPLICAS must be 1 or more"
ACCELERATOR_TYPE=${ACCELERATOR_TYPE^^}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE//-/_}   # nvidia-tesla-t4 (Compute Engine's name) works too
output_dir=${BUCKET%/}/$JOB_NAME
registry=${IMAGE_URI%%/*}
gc() { run gcloud "$@" ${PROJECT:+"--project=$PROJECT"}; }
print_settings

build() {
  log "building and pushing $IMAGE_URI"
  run docker build --platform=linux/amd64 -f "$LAUNCH_DIR/Dockerfile" -t "$IMAGE_URI" "$REPO_ROOT"
  if [[ $registry == *.pkg.dev || $registry == *gcr.io ]]; then
    run gcloud auth configure-docker "$registry" --quiet  # lets docker push there
  fi
  run docker push "$IMAGE_URI"
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

submit() {
  job_args=("${TRAINER_ARGS[@]}")
  if ((REPLICAS > 1)); then job_args=(--strategy=multi_worker "${job_args[@]}"); fi
  make_tmp_dir
  local config=$TMP_DIR/custom_job.json pools
  pools=$(worker_pool 1)   # pool 0 has exactly one replica: the chief
  if ((REPLICAS > 1)); then pools+=$(printf ',\n%s' "$(worker_pool $((REPLICAS - 1)))"); fi
  {
    printf '{\n  "baseOutputDirectory": {"outputUriPrefix": %s},\n' "$(json_str "$output_dir")"
    if [[ $SPOT == 1 ]]; then printf '  "scheduling": {"strategy": "SPOT"},\n'; fi
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
  results)
    local_dir=$REPO_ROOT/runs/vertex-$JOB_NAME
    run mkdir -p "$local_dir"
    run gcloud storage rsync --recursive "$output_dir" "$local_dir"
    if [[ -f $local_dir/model/metrics.json ]]; then cat "$local_dir/model/metrics.json"; fi
    ;;
esac
