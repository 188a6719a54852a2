#!/usr/bin/env bash
# Install (scripts/setup.sh), then run the test suite. Extra arguments go to pytest
# (e.g. `-m slow` for the longer end-to-end checks).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The app's test drives a real headless browser: Debian's chromium and its chromedriver.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "test: installing chromium chromium-driver (apt) for tests/test_app.py"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  else
    echo "test: no chromium/chromedriver and no apt-get: tests/test_app.py's browser test is skipped" >&2
  fi
fi
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
