#!/usr/bin/env bash
# bench/gpu_run.sh [--smoke] OUT_DIR: the GPU results table in one command (docs/performance.md has the device
# call). Installs vary's wheels from .gpu-wheels/ with no index, prints the GPU, then runs bench/suite.py:
# the card's bf16 matmul peak, Kandinsky 2.2 and FLUX.1 Redux [schnell] (real architectures, random weights)
# measured by tuned diffusers, vary in-process and vary over HTTP. OUT_DIR gets results.json after every stage,
# log.txt line by line, and results.md at the end. It ends within VARY_GPU_BUDGET_S seconds (450) of its start.
# --smoke: the same on the CPU with the tiny twins (a rehearsal: minutes, numbers that mean nothing).
set -uo pipefail
started=$(date +%s.%N)
smoke=()
if [ "${1:-}" = --smoke ]; then smoke=(--smoke); shift; fi
out=${1:?usage: bench/gpu_run.sh [--smoke] OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
# shellcheck source=bench/gpu_env.sh
source "$(dirname "$0")/gpu_env.sh"
cd "$ROOT" || exit 1
# Nothing can be fetched there: never wait on a download.
export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1
{
  echo "== bench/gpu_run.sh ${smoke[*]} $out, $(date -u +%FT%TZ), $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv 2>/dev/null || echo "no nvidia-smi here"
  install_wheels || exit 1
  "$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "GPU:",
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")' || exit 1
  "$PY" -m bench.suite "$out" --started "$started" --budget-s "${VARY_GPU_BUDGET_S:-450}" "${smoke[@]}"
} 2>&1 | tee -a "$out/log.txt"
exit "${PIPESTATUS[0]}"
