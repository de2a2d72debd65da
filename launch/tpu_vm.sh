#!/usr/bin/env bash
# Run a jax_distill command on every worker of a Cloud TPU VM slice, restarting after preemption.
#
#   launch/tpu_vm.sh create NAME ZONE TYPE [--spot]      # e.g. v5litepod-64, v4-32
#   launch/tpu_vm.sh run    NAME ZONE -- python -m jax_distill.train --config configs/train/... \
#                                         --config.checkpoint.dir=gs://bucket/runs/x
#   launch/tpu_vm.sh until-done NAME ZONE TYPE -- <same command>   # spot: recreate + rerun until it exits 0
#   launch/tpu_vm.sh delete NAME ZONE
#
# `run` copies this checkout to every worker, installs it with `./setup.sh tpu`, and starts the command on
# all workers at once (JAX discovers its peers through the TPU metadata server, so
# jax.distributed.initialize() needs no arguments there). Each worker feeds its own data shard; output
# goes to logs/NAME/worker-N.log here. Checkpoints on gs:// make a rerun resume where it stopped.
set -euo pipefail
verb=${1:?usage: tpu_vm.sh create|run|until-done|delete NAME ZONE ...}
name=${2:?NAME}
zone=${3:?ZONE}
shift 3
version=${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}
repo=$(cd "$(dirname "$0")/.." && pwd)

create() {
  local type=${1:?TYPE}; shift
  gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$type" --version "$version" "$@"
}

exists() { gcloud compute tpus tpu-vm describe "$name" --zone "$zone" --format='value(state)' 2>/dev/null; }

run() {
  [ "${1:-}" = "--" ] && shift
  local cmd; printf -v cmd '%q ' "$@"
  tar -C "$repo" --exclude=.venv --exclude=.git --exclude=runs -czf /tmp/jax_distill_src.tgz .
  gcloud compute tpus tpu-vm scp /tmp/jax_distill_src.tgz "$name":/tmp/ --zone "$zone" --worker=all
  mkdir -p "logs/$name"
  gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "
    set -e; mkdir -p ~/jax_distill && tar -C ~/jax_distill -xzf /tmp/jax_distill_src.tgz && cd ~/jax_distill
    ./setup.sh tpu >/tmp/setup.log 2>&1 || { tail -50 /tmp/setup.log; exit 1; }
    .venv/bin/$cmd" 2>&1 | tee "logs/$name/all-workers.log"
}

case "$verb" in
  create) create "$@" ;;
  run) run "$@" ;;
  delete) gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet ;;
  until-done)
    type=${1:?TYPE}; shift
    for attempt in $(seq 1 "${MAX_ATTEMPTS:-20}"); do
      state=$(exists || true)
      if [ "$state" = "PREEMPTED" ] || [ "$state" = "TERMINATED" ]; then
        gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet; state=""
      fi
      [ -n "$state" ] || create "$type" --spot
      if run "$@"; then exit 0; fi
      echo "attempt $attempt failed or was preempted; resuming from the latest checkpoint" >&2
      sleep 30
    done
    exit 1 ;;
  *) echo "unknown verb $verb" >&2; exit 2 ;;
esac
