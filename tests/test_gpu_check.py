"""scripts/gpu_check.sh runs end to end before a GPU is ever used: its CPU mode (tiny shapes)
goes through every part (training grid, this loop vs the bare step, evaluation switches, ZeRO-2)."""

import json
import os
import subprocess

import pytest
from conftest import ROOT


@pytest.mark.slow  # ~50 s: the whole GPU check on tiny shapes (CI runs the slow tier when time allows)
def test_gpu_check_cpu_smoke_prints_a_table_and_a_json_line(tmp_path):
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path / "gpu_check.json")}
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu-smoke", "--work_dir", str(tmp_path / "work")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == json.loads((tmp_path / "gpu_check.json").read_text())
    grid = summary["train"]
    assert {(r["model"], r["batch_size"], r["gradient_checkpointing"]) for r in grid} == {
        (model, batch, checkpointing) for model in ("tiny", "tiny-wide") for batch in (2, 4)
        for checkpointing in (False, True)}
    assert all(r["samples_per_second"] > 0 for r in grid)
    assert 0 < summary["loop"]["train_vs_bare_step"]
    assert all(switch["transcripts_equal_to_default"] for switch in summary["eval"].values())
    assert summary["zero2"]["passed"] is True
    assert "gpu check on CPU" in result.stdout and "ZeRO-2 no smoke" in result.stdout


def test_gpu_check_without_its_packages_or_wheels_says_how_to_get_them(tmp_path):
    fake_python = tmp_path / "python"  # a Python where `import datasets` fails
    fake_python.write_text(f"#!/bin/sh\nif [ \"$1\" = -c ]; then case \"$2\" in *datasets*) exit 1;; esac; fi\n"
                           f"exec {os.sys.executable} \"$@\"\n")
    fake_python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake_python), "GPU_WHEELS": str(tmp_path / "no-wheels")}
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu-smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "datasets missing and no wheels in" in result.stderr and "scripts/gpu_wheels.sh" in result.stderr
