#!/usr/bin/env bash
# Download, on a machine with internet, the wheels scripts/gpu_check.sh installs on a GPU machine
# that has none: the packages this project needs that such a machine's image lacks (its image has
# torch, transformers, accelerate, peft, tensorboard, numpy, pandas, pyarrow, xxhash, ...).
# Python 3.12, x86-64 Linux; about 12 MB in all (a device call may carry 64 MB).
#   bash scripts/gpu_wheels.sh [DIR]      # default DIR: .gpu_wheels (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.gpu_wheels}"
mkdir -p "$DIR"
PY="${PYTHON:-.venv/bin/python}"
# The versions CI tests (requirements/constraints.txt), else the ones installed here (.venv),
# so the set is one that works together.
pin() {
  local pinned
  pinned="$(grep -E "^$1==" requirements/constraints.txt | head -1 | sed 's/ .*//' || true)"
  [ -n "$pinned" ] && { echo "$pinned"; return; }
  "$PY" -c "import importlib.metadata as m, sys; print(f'$1=={m.version(\"$1\")}')" 2>/dev/null || echo "$1"
}
binary=()
for name in datasets dill multiprocess jiwer rapidfuzz soundfile cffi pycparser soxr torchdata \
            hjson pydantic pydantic-core annotated-types typing-inspection; do
  binary+=("$(pin "$name")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DIR" "${binary[@]}"
# DeepSpeed ships as a source archive only: build its pure-Python wheel here (its CUDA ops are
# compiled on first use, and this project's configs need none of them).
if ! ls "$DIR"/deepspeed-*.whl >/dev/null 2>&1; then
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" "$(pin deepspeed)"
fi
du -sh "$DIR"
ls "$DIR"
