#!/usr/bin/env bash
# Run one lkd_jax job on every worker of a Cloud TPU VM (a single host or a pod slice).
#
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh setup
#   TPU=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh run gs://bucket/runs/slakt_r50_kd \
#       'configs/slak_kd.py:teacher=slak_t,student=resnet50,method=kd,epochs=120,teacher_ckpt=/home/me/ckpt/slak_t,data_dir=gs://bucket/tensorflow_datasets'
#
# `setup` copies this checkout to every worker and installs it with the TPU build of JAX; `run`
# starts the same command on all workers with --multihost (jax.distributed.initialize(): each host
# feeds its own share of the data, the mesh spans every chip). The workdir must be shared by the
# hosts: use a gs:// path (checkpoints, TensorBoard events, config.json and reports go there). The
# teacher checkpoint is read by every host: copy it to each worker (or the same NFS path).
#
# DRY_RUN=1 prints the gcloud command and what each of WORKERS (default 1) hosts runs, runs nothing.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE to its zone}"
REMOTE_DIR=${REMOTE_DIR:-lkd_jax}
ssh_all() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    printf 'gcloud compute tpus tpu-vm ssh %q --zone %q --worker=all --command %q\n' "$TPU" "$ZONE" "$1"
    for ((i = 0; i < ${WORKERS:-1}; i++)); do echo "worker $i: $1"; done
    return
  fi
  gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$1"
}

case "${1:-}" in
  setup)
    cd "$(dirname "$0")/.."
    [ "${DRY_RUN:-0}" = 1 ] || gcloud compute tpus tpu-vm scp --recurse --zone "$ZONE" --worker=all \
      pyproject.toml README.md lkd_jax configs "$TPU:$REMOTE_DIR/"
    ssh_all "cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/pip install -q -U 'jax[tpu]'"
    ;;
  run)
    [ $# -eq 3 ] || { echo "usage: $0 run WORKDIR CONFIG[:k=v,...]" >&2; exit 2; }
    ssh_all "cd $REMOTE_DIR && .venv/bin/python -m lkd_jax.main --multihost --workdir '$2' --config '$3'"
    ;;
  *)
    echo "usage: $0 setup | run WORKDIR CONFIG[:k=v,...]" >&2; exit 2 ;;
esac
