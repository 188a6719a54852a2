#!/usr/bin/env bash
# One call on one GPU (H100/H200: under 8 minutes): training samples/s, MFU and peak memory for
# whisper-small and whisper-large-v3 shapes (random weights) at batch 16/32/64 with and without
# gradient checkpointing, this loop next to the bare step, evaluation with each speed switch,
# and a ZeRO-2 bf16 smoke run. One table and a JSON line (see train_loop/bench/gpu_check.py).
#
#   bash scripts/gpu_check.sh                # on the GPU machine
#   bash scripts/gpu_check.sh --cpu-smoke    # tiny shapes on CPU (the test suite runs this)
#
# The GPU machine has its own Python (torch with CUDA, transformers, accelerate) and no internet:
# the packages it lacks are installed from wheels fetched beforehand with scripts/gpu_wheels.sh
# (GPU_WHEELS, default .gpu_wheels) into a private folder, not into that Python. Environment:
# PYTHON (default: .venv/bin/python if present, else python3), GPU_CHECK_OUT (JSON copy).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
NEEDED="datasets jiwer soundfile soxr torchdata deepspeed"
missing=()
for module in $NEEDED; do
  "$PY" -c "import $module" >/dev/null 2>&1 || missing+=("$module")
done
if [ ${#missing[@]} -gt 0 ]; then
  WHEELS="${GPU_WHEELS:-$ROOT/.gpu_wheels}"
  if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    echo "gpu_check: ${missing[*]} missing and no wheels in $WHEELS; run scripts/gpu_wheels.sh on a machine with internet first (or set GPU_WHEELS)" >&2
    exit 2
  fi
  SITE="$ROOT/.gpu_site"
  echo "gpu_check: installing ${missing[*]} from $WHEELS into $SITE"
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  for module in $NEEDED; do
    if ! "$PY" -c "import $module" >/dev/null 2>&1; then
      echo "gpu_check: $module still does not import after installing from $WHEELS:" >&2
      "$PY" -c "import $module" 2>&1 | tail -1 >&2
      exit 2
    fi
  done
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" -m train_loop.bench.gpu_check --output "${GPU_CHECK_OUT:-gpu_check.json}" "$@"
