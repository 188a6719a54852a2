"""Longer end-to-end checks: `pytest -m slow` (CI runs them when its time budget allows)."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


# The CPU features of the machines the README's demo table was printed on (see the README).
README_TABLE_CPU = {"avx512f", "amx_tile"}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return {flag for line in handle if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def _table(text: str) -> str:
    """The WER table block: its title, header, rule and rows (the lines after it are not)."""
    lines = text[text.index("WER table"):].splitlines()
    block = [lines[0]]
    for line in lines[1:]:
        if "|" not in line and not (line.strip() and set(line.strip()) <= set("-+")):
            break
        block.append(line)
    return "\n".join(block).strip()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="the demo synthesizes speech with espeak-ng")
def test_the_demo_prints_the_readme_table_and_reaches_a_low_wer(tmp_path):
    """The README's demo table is exactly what the demo prints on a CPU like the one it was
    printed on (its kernels are pinned, yet other CPUs differed in the last bits), and
    fine-tuning takes the tiny model below 30% WER on any machine."""
    result = subprocess.run([sys.executable, "-m", "train_loop.demo", "--output_dir", str(tmp_path / "demo")],
                            cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    readme = re.search(r"```\n(WER table.*?)\n```", (ROOT / "README.md").read_text(), re.S).group(1).strip()
    same_cpu = README_TABLE_CPU <= _cpu_flags()
    if same_cpu:
        assert _table(result.stdout) == readme

    results = json.loads((tmp_path / "demo" / "run" / "results.json").read_text())
    by_step = {(e["step"], e["split"]): e for e in results["evaluations"]}
    before = by_step[(0, "validation")]["eval_wer"]
    after = by_step[(400, "validation")]["eval_wer"]
    test = by_step[(400, "test")]["test_wer"]
    assert before > 100 and after < 30 and test < 30
    assert results["best"]["checkpoint"] == "checkpoint-400"
    if not same_cpu:
        pytest.skip(f"WER below 30% checked; the README's exact table is for CPUs with {sorted(README_TABLE_CPU)}, "
                    "which this one lacks")
