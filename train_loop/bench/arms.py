"""What the benchmarks that fine-tune a real model share: the checks of their inputs, and one arm
trained through the ordinary command (``python -m train_loop.main``, as a user runs it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from ..core.errors import UserError

SPEECH_BUILDER = ("python ../shared/fixtures/make_be_speech.py DIR --train 2400 --validation 0 --test 120 "
                  "--rich-metadata --noise --speakers 6")


def require_model_and_speech(model: str | None, data_dir: str | None) -> None:
    if not model:
        raise UserError("--model is required: a Whisper folder in transformers format, e.g. the one "
                        "../shared/fixtures/make_whisper.py OUT --size base builds")
    if not data_dir or not os.path.isfile(os.path.join(data_dir, "test", "metadata.csv")):
        raise UserError(f"--data_dir {data_dir}: expected train/ and test/ with metadata.csv; build it with "
                        f"{SPEECH_BUILDER}")


def train_arm(arm: str, flags: dict, run_dir: str) -> dict:
    """Train one arm from scratch in ``run_dir`` with ``flags``; its results.json."""
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run every time
    argv = [item for key, value in flags.items() for item in (f"--{key}", str(value))]
    print(f"[{arm}] python -m train_loop.main " + " ".join(argv), flush=True)
    if subprocess.call([sys.executable, "-m", "train_loop.main", *argv]) != 0:
        raise UserError(f"the {arm} arm's run failed; see its output above")
    with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as handle:
        return json.load(handle)
