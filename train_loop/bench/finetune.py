"""Fine-tune a real pretrained Whisper on synthetic Belarusian speech: WER before and after.

    python -m train_loop.bench.finetune --model PATH          # ~45 min on 2 CPU cores (base)
    python -m train_loop.bench.finetune --model PATH --steps 1000 --batch_size 32 \\
        --freeze_encoder false --mixed_precision bf16         # on a GPU

``PATH`` is a Whisper checkpoint in transformers format, e.g. the real OpenAI Whisper base that
``../shared/fixtures/make_whisper.py PATH --size base`` builds offline. The speech comes from
``make_be_speech.py`` beside it (espeak-ng voices reading human-written Belarusian sentences;
its splits never share a sentence). The run is the ordinary entry point, ``train_loop.main``:
the test split is transcribed before the first step and after the last, so both numbers are
on clips the model never trained on.

Prints a table and, as its last line, one JSON object (``wer_before``, ``wer_after``,
``cer_before``, ``cer_after``, ``train_samples_per_second``, wall times).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from ..core.console import run_tool
from ..core.errors import UserError
from ..core.flags import flag, parse_sections

DEFAULT_BUILDER = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "fixtures",
                               "make_be_speech.py")


@dataclass
class FinetuneBenchConfig:
    """The benchmark's data, run length and optimization."""

    _argument_group_name = "The fine-tuning benchmark (bench.finetune)"

    model: str | None = flag(None, "Whisper checkpoint folder (transformers format). Required.")
    work_dir: str | None = flag(None, "Where the data and the run go (default: a new temporary folder).")
    speech_builder: str = flag(os.path.normpath(DEFAULT_BUILDER),
                               "make_be_speech.py (default: ../shared/fixtures/make_be_speech.py).")
    train: int = flag(2400, "Training clips (the default 2400 are each seen once).")
    test: int = flag(80, "Held-out clips scored before and after fine-tuning.")
    steps: int = flag(300, "Optimizer steps.")
    batch_size: int = flag(8, "Clips per step.")
    learning_rate: float = flag(1e-4, "Peak learning rate.")
    freeze_encoder: bool = flag(True, "Train the decoder only (on a CPU the encoder's backward would double "
                                      "every step).")
    mixed_precision: str = flag("no", "Mixed precision of the run.", ("no", "bf16", "fp16"))
    eval_batch_size: int = flag(16, "Clips per generation batch.")
    seed: int = flag(0, "Seed of the speech and of the run.")


def main(argv: list[str] | None = None) -> int:
    def body():
        args = parse_sections({"bench": FinetuneBenchConfig}, argv, prog="train_loop.bench.finetune",
                              description=__doc__.split("\n\n")[0])["bench"]
        return run_benchmark(args)

    return run_tool(body)


def run_benchmark(args: FinetuneBenchConfig) -> int:
    if not args.model:
        raise UserError("--model is required: a Whisper folder in transformers format, e.g. the one "
                        "../shared/fixtures/make_whisper.py OUT --size base builds")
    for name in ("train", "test", "steps", "batch_size", "eval_batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not os.path.isfile(args.speech_builder):
        raise UserError(f"--speech_builder {args.speech_builder}: no such file (it is in the project's "
                        "shared/fixtures folder)")
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise UserError(f"the speech builder needs {' and '.join(missing)}: apt-get install espeak-ng sox")
    work = args.work_dir or tempfile.mkdtemp(prefix="finetune-")
    os.makedirs(work, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    started = time.perf_counter()
    data = build_speech(args, work)
    data_seconds = time.perf_counter() - started
    run_dir = os.path.join(work, "run")
    results, metrics = fine_tune(args, data, run_dir)

    before, after = results["evaluations"][0], results["evaluations"][-1]
    assert before["step"] == 0 and after["step"] == args.steps, results["evaluations"]
    rates = [r["samples_per_second"] for r in metrics if "samples_per_second" in r][1:]  # after warm-up
    summary = {
        "model": os.path.basename(os.path.normpath(args.model)), "train_clips": args.train,
        "test_clips": before["eval_samples"], "steps": args.steps, "batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "freeze_encoder": args.freeze_encoder,
        "mixed_precision": args.mixed_precision,
        "wer_before": round(before["eval_wer"], 2), "wer_after": round(after["eval_wer"], 2),
        "cer_before": round(before["eval_cer"], 2), "cer_after": round(after["eval_cer"], 2),
        "wer_raw_before": round(before["eval_wer_raw"], 2), "wer_raw_after": round(after["eval_wer_raw"], 2),
        "train_samples_per_second": round(statistics.median(rates), 3) if rates else None,
        "train_seconds": round(metrics[-1]["elapsed_seconds"], 1),
        "eval_seconds_before": round(before["eval_seconds"], 1), "eval_seconds_after": round(after["eval_seconds"], 1),
        "data_seconds": round(data_seconds, 1), "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print_table(summary)
    print(json.dumps(summary), flush=True)
    return 0


def build_speech(args, work: str) -> str:
    """train/test clips in audiofolder layout (reused when already built with these numbers)."""
    out = os.path.join(work, f"be-speech-{args.train}-{args.test}-{args.seed}")
    if not os.path.isfile(os.path.join(out, "test", "metadata.csv")):
        subprocess.run([sys.executable, args.speech_builder, out, "--train", str(args.train), "--validation", "0",
                        "--test", str(args.test), "--seed", str(args.seed), "--noise", "--overwrite"], check=True)
    return out


def fine_tune(args, data: str, run_dir: str) -> tuple[dict, list[dict]]:

    flags = {
        "model_name_or_path": args.model, "data_dir": data, "output_dir": run_dir,
        "cache_dir": os.path.join(os.path.dirname(run_dir), "cache"), "language": "be",
        "max_steps": args.steps, "per_device_train_batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "warmup_steps": max(1, args.steps // 10),
        "freeze_encoder": str(args.freeze_encoder).lower(), "mixed_precision": args.mixed_precision,
        "eval_split_name": "test", "eval_at_start": "true", "eval_steps": 0, "test_split_name": "none",
        "per_device_eval_batch_size": args.eval_batch_size, "generation_max_length": 225,
        "logging_steps": 10, "save_steps": 0, "report_to": "none", "seed": args.seed,
        "preprocessing_num_workers": max(1, os.cpu_count() or 1),
    }
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run every time
    argv = [item for key, value in flags.items() for item in (f"--{key}", str(value))]
    if subprocess.call([sys.executable, "-m", "train_loop.main", *argv]) != 0:  # as a user runs it
        raise UserError("the fine-tuning run failed; see its output above")
    with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        metrics = [json.loads(line) for line in handle if '"loss"' in line]
    return results, metrics


def print_table(s: dict) -> None:
    print(f"\nfine-tuning {s['model']} on {s['train_clips']} synthetic Belarusian clips: {s['steps']} steps x "
          f"batch {s['batch_size']}, lr {s['learning_rate']:g}, freeze_encoder {s['freeze_encoder']}, "
          f"precision {s['mixed_precision']}")
    print(f"{'test clips (never trained on)':<32} | {'before':>8} | {'after':>8}")
    print("-" * 56)
    for name, key in (("WER %", "wer"), ("CER %", "cer"), ("raw WER % (no normalization)", "wer_raw")):
        print(f"{name:<32} | {s[key + '_before']:>8.2f} | {s[key + '_after']:>8.2f}")
    print(f"{'evaluation time (s)':<32} | {s['eval_seconds_before']:>8.1f} | {s['eval_seconds_after']:>8.1f}")
    print(f"training: {s['train_samples_per_second']} samples/s, {s['train_seconds']:.0f} s; "
          f"whole benchmark {s['wall_seconds']:.0f} s\n")


if __name__ == "__main__":
    sys.exit(main())
