#!/usr/bin/env bash
# bench/gpu_tune.sh [--smoke] OUT_DIR [--models NAMES]: after bench/gpu_run.sh, in the same lease: what vary's
# compile path (Placement(compile=True): the denoiser compiled, CUDA graphs, the decoder compiled) buys, each
# change kept only if the images stay the eager ones and it is faster (bench/tune.py). Ends within
# VARY_GPU_BUDGET_S seconds (270) of its start; results.json in OUT_DIR after every stage, log.txt as it goes.
set -uo pipefail
started=$(date +%s.%N)
smoke=()
if [ "${1:-}" = --smoke ]; then smoke=(--smoke); shift; fi
out=${1:?usage: bench/gpu_tune.sh [--smoke] OUT_DIR [--models NAMES]}
shift
mkdir -p "$out" && out=$(cd "$out" && pwd)
# shellcheck source=bench/gpu_env.sh
source "$(dirname "$0")/gpu_env.sh"
cd "$ROOT" || exit 1
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1
{
  echo "== bench/gpu_tune.sh ${smoke[*]} $out, $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,temperature.gpu --format=csv 2>/dev/null || echo "no nvidia-smi here"
  install_wheels || exit 1
  "$PY" -m bench.tune "$out" --started "$started" --budget-s "${VARY_GPU_BUDGET_S:-270}" "${smoke[@]}" "$@"
} 2>&1 | tee -a "$out/log.txt"
exit "${PIPESTATUS[0]}"
