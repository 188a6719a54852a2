"""How long a resumed run takes to get going, and what a checkpoint costs.

    python -m train_loop.bench.resume                     # 10,000 rows, resume at step 5,000
    python -m train_loop.bench.resume --rows 2000 --step 500 --checkpoint_model PATH

1. Builds a prepared dataset of ``--rows`` synthetic clips and a tiny Whisper, trains to
   ``--step`` at batch 1 (so the position is mid-epoch) and saves a checkpoint there.
2. Launches the same command twice more and times launch -> first optimizer step: a fresh
   start (the baseline: same imports, model, cached features) and ``--resume_from latest``.
   The difference is what resuming costs (loading state, seeking the data).
3. Reports the checkpoint's size and save time; with ``--checkpoint_model`` (e.g. a real
   whisper-base folder) also for that model, from a 2-step run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from ..synthetic.models import build_tiny_whisper
from ..synthetic.speech import build_tone_dataset


def train_command(model: str, data: str, out: str, cache: str, **flags) -> list[str]:
    base = {"model_name_or_path": model, "data_dir": data, "output_dir": out, "cache_dir": cache,
            "per_device_train_batch_size": 1, "learning_rate": 1e-4, "lr_scheduler_type": "constant",
            "logging_steps": 1, "eval_split_name": "none", "test_split_name": "none",
            "max_duration_in_seconds": 2, "report_to": "none", "dataloader_num_workers": 1,
            "preprocessing_num_workers": 2}
    base.update(flags)
    args = [sys.executable, "-m", "train_loop.main"]
    for key, value in base.items():
        args += [f"--{key}", str(value)]
    return args


def time_to_first_step(command: list[str], first_step: int) -> dict[str, float]:
    """Seconds from launch to the first logged step (and to the 'resumed' line, if any)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    marks: dict[str, float] = {}
    output = []
    for line in process.stdout:
        output.append(line)
        now = time.perf_counter() - started
        if line.startswith("resumed from"):
            marks["resumed_line"] = now
        if line.startswith(f"step {first_step}/"):
            marks["first_step"] = now
            process.terminate()  # SIGTERM: it finishes the step and saves; we have our number
            break
    process.wait()
    if "first_step" not in marks:
        raise RuntimeError("the run never reached its first step:\n" + "".join(output[-20:]))
    return marks


def checkpoint_cost(out: str, step: int) -> dict[str, float]:
    path = os.path.join(out, f"checkpoint-{step}")
    size = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
    with open(os.path.join(out, "train.log"), encoding="utf-8") as handle:
        seconds = [float(m.group(1)) for m in re.finditer(rf"saved checkpoint-{step} in ([\d.]+) s", handle.read())]
    return {"checkpoint_mb": round(size / 2**20, 1), "save_seconds": seconds[-1] if seconds else float("nan")}


def measure_resume(work: str, rows: int, step: int, checkpoint_model: str | None = None) -> dict[str, object]:
    """Train to ``step`` once (reused from ``work`` later), then time a fresh start and a resume."""
    data = build_tone_dataset(os.path.join(work, "data"), {"train": rows}, min_seconds=0.5, max_seconds=2.0)
    model = os.path.join(work, "tiny")
    if not os.path.isdir(model):
        build_tiny_whisper(model, chunk_length=2, d_model=32, layers=1, heads=2)
    cache, out = os.path.join(work, "cache"), os.path.join(work, "run")
    results: dict[str, object] = {"rows": rows, "step": step}

    if not os.path.isfile(os.path.join(out, f"checkpoint-{step}", "trainer_state.json")):
        started = time.perf_counter()
        subprocess.run(train_command(model, data, out, cache, max_steps=step, save_steps=step,
                                     logging_steps=max(1, step // 10)), check=True, stdout=subprocess.DEVNULL)
        results["train_to_step_seconds"] = round(time.perf_counter() - started, 1)
    results.update(checkpoint_cost(out, step))

    fresh = time_to_first_step(train_command(model, data, os.path.join(work, "fresh"), cache,
                                             max_steps=step * 2, save_steps=0), 1)
    resumed = time_to_first_step(train_command(model, data, out, cache, max_steps=step * 2,
                                               save_steps=0, resume_from=f"checkpoint-{step}"), step + 1)
    results["fresh_start_to_first_step_s"] = round(fresh["first_step"], 2)
    results["resume_to_first_resumed_step_s"] = round(resumed["first_step"], 2)
    results["resume_overhead_s"] = round(resumed["first_step"] - fresh["first_step"], 2)

    if checkpoint_model:
        small_data = build_tone_dataset(os.path.join(work, "data-small"), {"train": 8}, min_seconds=1, max_seconds=2)
        big_out = os.path.join(work, "run-model")
        subprocess.run(train_command(checkpoint_model, small_data, big_out, cache, max_steps=2,
                                     save_steps=2, max_duration_in_seconds=30), check=True,
                       stdout=subprocess.DEVNULL)
        cost = checkpoint_cost(big_out, 2)
        results["model_checkpoint_mb"] = cost["checkpoint_mb"]
        results["model_save_seconds"] = cost["save_seconds"]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="training clips (default 10000)")
    parser.add_argument("--step", type=int, default=5_000, help="resume at this step (batch 1)")
    parser.add_argument("--work_dir", default=None, help="reused between runs (default: a temp dir)")
    parser.add_argument("--checkpoint_model", default=None,
                        help="also measure checkpoint size/time for this model folder (e.g. whisper-base)")
    args = parser.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="bench-resume-")
    results = measure_resume(work, args.rows, args.step, args.checkpoint_model)
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
