#!/usr/bin/env bash
# Run a jax_distill command on every worker of a Cloud TPU VM slice, restarting after preemption.
#
#   launch/tpu_vm.sh [--dry-run] create NAME ZONE TYPE [--spot] [--queued]   # e.g. v5litepod-64, v4-32
#   launch/tpu_vm.sh [--dry-run] run    NAME ZONE -- python -m jax_distill.train --config configs/train/... \
#                                                   --config.checkpoint.dir=gs://bucket/runs/x
#   launch/tpu_vm.sh [--dry-run] until-done NAME ZONE TYPE [--queued] -- <same command>
#   launch/tpu_vm.sh [--dry-run] delete NAME ZONE [--queued]
#
# create: a TPU VM (--spot: preemptible), or with --queued a queued resource that waits for capacity
#   (polled every POLL_S seconds, default 30, until ACTIVE; FAILED or SUSPENDED stops with an error).
# run: copies this checkout to every worker, installs it with `./setup.sh tpu`, and starts the command on
#   all workers at once (JAX finds its peers through the TPU metadata server, so
#   jax.distributed.initialize() needs no arguments there). Output: logs/NAME/all-workers.log here.
# until-done: spot slices: recreate a PREEMPTED or TERMINATED slice and rerun until the command exits 0
#   (MAX_ATTEMPTS, default 20; RETRY_S seconds between attempts, default 30). Checkpoints on gs:// make
#   each rerun resume where the last one stopped.
# --dry-run prints every command in order and runs none (the slice is taken to be absent).
set -euo pipefail

dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
usage="usage: tpu_vm.sh [--dry-run] create|run|until-done|delete NAME ZONE ..."
verb=${1:?$usage}
name=${2:?$usage}
zone=${3:?$usage}
shift 3
version=${TPU_SOFTWARE_VERSION:-tpu-ubuntu2204-base}
repo=$(cd "$(dirname "$0")/.." && pwd)
src=${TMPDIR:-/tmp}/jax_distill_src_$name.tgz

x() {  # print a command, then run it unless this is a dry run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$dry_run" = 1 ] || "$@"
}

queued=0
take_queued() {  # strip --queued from the arguments into $queued; the rest stays in ${args[@]}
  args=()
  for a in "$@"; do
    if [ "$a" = "--queued" ]; then queued=1; else args+=("$a"); fi
  done
}

state() {  # the slice's state (READY, PREEMPTED, ...; empty when it does not exist)
  if [ "$dry_run" = 1 ]; then
    x gcloud compute tpus tpu-vm describe "$name" --zone "$zone" --format='value(state)'
    return 0
  fi
  gcloud compute tpus tpu-vm describe "$name" --zone "$zone" --format='value(state)' 2>/dev/null || true
}

create() {
  local type=${1:?TYPE}; shift
  take_queued "$@"
  if [ "$queued" = 0 ]; then
    x gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$type" --version "$version" \
      ${args[@]+"${args[@]}"}
    return
  fi
  x gcloud compute tpus queued-resources create "$name" --node-id "$name" --zone "$zone" \
    --accelerator-type "$type" --runtime-version "$version" ${args[@]+"${args[@]}"}
  [ "$dry_run" = 0 ] || return 0
  local qstate
  while true; do
    qstate=$(gcloud compute tpus queued-resources describe "$name" --zone "$zone" --format='value(state.state)')
    case "$qstate" in
      ACTIVE) return 0 ;;
      FAILED|SUSPENDED) echo "tpu_vm.sh: queued resource $name is $qstate" >&2; return 1 ;;
      *) echo "tpu_vm.sh: queued resource $name is ${qstate:-unknown}; waiting" >&2; sleep "${POLL_S:-30}" ;;
    esac
  done
}

delete() {
  take_queued "$@"
  if [ "$queued" = 1 ]; then
    x gcloud compute tpus queued-resources delete "$name" --zone "$zone" --force --quiet
  else
    x gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet
  fi
}

run() {
  [ "${1:-}" = "--" ] && shift
  [ "$#" -gt 0 ] || { echo "tpu_vm.sh run: no command after --" >&2; return 2; }
  local cmd; printf -v cmd '%q ' "$@"
  x tar -C "$repo" --exclude=.venv --exclude=.venv-vllm --exclude=.git --exclude=runs -czf "$src" .
  x gcloud compute tpus tpu-vm scp "$src" "$name":/tmp/jax_distill_src.tgz --zone "$zone" --worker=all
  [ "$dry_run" = 1 ] || mkdir -p "logs/$name"
  local remote="set -e; mkdir -p ~/jax_distill && tar -C ~/jax_distill -xzf /tmp/jax_distill_src.tgz && cd ~/jax_distill
    ./setup.sh tpu >/tmp/setup.log 2>&1 || { tail -50 /tmp/setup.log; exit 1; }
    .venv/bin/$cmd"
  if [ "$dry_run" = 1 ]; then
    x gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$remote"
  else
    x gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$remote" 2>&1 \
      | tee "logs/$name/all-workers.log"
  fi
}

until_done() {
  local type=${1:?TYPE}; shift
  local create_args=() attempt state_now
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do create_args+=("$1"); shift; done
  for attempt in $(seq 1 "${MAX_ATTEMPTS:-20}"); do
    state_now=$(state)
    [ "$dry_run" = 0 ] || { echo "$state_now"; state_now=""; }
    if [ "$state_now" = "PREEMPTED" ] || [ "$state_now" = "TERMINATED" ]; then
      delete ${create_args[@]+"${create_args[@]}"}
      state_now=""
    fi
    [ -n "$state_now" ] || create "$type" --spot ${create_args[@]+"${create_args[@]}"}
    if run "$@"; then return 0; fi
    [ "$dry_run" = 0 ] || return 0
    echo "tpu_vm.sh: attempt $attempt failed or was preempted; resuming from the latest checkpoint" >&2
    sleep "${RETRY_S:-30}"
  done
  echo "tpu_vm.sh: gave up after ${MAX_ATTEMPTS:-20} attempts" >&2
  return 1
}

case "$verb" in
  create) create "$@" ;;
  run) run "$@" ;;
  delete) delete "$@" ;;
  until-done) until_done "$@" ;;
  *) echo "tpu_vm.sh: unknown verb $verb ($usage)" >&2; exit 2 ;;
esac
