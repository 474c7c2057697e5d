#!/bin/sh
# The trainer image's command (launch/Dockerfile): `python -m trainer.doctor FLAGS` prints a
# one-screen report of the machine (GPUs, CUDA, cuDNN, TF_CONFIG, output folders) and fails
# where the run would (--require_gpu without a GPU, say); then the trainer runs with the
# same FLAGS as this process (exec: tini's signals reach it directly).
set -e
python -m trainer.doctor "$@"
exec python -m trainer.main "$@"
