"""Longer end-to-end checks: `pytest -m slow` (CI runs them when its time budget allows)."""

import json
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


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
    """The demo prints a WER table laid out as the README's (same title, columns and rows) and
    fine-tuning takes the tiny model from above 100% to below 30% WER. The digits themselves
    are not compared: they moved between CPUs and between runs on one CPU (see the README).
    It trains with timestamps, so its transcript of a 40 s file of test clips has SRT cues that
    increase, stay inside the file and start near the clips."""
    from train_loop.demo import DemoConfig

    steps = DemoConfig().steps
    result = subprocess.run([sys.executable, "-m", "train_loop.demo", "--output_dir", str(tmp_path / "demo")],
                            cwd=ROOT, capture_output=True, text=True, timeout=2400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    readme = re.search(r"```\n(WER table.*?)\n```", (ROOT / "README.md").read_text(), re.S).group(1).strip()

    def layout(table):  # title, header, and (step, split, clips) of every row
        rows = table.splitlines()
        return rows[:2] + [" ".join(row.split("|")[i].strip() for i in range(3)) for row in rows[3:]]

    assert layout(_table(result.stdout)) == layout(readme)

    results = json.loads((tmp_path / "demo" / "run" / "results.json").read_text())
    by_step = {(e["step"], e["split"]): e for e in results["evaluations"]}
    before = by_step[(0, "validation")]["eval_wer"]
    after = by_step[(steps, "validation")]["eval_wer"]
    test = by_step[(steps, "test")]["test_wer"]
    assert before > 100 and after < 30 and test < 30
    assert results["best"]["checkpoint"] == f"checkpoint-{steps}"
    long_form = by_step[(steps, "longform")]
    assert long_form["eval_loop_rate"] == 0 and long_form["eval_timestamp_error_s"] < 1.0

    cues = re.findall(r"(\d\d):(\d\d):(\d\d),(\d{3}) --> (\d\d):(\d\d):(\d\d),(\d{3})",
                      (tmp_path / "demo" / "long-form" / "test-clips.srt").read_text())
    times = [(3600 * int(a) + 60 * int(b) + int(c) + int(d) / 1000, 3600 * int(e) + 60 * int(f) + int(g) + int(h) / 1000)
             for a, b, c, d, e, f, g, h in cues]
    assert len(times) >= 8
    starts = [start for start, _ in times]
    assert starts == sorted(starts) and times[-1][1] <= 41 and starts[-1] > 25  # the whole file, in order
    assert "long-form: 13 test clips in one 40 s file" in result.stdout
