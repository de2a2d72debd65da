#!/usr/bin/env bash
# Trace generation / compression on a GPU host with vLLM: one shard of the work per host.
#
#   launch/gpu_host.sh SHARD NUM_SHARDS STAGE CONFIG [overrides...]
#   e.g. on host 3 of 8:  launch/gpu_host.sh 3 8 generate configs/traces/qwen35_teacher.py \
#                              --config.output_dir=gs://bucket/traces/qwen35
#
# Stages resume: rerunning after a crash or preemption skips finished question ids, so the same line
# can be rerun until every shard is complete.
set -euo pipefail
shard=${1:?SHARD}; num=${2:?NUM_SHARDS}; stage=${3:?STAGE}; config=${4:?CONFIG}; shift 4
cd "$(dirname "$0")/.."
[ -x .venv-vllm/bin/python ] || ./setup.sh vllm-gpu
exec .venv-vllm/bin/python -m "jax_distill.traces.$stage" --config "$config" --config.shard="$shard/$num" "$@"
