"""Benchmarks against the Seq2SeqTrainer baseline, measured side by side in one run.

    python -m train_loop.bench --quick        # tiny model on CPU, a few minutes
    python -m train_loop.bench                # larger CPU configuration
    python -m train_loop.bench --model PATH   # e.g. whisper-small on a GPU (bf16)

Prints a table and, as its last line, one JSON object with at least
``train_speedup_vs_trainer``, ``eval_speedup_vs_trainer`` and ``eval_wer_equal``.

1. Training throughput: this loop (prepared features, DataLoader workers) vs Seq2SeqTrainer
   fed as the 2022 event script fed it (decode + log-mel on the fly in the main process);
   same model, data, batch size, precision and gradient-checkpointing setting. Samples/s over
   the steps after a warm-up.
2. Data pipeline alone: samples/s that decode + resample + log-mel deliver (streaming) and
   that reading prepared features delivers, by number of workers, next to what the model
   consumes.
3. Evaluation: this project's batched, length-sorted generation vs ``predict_with_generate``
   on the same model and clips, with the WER of both (greedy: they must agree).
4. MFU (GPU only): analytic model FLOPs per sample x samples/s / the GPU's bf16 peak.
5. Resume: launch -> first resumed step on a prepared dataset (``train_loop.bench.resume``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from ..core.errors import UserError


@dataclass
class Setup:
    quick: bool
    train_rows: int
    eval_rows: int
    batch_size: int
    steps: int
    warmup: int
    eval_batch_size: int
    baseline_eval_batch_size: int
    generation_max_length: int
    resume_rows: int
    resume_step: int
    window_seconds: int  # of the random tiny model (the real models hear 30 s)
    max_clip_seconds: float


def setup_for(args) -> Setup:
    if getattr(args, "smoke", False):  # the test suite's run through every code path
        return Setup(quick=True, train_rows=24, eval_rows=6, batch_size=4, steps=4, warmup=2,
                     eval_batch_size=8, baseline_eval_batch_size=2, generation_max_length=4,
                     resume_rows=40, resume_step=4, window_seconds=2, max_clip_seconds=2.0)
    if args.quick:  # the demo's model shape: a 4 s window, clips of 1-4 s
        return Setup(quick=True, train_rows=160, eval_rows=48, batch_size=8, steps=30, warmup=10,
                     eval_batch_size=64, baseline_eval_batch_size=8, generation_max_length=24,
                     resume_rows=1000, resume_step=200, window_seconds=4, max_clip_seconds=4.0)
    # The real 30 s window: on CPU the encoder then dominates both training and evaluation.
    return Setup(quick=False, train_rows=512, eval_rows=128, batch_size=16, steps=40, warmup=10,
                 eval_batch_size=128, baseline_eval_batch_size=16, generation_max_length=64,
                 resume_rows=10_000, resume_step=5_000, window_seconds=30, max_clip_seconds=5.0)


@dataclass
class Bench:
    """What every benchmark below measures on: the same model, data, setup and precision."""

    model: str
    data: str
    work: str
    setup: Setup
    precision: str
    gradient_checkpointing: bool
    repeats: int


Rows = list[tuple[str, str, str]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny CPU configuration (a few minutes)")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest configuration, for the test suite (its numbers mean nothing)")
    parser.add_argument("--model", default=None,
                        help="model folder to benchmark (default: a random tiny Whisper with a 30 s window)")
    parser.add_argument("--work_dir", default=None, help="data, caches and runs (default: a temp dir)")
    parser.add_argument("--mixed_precision", default=None, choices=["no", "fp16", "bf16"],
                        help="default: bf16 on GPU, no on CPU (the same for both sides)")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="for both sides")
    parser.add_argument("--skip_resume", action="store_true", help="leave out the resume measurement")
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternating runs per side; medians are reported (default 2; eval runs once more)")
    args = parser.parse_args(argv)
    setup = setup_for(args)
    work = args.work_dir or tempfile.mkdtemp(prefix="bench-")
    os.makedirs(work, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    gpu = torch.cuda.is_available()
    precision = args.mixed_precision or ("bf16" if gpu else "no")
    if precision != "no" and not gpu:
        raise SystemExit("--mixed_precision bf16/fp16 needs a GPU here")

    from ..synthetic.models import build_tiny_whisper
    from ..synthetic.speech import build_tone_dataset

    data = build_tone_dataset(os.path.join(work, f"data-{setup.max_clip_seconds}"),
                              {"train": setup.train_rows, "validation": setup.eval_rows},
                              max_seconds=setup.max_clip_seconds, audio_format="mp3")
    model = args.model or os.path.join(work, f"tiny-{setup.window_seconds}s")
    if args.model is None and not os.path.isdir(model):
        build_tiny_whisper(model, chunk_length=setup.window_seconds, d_model=128, layers=2, heads=4)
    results: dict[str, object] = {"device": torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores)",
                                  "model": os.path.basename(model.rstrip("/")), "precision": precision,
                                  "batch_size": setup.batch_size, "repeats": args.repeats}
    rows: Rows = []

    bench = Bench(model, data, work, setup, precision, args.gradient_checkpointing, args.repeats)
    train_rate = compare_training(bench, results, rows)
    measure_data_pipeline(bench, train_rate, results, rows)
    compare_evaluation(bench, results, rows)
    measure_bare_generate(bench, results, rows)
    measure_mfu(bench, train_rate, results, rows)
    if not args.skip_resume:
        measure_resume_time(bench, results, rows)

    print_table(results, rows)
    print(json.dumps(results), flush=True)
    return 0


def compare_training(bench: Bench, results: dict, rows: Rows) -> float:
    """1. Training throughput, side by side: this loop, the Trainer, the bare step (1b) and this
    loop with --group_by_length (1c) take turns, ``repeats`` times; the median of each."""
    from .trainer_baseline import train_throughput

    setup = bench.setup
    runs: dict[str, list[float]] = {"ours": [], "trainer": [], "bare": [], "grouped": []}
    for _ in range(bench.repeats):
        runs["ours"].append(our_train_throughput(bench.model, bench.data, os.path.join(bench.work, "ours"), setup,
                                                 bench.precision, bench.gradient_checkpointing))
        runs["trainer"].append(train_throughput(bench.model, bench.data, os.path.join(bench.work, "trainer"),
                                                setup.batch_size, setup.steps, setup.warmup, 1e-4,
                                                bench.gradient_checkpointing, bench.precision))
        runs["bare"].append(bare_step_rate(bench))
        runs["grouped"].append(our_train_throughput(bench.model, bench.data, os.path.join(bench.work, "grouped"),
                                                    setup, bench.precision, bench.gradient_checkpointing,
                                                    group_by_length="true"))
    ours, baseline, bare, grouped = (statistics.median(runs[k]) for k in ("ours", "trainer", "bare", "grouped"))
    results["train_samples_per_second"] = round(ours, 2)
    results["trainer_train_samples_per_second"] = round(baseline, 2)
    results["train_speedup_vs_trainer"] = round(ours / baseline, 2)
    rows.append(("training samples/s", f"{ours:.1f}", f"{baseline:.1f}  ({ours / baseline:.2f}x)"))
    # 1b. The limit the model sets: forward + backward + optimizer step on ready tensors.
    results["bare_step_samples_per_second"] = round(bare, 2)
    results["train_vs_bare_step"] = round(ours / bare, 3)
    rows.append(("bare step on ready tensors samples/s", f"{bare:.1f}",
                 f"this loop reaches {ours / bare:.2f} of it"))
    # 1c. Batches grouped by transcript length: decoder padding per step, and what it buys.
    padding = label_padding_per_step(bench)
    results["train_samples_per_second_grouped"] = round(grouped, 2)
    results["group_by_length_speedup"] = round(grouped / ours, 3)
    results["padding_tokens_per_step"] = padding["plain"]
    results["padding_tokens_per_step_grouped"] = padding["grouped"]
    rows.append(("training samples/s, --group_by_length", f"{grouped:.1f}",
                 f"{grouped / ours:.2f}x this loop without it"))
    rows.append(("label padding tokens/step, --group_by_length", f"{padding['grouped']:.1f}",
                 f"without: {padding['plain']:.1f} (of {padding['label_tokens']:.1f} label tokens/step)"))
    return ours


def label_padding_per_step(bench: Bench) -> dict[str, float]:
    """Mean decoder padding tokens per training batch over one epoch, with and without
    --group_by_length (what the collator pads: each batch to its longest transcript)."""
    import numpy as np

    from ..data.samplers import LengthGroupedBatchSampler, ShardedBatchSampler

    lengths = _prepared_train(bench).label_lengths()
    batch = bench.setup.batch_size
    samplers = {"plain": ShardedBatchSampler(len(lengths), batch, seed=0),
                "grouped": LengthGroupedBatchSampler(lengths, batch, seed=0)}
    out = {}
    for name, sampler in samplers.items():
        pads = [len(b) * lengths[b].max() - lengths[b].sum() for b in map(np.asarray, sampler)]
        out[name] = round(float(np.mean(pads)), 1)
    out["label_tokens"] = round(float(lengths.mean() * batch), 1)
    return out


def _prepared_train(bench: Bench):
    """The benchmark's training split as the run prepared it (read from the run's cache)."""
    from accelerate import Accelerator

    from ..core.model import load_processor
    from ..data.build import build_train_batches
    from ..training.config import parse_train_config

    config = parse_train_config(_our_flags(bench.model, bench.data, os.path.join(bench.work, "bare"), bench.setup,
                                           bench.precision))
    processor = load_processor(bench.model, config.model.language, config.model.task)
    train = build_train_batches(config.source, config.data, config.filters, processor, Accelerator(cpu=True),
                                batch_size=bench.setup.batch_size, seed=0, eval_normalizer="belarusian")
    return train.loader.dataset


def measure_bare_generate(bench: Bench, results: dict, rows: Rows) -> None:
    """3b. generate() alone on ready features, batch by batch as the evaluation batches them;
    eval_vs_bare_generate = this project's evaluation clips/s / that."""
    bare = bare_generate_rate(bench)
    ours = results["eval_samples_per_second"]
    results["bare_generate_samples_per_second"] = round(bare, 2)
    results["eval_vs_bare_generate"] = round(ours / bare, 3)
    rows.append((f"bare generate() on ready features clips/s (batch {bench.setup.eval_batch_size})", f"{bare:.1f}",
                 f"the evaluation reaches {ours / bare:.2f} of it"))


def _ready(bench: Bench, **extra):
    """Model (prepared), optimizer and config as this project's run builds them."""
    from accelerate import Accelerator

    from ..core.model import load_model, load_processor
    from ..training.config import parse_train_config
    from ..training.optim import build_optimizer

    config = parse_train_config(_our_flags(bench.model, bench.data, os.path.join(bench.work, "bare"), bench.setup,
                                           bench.precision, gradient_checkpointing=str(bench.gradient_checkpointing).lower(),
                                           **extra))
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision=None if bench.precision == "no" else bench.precision)
    processor = load_processor(bench.model, config.model.language, config.model.task)
    model = load_model(config.model, processor)
    optimizer = build_optimizer(model, config.training)
    model, optimizer = accelerator.prepare(model, optimizer)
    return config, accelerator, processor, model, optimizer


def bare_step_rate(bench: Bench) -> float:
    from ..data.build import build_train_batches
    from ..training.loop import token_loss_sum

    setup = bench.setup
    config, accelerator, processor, model, optimizer = _ready(bench)
    train = build_train_batches(config.source, config.data, config.filters, processor, accelerator,
                                batch_size=setup.batch_size, seed=config.training.seed,
                                eval_normalizer=config.scoring.eval_normalizer)
    device = accelerator.device
    batches = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in next(train).items()}
               for _ in range(setup.steps)]
    model.train()

    def step(batch) -> None:
        tokens = (batch["labels"] != -100).sum()
        with accelerator.autocast():
            loss = token_loss_sum(model, batch, device)
        accelerator.backward(loss / tokens)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in batches[:setup.warmup]:
        step(batch)
    _sync()
    started = time.perf_counter()
    for batch in batches[setup.warmup:]:
        step(batch)
    _sync()
    return (setup.steps - setup.warmup) * setup.batch_size / (time.perf_counter() - started)


def bare_generate_rate(bench: Bench) -> float:
    from ..data.build import build_eval_set
    from ..evaluation.generation import GenerationSettings

    setup = bench.setup
    config, accelerator, processor, model, _ = _ready(bench)
    model = accelerator.unwrap_model(model).eval()
    eval_set = build_eval_set(config.source, config.data, processor, accelerator, "validation",
                              batch_size=setup.eval_batch_size, max_samples=None, eval_normalizer="belarusian")
    batches = [batch["input_features"].to(accelerator.device) for batch in eval_set.loader if batch["ids"]]
    kwargs = GenerationSettings(config.model.language, config.model.task, setup.generation_max_length).generate_kwargs()
    with torch.no_grad(), accelerator.autocast():
        model.generate(input_features=batches[0][:2], **kwargs)  # warm-up
        _sync()
        started = time.perf_counter()
        clips = 0
        for features in batches:
            model.generate(input_features=features, **kwargs)
            clips += len(features)
        _sync()
    return clips / (time.perf_counter() - started)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_data_pipeline(bench: Bench, train_rate: float, results: dict, rows: Rows) -> None:
    """2. The data pipeline alone, next to what the model consumes."""
    pipeline = data_pipeline_rates(bench.model, bench.data, bench.work, bench.setup)
    results["data_pipeline"] = pipeline
    for name, rate in pipeline.items():
        rows.append((f"data: {name} samples/s", f"{rate:.1f}", f"model consumes {train_rate:.1f}"))


# The evaluation speed switches (EvalSpeedConfig), each measured against the default.
EVAL_VARIANTS = {
    "encoder on the whole batch (--eval_encoder_batch_size 0)": {"eval_encoder_batch_size": 0},
    "static KV cache (--eval_static_cache)": {"eval_static_cache": "true"},
}


def compare_evaluation(bench: Bench, results: dict, rows: Rows) -> None:
    """3. Evaluation, side by side, on the model our training run produced: this project's
    defaults, each speed switch, this project at the Trainer's batch size, and the Trainer."""
    from ..core.text import BelarusianTextNormalizer
    from ..evaluation.metrics import error_rates
    from .trainer_baseline import eval_throughput

    setup, precision, work, data = bench.setup, bench.precision, bench.work, bench.data
    trained = os.path.join(work, "ours")
    sides = {"ours": (setup.eval_batch_size, {}),
             **{name: (setup.eval_batch_size, flags) for name, flags in EVAL_VARIANTS.items()},
             "same_batch": (setup.baseline_eval_batch_size, {})}
    rates: dict[str, list[float]] = {name: [] for name in [*sides, "trainer"]}
    predictions: dict[str, list[dict[str, str]]] = {}
    for _ in range(bench.repeats + 1):
        for name, (batch_size, flags) in sides.items():
            rate, predictions[name] = our_eval_throughput(trained, data, work, setup, batch_size, precision, **flags)
            rates[name].append(rate)
        rate, predictions["trainer"] = eval_throughput(trained, data, os.path.join(work, "trainer-eval"), "validation",
                                                       setup.baseline_eval_batch_size, setup.generation_max_length,
                                                       precision=precision)
        rates["trainer"].append(rate)
    rate = {name: statistics.median(values) for name, values in rates.items()}

    def wer(rows_):
        return error_rates([p["reference"] for p in rows_], [p["prediction"] for p in rows_],
                           BelarusianTextNormalizer())["wer"]

    wers = {name: wer(p) for name, p in predictions.items()}
    base_wer = wers["trainer"]
    # Both sides read the clips in the split's order; the Trainer's come back in that order.
    ours_texts = [p["prediction"] for p in sorted(predictions["ours"], key=lambda p: p["id"])]
    base_texts = [p["prediction"] for p in predictions["trainer"]]
    identical = sum(a == b for a, b in zip(ours_texts, base_texts)) / max(1, len(base_texts))
    same_as_default = {name: [p["prediction"] for p in predictions[name]] == [p["prediction"] for p in predictions["ours"]]
                       for name in EVAL_VARIANTS}
    ours_eval, base_eval = rate["ours"], rate["trainer"]
    results.update({
        "eval_samples_per_second": round(ours_eval, 2),
        "eval_samples_per_second_at_trainer_batch": round(rate["same_batch"], 2),
        "trainer_eval_samples_per_second": round(base_eval, 2),
        "eval_speedup_vs_trainer": round(ours_eval / base_eval, 2),
        "eval_wer": round(wers["ours"], 4), "trainer_eval_wer": round(base_wer, 4),
        "eval_wer_equal": all(abs(w - base_wer) < 1e-9 for w in wers.values()),
        "eval_predictions_identical": round(identical, 4),
        "eval_batch_size": setup.eval_batch_size, "trainer_eval_batch_size": setup.baseline_eval_batch_size,
        "eval_variants": {name: {"samples_per_second": round(rate[name], 2),
                                 "vs_default": round(rate[name] / ours_eval, 3),
                                 "wer": round(wers[name], 4), "transcripts_equal": same_as_default[name]}
                          for name in EVAL_VARIANTS},
    })
    rows.append((f"eval clips/s (batch {setup.eval_batch_size} vs {setup.baseline_eval_batch_size})",
                 f"{ours_eval:.1f}", f"{base_eval:.1f}  ({ours_eval / base_eval:.2f}x)"))
    for name in EVAL_VARIANTS:
        rows.append((f"  eval clips/s with {name}", f"{rate[name]:.1f}",
                     f"{rate[name] / ours_eval:.2f}x the default; WER {wers[name]:.2f}, "
                     f"transcripts {'identical' if same_as_default[name] else 'DIFFERENT'}"))
    rows.append((f"eval clips/s at the Trainer's batch {setup.baseline_eval_batch_size}", f"{rate['same_batch']:.1f}",
                 f"{base_eval:.1f}  ({rate['same_batch'] / base_eval:.2f}x)"))
    rows.append(("eval WER %", f"{wers['ours']:.2f}", f"{base_wer:.2f}  (equal: {results['eval_wer_equal']}; "
                                                      f"{100 * identical:.0f}% of transcripts identical)"))


def measure_mfu(bench: Bench, train_rate: float, results: dict, rows: Rows) -> None:
    """4. Model FLOPs utilization of the training run (GPU only)."""
    mfu = model_flops_utilization(os.path.join(bench.work, "ours"), train_rate, bench.data)
    results["mfu"] = mfu
    rows.append(("MFU (bf16 peak)", "n/a on CPU" if mfu is None else f"{100 * mfu:.1f}%", ""))


def measure_resume_time(bench: Bench, results: dict, rows: Rows) -> None:
    """5. Launch to the first resumed step, against a fresh start."""
    from .resume import measure_resume

    setup = bench.setup
    resume = measure_resume(os.path.join(bench.work, "resume"), setup.resume_rows, setup.resume_step)
    results["resume_to_first_step_seconds"] = resume["resume_to_first_resumed_step_s"]
    results["fresh_start_to_first_step_seconds"] = resume["fresh_start_to_first_step_s"]
    rows.append((f"launch -> first step, resume at {setup.resume_step} of {setup.resume_rows} rows (s)",
                 f"{resume['resume_to_first_resumed_step_s']:.2f}",
                 f"fresh start {resume['fresh_start_to_first_step_s']:.2f}"))


# --------------------------------------------------------------------------------------------
# This project's side
# --------------------------------------------------------------------------------------------


def _our_flags(model: str, data: str, out: str, setup: Setup, precision: str, **extra) -> list[str]:
    flags = {"model_name_or_path": model, "data_dir": data, "output_dir": out,
             "cache_dir": os.path.join(os.path.dirname(out), "cache"),
             "per_device_train_batch_size": setup.batch_size, "max_steps": setup.steps,
             "learning_rate": 1e-4, "warmup_steps": 0, "logging_steps": setup.warmup,
             "eval_split_name": "none", "test_split_name": "none", "save_steps": 0,
             "report_to": "none", "mixed_precision": precision, "seed": 0,
             "max_duration_in_seconds": setup.window_seconds,
             "preprocessing_num_workers": max(1, os.cpu_count() or 1),
             "prepared_feature_dtype": "float32",  # identical features on both sides: equal WER
             "generation_max_length": setup.generation_max_length}
    flags.update(extra)
    args = []
    for key, value in flags.items():
        args += [f"--{key}", str(value)]
    return args


def our_train_throughput(model: str, data: str, out: str, setup: Setup, precision: str,
                         gradient_checkpointing: bool, **extra) -> float:

    args = _our_flags(model, data, out, setup, precision,
                      gradient_checkpointing=str(gradient_checkpointing).lower(), **extra)
    if os.path.isdir(out):
        import shutil

        shutil.rmtree(out)
    if subprocess.call([sys.executable, "-m", "train_loop.main", *args]) != 0:  # as a user runs it
        raise UserError("the training run failed; see its output above")
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    times = {r["step"]: r["time"] for r in records if "loss" in r}
    return (setup.steps - setup.warmup) * setup.batch_size / (times[setup.steps] - times[setup.warmup])


def our_eval_throughput(model: str, data: str, work: str, setup: Setup, batch_size: int,
                        precision: str, **speed_flags) -> tuple[float, list[dict[str, str]]]:
    """(clips/s, predictions) of this project's evaluation of the validation split."""
    from accelerate import Accelerator

    from ..core.model import load_model, load_processor
    from ..core.text import BelarusianTextNormalizer
    from ..data.build import build_eval_set
    from ..evaluation.generation import GenerationSettings, evaluate
    from ..training.config import parse_train_config

    config = parse_train_config(_our_flags(model, data, os.path.join(work, "ours-eval"), setup, precision,
                                           per_device_eval_batch_size=batch_size,
                                           model_name_or_path=model, **speed_flags))
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision=None if precision == "no" else precision)
    processor = load_processor(model, config.model.language, config.model.task)
    whisper = accelerator.prepare(load_model(config.model, processor))
    eval_set = build_eval_set(config.source, config.data, processor, accelerator, "validation",  # prepared once, cached
                              batch_size=batch_size, max_samples=None, eval_normalizer="belarusian")
    settings = GenerationSettings.from_config(config.model.language, config.model.task, setup.generation_max_length,
                                              1, config.speed)
    predictions_path = os.path.join(work, "ours-eval", f"batch-{batch_size}.jsonl")
    result = evaluate(whisper, eval_set, processor.tokenizer, settings, accelerator, BelarusianTextNormalizer(),
                      predictions_path, show_progress=False)
    with open(predictions_path, encoding="utf-8") as handle:
        predictions = [json.loads(line) for line in handle]
    return result["samples_per_second"], predictions


def data_pipeline_rates(model: str, data: str, work: str, setup: Setup) -> dict[str, float]:
    """Clips/s delivered by each way of feeding the model, without the model."""
    from accelerate import Accelerator

    from ..core.model import load_processor
    from ..data.build import build_train_batches
    from ..training.config import parse_train_config

    accelerator = Accelerator(cpu=True)
    rates: dict[str, float] = {}
    batches = 2 if getattr(setup, "train_rows", 0) < 50 else (12 if setup.quick else 40)
    for streaming in (False, True):
        for workers in (0, 1, 2):
            config = parse_train_config(_our_flags(model, data, os.path.join(work, "pipeline"), setup, "no",
                                                   dataloader_num_workers=workers,
                                                   streaming=str(streaming).lower()))
            processor = load_processor(model, "be", "transcribe")
            train = build_train_batches(config.source, config.data, config.filters, processor, accelerator,
                                        batch_size=setup.batch_size, seed=config.training.seed,
                                        eval_normalizer=config.scoring.eval_normalizer)
            next(train)  # worker start-up is not throughput
            started = time.perf_counter()
            clips = sum(len(next(train)["ids"]) for _ in range(batches))
            rates[f"{'streaming (decode + log-mel)' if streaming else 'prepared (read features)'}, "
                  f"{workers} workers"] = round(clips / (time.perf_counter() - started), 1)
            del train
    return rates


def model_flops_utilization(model_dir: str, samples_per_second: float, data: str) -> float | None:
    if not torch.cuda.is_available():
        return None
    from transformers import WhisperConfig

    from .flops import peak_flops, train_flops_per_sample

    peak = peak_flops(torch.cuda.get_device_name(0))
    if peak is None:
        return None
    config = WhisperConfig.from_pretrained(model_dir)
    return train_flops_per_sample(config, label_tokens=32) * samples_per_second / peak


def print_table(results: dict[str, object], rows: list[tuple[str, str, str]]) -> None:
    print(f"\nbenchmark on {results['device']} | model {results['model']} | precision {results['precision']} | "
          f"train batch {results['batch_size']}")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}} | {'this project':>12} | Seq2SeqTrainer (event setup) / note")
    print("-" * (width + 50))
    for name, ours, theirs in rows:
        print(f"{name:<{width}} | {ours:>12} | {theirs}")
    print()


if __name__ == "__main__":
    sys.exit(main())
