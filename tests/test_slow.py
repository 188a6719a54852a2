"""Longer end-to-end checks: `pytest -m slow` (CI runs them when its time budget allows)."""

import json
import shutil

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="the demo synthesizes speech with espeak-ng")
def test_demo_fine_tunes_the_tiny_model_to_a_low_wer(tmp_path):
    from train_loop import demo

    assert demo.main(["--output_dir", str(tmp_path / "demo")]) == 0
    results = json.loads((tmp_path / "demo" / "run" / "results.json").read_text())
    by_step = {(e["step"], e["split"]): e for e in results["evaluations"]}
    before = by_step[(0, "validation")]["eval_wer"]
    after = by_step[(400, "validation")]["eval_wer"]
    test = by_step[(400, "test")]["test_wer"]
    assert before > 100 and after < 30 and test < 30
    assert results["best"]["checkpoint"] == "checkpoint-400"
