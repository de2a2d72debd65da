#!/usr/bin/env bash
# Trace generation / compression on a GPU host with vLLM: one shard of the work per host.
#
#   launch/gpu_host.sh [--dry-run] SHARD NUM_SHARDS STAGE CONFIG [overrides...]
#   e.g. on host 3 of 8:  launch/gpu_host.sh 3 8 generate configs/traces/generate.py:qwen3_vllm \
#                              --config.out_dir=runs/traces/qwen35
#
# Stages resume: rerunning after a crash or preemption skips finished question ids, so the same line
# can be rerun until every shard is complete. --dry-run prints the commands and runs none.
set -euo pipefail
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then dry_run=1; shift; fi
usage="usage: gpu_host.sh [--dry-run] SHARD NUM_SHARDS STAGE CONFIG [overrides...]"
shard=${1:?$usage}; num=${2:?$usage}; stage=${3:?$usage}; config=${4:?$usage}; shift 4
case "$stage" in
  generate|compress|truncate|stats) ;;
  *) echo "gpu_host.sh: unknown stage $stage (generate, compress, truncate, stats)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."

x() {  # print a command, then run it unless this is a dry run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$dry_run" = 1 ] || "$@"
}

[ -x .venv-vllm/bin/python ] || x ./setup.sh vllm-gpu
x .venv-vllm/bin/python -m "jax_distill.traces.$stage" --config "$config" --config.shard="$shard/$num" "$@"
