#!/usr/bin/env bash
# Train on a Google Compute Engine GPU VM that installs, trains and shuts itself down.
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE="Usage: launch/gce_vm.sh [create|start|logs|status|results|delete] [--dry-run] [-- TRAINER_FLAGS...]

  create   (default) upload this repo to \$BUCKET/\$VM_NAME/source/, create the VM from a
           Deep Learning VM image. At every boot launch/gce_startup.sh installs the package
           and runs launch/gpu.sh -- --model_dir=\$BUCKET/\$VM_NAME TRAINER_FLAGS..., so
           checkpoints, TensorBoard logs and metrics.json land in the bucket (with
           ACCELERATOR_COUNT>0 TRAINER_FLAGS start with --require_gpu). When training
           succeeds the VM writes \$BUCKET/\$VM_NAME/DONE and shuts down (KEEP_VM=1: stays up).
  start    start the stopped VM again: after a spot preemption it resumes from the last
           checkpoint in the bucket
  logs     follow the VM's serial console, where the startup script and trainer log
  status   show whether the VM is RUNNING or TERMINATED (stopped)
  results  copy \$BUCKET/\$VM_NAME to runs/gce-\$VM_NAME and print metrics.json
  delete   delete the VM (the bucket keeps the outputs)

SPOT=1 makes a spot VM (much cheaper; can be preempted at any time). Preemption STOPS it:
its shutdown script (launch/gce_shutdown.sh) sends SIGTERM to the trainer, which
checkpoints to the bucket and exits 75 within Compute Engine's ~30 s, and 'start' reruns
the startup script, which resumes. A stopped VM costs only its disk. Needs: gcloud (logged in), a project with GPU quota.

Examples:
  BUCKET=gs://my-bucket/tf-imdb SPOT=1 launch/gce_vm.sh create -- --epochs=10
  DRY_RUN=1 BUCKET=gs://my-bucket/tf-imdb launch/gce_vm.sh
  VM_NAME=tf-imdb-vm launch/gce_vm.sh logs"

setting PROJECT "" "Google Cloud project [default: gcloud config get-value project]"
setting ZONE us-central1-a "zone of the VM"
setting BUCKET "" "gs:// folder for outputs (required), e.g. gs://my-bucket/tf-imdb"
setting VM_NAME tf-imdb-vm "VM name; outputs go to \$BUCKET/\$VM_NAME"
setting MACHINE_TYPE n1-standard-8 "machine type"
setting ACCELERATOR_TYPE nvidia-tesla-t4 "GPU type (gcloud compute accelerator-types list)"
setting ACCELERATOR_COUNT 1 "GPUs per VM; 0 for machine types with built-in GPUs (g2-, a2-, a3-)"
setting SPOT 0 "1 (or --spot): spot VM, stopped on preemption"
setting DISK_SIZE 100GB "boot disk size"
setting IMAGE_FAMILY common-cu129-ubuntu-2204-nvidia-580 "Deep Learning VM image family (project deeplearning-platform-release)"
setting DATA_URI "" "optional gs:// aclImdb .tar.gz; copied to the VM and passed as --data_path"
setting KEEP_VM 0 "1: do not shut the VM down after training (to ssh in and look around)"
parse_args "$@"
command=${ARGS[0]:-create}
((${#ARGS[@]} <= 1)) || die "unexpected argument ${ARGS[1]}"
[[ $VM_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "VM_NAME=$VM_NAME: use lowercase letters, digits and dashes, starting with a letter"
if [[ $command == create || $command == results ]]; then require BUCKET gs://YOUR_BUCKET/tf-imdb; fi
[[ -z $BUCKET || $BUCKET == gs://* ]] || die "BUCKET=$BUCKET must be a gs:// folder"
output_dir=${BUCKET%/}/$VM_NAME
ACCELERATOR_TYPE=${ACCELERATOR_TYPE,,}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE//_/-}   # Vertex's NVIDIA_TESLA_T4 works here too
print_settings

case $command in
  create)
    make_tmp_dir
    log "1/2 uploading the source of $REPO_ROOT"
    run tar -czf "$TMP_DIR/source.tar.gz" -C "$REPO_ROOT" --exclude=.git --exclude='.venv*' \
      --exclude=runs --exclude=__pycache__ --exclude='*.egg-info' --exclude=.pytest_cache .
    run gcloud storage cp "$TMP_DIR/source.tar.gz" "$output_dir/source/source.tar.gz"

    log "2/2 creating the VM; it trains at boot and writes to $output_dir"
    # Trainer flags travel as one shell-quoted string that the VM reads back with eval.
    metadata_files=("startup-script=$LAUNCH_DIR/gce_startup.sh"
      "shutdown-script=$LAUNCH_DIR/gce_shutdown.sh")
    # A VM asked for GPUs must not quietly train on its CPU (a driver or CUDA problem).
    if ((ACCELERATOR_COUNT > 0)); then TRAINER_ARGS=(--require_gpu "${TRAINER_ARGS[@]}"); fi
    if ((${#TRAINER_ARGS[@]})); then
      quote_words "${TRAINER_ARGS[@]}" >"$TMP_DIR/trainer-args"
      show_file "$TMP_DIR/trainer-args"
      metadata_files+=("trainer-args=$TMP_DIR/trainer-args")
    fi
    metadata=("output-dir=$output_dir" "source-uri=$output_dir/source/source.tar.gz"
      "keep-vm=$KEEP_VM" "install-nvidia-driver=True")
    if [[ -n $DATA_URI ]]; then metadata+=("data-uri=$DATA_URI"); fi
    [[ "${metadata[*]}${metadata_files[*]}" != *,* ]] ||
      die "BUCKET, DATA_URI and the repo's path cannot contain commas"
    flags=(--zone="$ZONE" --machine-type="$MACHINE_TYPE")
    if ((ACCELERATOR_COUNT > 0)); then
      flags+=(--accelerator="type=$ACCELERATOR_TYPE,count=$ACCELERATOR_COUNT")
    fi
    flags+=(--maintenance-policy=TERMINATE)  # GPU VMs cannot live-migrate
    if [[ $SPOT == 1 ]]; then
      flags+=(--provisioning-model=SPOT --instance-termination-action=STOP)
    else
      flags+=(--provisioning-model=STANDARD)
    fi
    flags+=(--image-family="$IMAGE_FAMILY" --image-project=deeplearning-platform-release
      --boot-disk-size="$DISK_SIZE" --scopes=cloud-platform
      --metadata-from-file="$(IFS=,; echo "${metadata_files[*]}")"
      --metadata="$(IFS=,; echo "${metadata[*]}")")
    gc compute instances create "$VM_NAME" "${flags[@]}"
    log "next: launch/gce_vm.sh logs | status | results | delete  (with the same VM_NAME and BUCKET)"
    ;;
  start) gc compute instances start "$VM_NAME" --zone="$ZONE" ;;
  logs) gc compute instances tail-serial-port-output "$VM_NAME" --zone="$ZONE" ;;
  status) gc compute instances describe "$VM_NAME" --zone="$ZONE" --format='value(status)' ;;
  results) fetch_results "$output_dir" "gce-$VM_NAME" metrics.json ;;
  delete) gc compute instances delete "$VM_NAME" --zone="$ZONE" ;;
  *) die "unknown command $command (see --help)" ;;
esac
