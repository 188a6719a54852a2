"""The benchmark command runs end to end (smallest configuration) and ends with its JSON line."""

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow  # ~50 s (CI runs the slow tests too)
def test_bench_smoke_prints_a_table_and_a_final_json_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "train_loop.bench", "--smoke", "--repeats", "1",
                             "--work_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    for key in ("train_speedup_vs_trainer", "eval_speedup_vs_trainer", "eval_wer_equal",
                "train_samples_per_second", "trainer_train_samples_per_second", "data_pipeline",
                "resume_to_first_step_seconds", "train_vs_bare_step", "eval_vs_bare_generate",
                "group_by_length_speedup", "padding_tokens_per_step", "padding_tokens_per_step_grouped",
                "eval_variants"):
        assert key in summary, key
    # Both sides were measured (a rate of 0 or NaN would make any ratio meaningless), and the
    # table a reader sees prints the JSON's numbers.
    for key in ("train_samples_per_second", "trainer_train_samples_per_second", "eval_samples_per_second",
                "trainer_eval_samples_per_second"):
        assert math.isfinite(summary[key]) and summary[key] > 0, key
    table = result.stdout
    assert f"{summary['train_samples_per_second']:.1f}" in table
    assert f"({summary['train_speedup_vs_trainer']:.2f}x)" in table
    assert f"({summary['eval_speedup_vs_trainer']:.2f}x)" in table
    # Same model, same clips, greedy decoding: both evaluations agree.
    assert summary["eval_wer_equal"] is True
    assert all(variant["transcripts_equal"] for variant in summary["eval_variants"].values())
    # Grouping by transcript length never pads more than random batches.
    assert summary["padding_tokens_per_step_grouped"] <= summary["padding_tokens_per_step"]
    assert "Seq2SeqTrainer (event setup)" in result.stdout and "training samples/s" in result.stdout
