#!/usr/bin/env bash
# Install (scripts/setup.sh), then fine-tune a tiny Whisper on the embedded Belarusian demo
# data on CPU and print the WER table. Extra arguments go to `python -m train_loop.demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m train_loop.demo "$@"
