#!/usr/bin/env bash
# bench/gpu_wheels.sh [--rehearsal] [--extra NAME]...: downloads into .gpu-wheels/ the wheels vary needs on the
# GPU machines that their image lacks, for their CPython 3.12 on manylinux x86_64 (bench/wheels.py says how the
# list is made). --rehearsal also fetches, into .gpu-rehearsal/, the image's own versions of the packages that
# stand in for it when bench/gpu_run.sh --smoke rehearses on another machine. Needs PyPI, and an interpreter with
# vary's requirements installed (VARY_PYTHON, else .venv/bin/python, else python3): its versions are the pins.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VARY_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
rehearsal=0
if [ "${1:-}" = --rehearsal ]; then rehearsal=1; shift; fi
"$PY" -m bench.wheels "$@"
if [ "$rehearsal" = 1 ]; then "$PY" -m bench.wheels --stand-ins .gpu-rehearsal; fi
