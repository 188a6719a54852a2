#!/usr/bin/env bash
# Install (scripts/setup.sh), then run the test suite. Extra arguments go to pytest
# (e.g. `-m slow` for the longer end-to-end checks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
