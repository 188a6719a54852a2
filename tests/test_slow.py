"""Longer end-to-end checks: `pytest -m slow` (CI runs them when its time budget allows)."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="the demo synthesizes speech with espeak-ng")
def test_the_demo_prints_the_readme_table_and_reaches_a_low_wer(tmp_path):
    """The README's demo table is exactly what the demo prints (its kernels are pinned, so this
    holds on any x86-64 machine), and fine-tuning takes the tiny model below 30% WER."""
    result = subprocess.run([sys.executable, "-m", "train_loop.demo", "--output_dir", str(tmp_path / "demo")],
                            cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = result.stdout[result.stdout.index("WER table"):].strip()
    readme = re.search(r"```\n(WER table.*?)\n```", (ROOT / "README.md").read_text(), re.S).group(1).strip()
    assert printed == readme

    results = json.loads((tmp_path / "demo" / "run" / "results.json").read_text())
    by_step = {(e["step"], e["split"]): e for e in results["evaluations"]}
    before = by_step[(0, "validation")]["eval_wer"]
    after = by_step[(400, "validation")]["eval_wer"]
    test = by_step[(400, "test")]["test_wer"]
    assert before > 100 and after < 30 and test < 30
    assert results["best"]["checkpoint"] == "checkpoint-400"
