# Sourced by bench/gpu_run.sh and bench/gpu_tune.sh: the interpreter, vary's wheels installed with no index,
# and the check that nothing vary needs is missing. On the GPU machines (CPython 3.12, x86_64) the wheels go
# into $VARY_GPU_SITE and on PYTHONPATH, ahead of the image's packages. On any other Python (a rehearsal) they
# are installed for the GPU's Python all the same, so a wheel that cannot install with the others fails here,
# and the interpreter runs with its own packages; the image's versions of transformers, huggingface-hub,
# accelerate and tokenizers stand in where `bench/gpu_wheels.sh --rehearsal` fetched them.
#   VARY_GPU_PYTHON  the interpreter (default python3: on the GPU machines, the one that holds torch)
#   VARY_GPU_SITE    where the wheels are installed (default /tmp/vary-gpu-site)
PY=${VARY_GPU_PYTHON:-python3}
SITE=${VARY_GPU_SITE:-/tmp/vary-gpu-site}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

install_wheels() {
  local wheels=("$ROOT"/.gpu-wheels/*.whl)
  if [ ! -e "${wheels[0]}" ]; then
    echo "no wheels in $ROOT/.gpu-wheels: run bench/gpu_wheels.sh (where PyPI is reachable) and carry .gpu-wheels" >&2
    return 1
  fi
  local listing
  listing=$(cd "$ROOT/.gpu-wheels" && ls -- *.whl)
  if "$PY" -c 'import platform, sys; sys.exit(sys.version_info[:2] != (3, 12) or platform.machine() != "x86_64")'; then
    if [ "$(cat "$SITE/.wheels" 2>/dev/null)" != "$listing" ]; then  # a warm machine keeps the last install
      rm -rf "$SITE"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "${wheels[@]}" || return 1
      printf '%s' "$listing" >"$SITE/.wheels"
    fi
    export PYTHONPATH="$ROOT/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "rehearsal: $("$PY" -V 2>&1) on $(uname -m) is not the GPU machines' CPython 3.12 x86_64: the wheels are" \
      "installed for that Python into $SITE and checked; this interpreter runs with its own packages"
    rm -rf "$SITE"
    # shellcheck disable=SC2046 # the flags are words
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
      $(cd "$ROOT" && "$PY" -m bench.wheels --pip-target) "${wheels[@]}" || return 1
    local stand_ins=("$ROOT"/.gpu-rehearsal/*.whl)
    if [ -e "${stand_ins[0]}" ]; then
      echo "rehearsal: the image's versions stand in: $(cd "$ROOT/.gpu-rehearsal" && ls -- *.whl | tr '\n' ' ')"
      rm -rf "$SITE-image"
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE-image" "${stand_ins[@]}" || return 1
      export PYTHONPATH="$ROOT/src:$SITE-image${PYTHONPATH:+:$PYTHONPATH}"
    else
      export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
  fi
  # A mismatch may be harmless (a pin stricter than the code needs): say it, and let the imports decide.
  (cd "$ROOT" && "$PY" -m bench.wheels --check "$SITE") || echo "going on regardless: if these matter, the run fails at its imports"
}
