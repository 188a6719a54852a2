#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for this project (idempotent; a second run is quick):
#   - espeak-ng, which synthesizes the demo's Belarusian speech (apt);
#   - a virtualenv in .venv with torch and the project's pinned dependencies (pip).
# Audio is decoded with soundfile's bundled libsndfile (wav/flac/ogg/mp3): no FFmpeg needed.
#
# TORCH_SPEC picks the torch build: torch==2.13.0 is the local CPU wheel on these machines;
# on a GPU machine use e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128".
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
# System packages: espeak-ng for the demo's speech; a C++ compiler and Python headers for
# DeepSpeed's CPU communication kernel (built on first use by the DeepSpeed tests).
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
include_dir="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)"
[ -f "$include_dir/Python.h" ] || missing+=(python3-dev)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "setup: installing ${missing[*]} (apt)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: ${missing[*]} not found and no apt-get; install them for the demo / DeepSpeed tests" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing ${TORCH_SPEC:-torch==2.13.0}"
  # shellcheck disable=SC2086
  .venv/bin/pip install -q ${TORCH_SPEC:-torch==2.13.0}
fi
if ! .venv/bin/python -c "import train_loop, pytest, jiwer, accelerate" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.installed ] || [ requirements/constraints.txt -nt .venv/.installed ]; then
  echo "setup: installing the project and its dependencies"
  # The constraints pin what CI tests; torch is whatever was installed above.
  grep -v '^torch==' requirements/constraints.txt > .venv/constraints.txt
  .venv/bin/pip install -q -c .venv/constraints.txt -e ".[dev]"
  touch .venv/.installed
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch, transformers, accelerate, datasets; print(f"torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}, datasets {datasets.__version__}")'))"
