"""The GPU check: everything worth knowing about this project on one GPU, in one call.

    bash scripts/gpu_check.sh               # on one H100/H200: under 8 minutes
    bash scripts/gpu_check.sh --cpu-smoke   # tiny shapes on CPU: the same code paths, in the tests

Prints one table and, as its last line, one JSON object (also written to --output):

1. Training, bare step (ready tensors, this project's loss and optimizer), bf16: samples/s,
   MFU (analytic FLOPs, ``flops.py``) and peak memory for randomly initialized whisper-small
   and whisper-large-v3 shapes at per-device batch 16/32/64, with and without gradient
   checkpointing. Out of memory is a result ("OOM"), not a failure.
2. This training loop (``train_loop.main``: prepared features, DataLoader workers, logging) on
   whisper-small at batch 32, next to the bare step of the same shape: how close it comes.
3. Evaluation clips/s of whisper-small with this project's defaults and with each speed switch
   (static KV cache with and without torch.compile), with whether the transcripts are equal.
4. A ZeRO-2 bf16 single-GPU smoke run through ``accelerate launch`` with the project's config
   (train, evaluate, save, load the saved model).

Weights are random (real weights do not fit the 64 MB a call may carry, and throughput does not
depend on their values); the audio is synthetic (``synthetic.py``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

from ..synthetic.models import REAL_SHAPES

LABEL_TOKENS = 32  # a typical Common Voice transcript in Whisper tokens


@dataclass
class Plan:
    device: str
    precision: str
    shapes: dict[str, dict]  # name -> random_whisper_config kwargs
    chunk_length: int
    batch_sizes: tuple[int, ...]
    warmup_steps: int
    timed_steps: int
    loop_shape: str
    loop_batch_size: int
    loop_steps: int
    eval_shape: str
    eval_clips: int
    eval_batch_size: int
    generation_max_length: int
    train_clips: int


def plan_for(cpu_smoke: bool) -> Plan:
    if cpu_smoke:
        tiny = dict(d_model=64, encoder_layers=1, decoder_layers=1, heads=2)
        return Plan(device="cpu", precision="no", shapes={"tiny": tiny, "tiny-wide": {**tiny, "d_model": 96}},
                    chunk_length=2, batch_sizes=(2, 4), warmup_steps=1, timed_steps=2,
                    loop_shape="tiny", loop_batch_size=4, loop_steps=6, eval_shape="tiny", eval_clips=8,
                    eval_batch_size=4, generation_max_length=8, train_clips=24)
    return Plan(device="cuda", precision="bf16",
                shapes={name: REAL_SHAPES[name] for name in ("whisper-small", "whisper-large-v3")},
                chunk_length=30, batch_sizes=(16, 32, 64), warmup_steps=3, timed_steps=8,
                loop_shape="whisper-small", loop_batch_size=32, loop_steps=40, eval_shape="whisper-small",
                eval_clips=256, eval_batch_size=64, generation_max_length=128, train_clips=320)


Rows = list[tuple[str, str]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU (the test suite runs this)")
    parser.add_argument("--work_dir", default=None, help="data and model folders (default: a temp dir)")
    parser.add_argument("--output", default=None, help="also write the JSON object to this file")
    parser.add_argument("--only", default="train,loop,eval,zero2",
                        help="comma-separated parts to run (default: all of train,loop,eval,zero2)")
    args = parser.parse_args(argv)
    plan = plan_for(args.cpu_smoke)
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; on CPU run `bash scripts/gpu_check.sh --cpu-smoke`")
    parts = {part.strip() for part in args.only.split(",") if part.strip()}
    unknown = parts - {"train", "loop", "eval", "zero2"}
    if unknown:
        raise SystemExit(f"gpu_check: --only {args.only}: unknown part(s) {', '.join(sorted(unknown))}; "
                         "choose from train,loop,eval,zero2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work_dir or tempfile.mkdtemp(prefix="gpu-check-")
    started = time.perf_counter()
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name(0) if plan.device == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "precision": plan.precision, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    rows: Rows = []
    if "train" in parts:
        results["train"] = train_grid(plan, rows)
    if "loop" in parts:
        results["loop"] = loop_vs_bare(plan, work, rows)
    if "eval" in parts:
        results["eval"] = eval_switches(plan, work, rows)
    if "zero2" in parts:
        results["zero2"] = zero2_smoke(plan, work, rows)
    results["seconds"] = round(time.perf_counter() - started, 1)
    print_table(results, rows)
    line = json.dumps(results)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(line + "\n")
    print(line, flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# 1. Training grid: bare steps on ready tensors
# --------------------------------------------------------------------------------------------


def train_grid(plan: Plan, rows: Rows) -> list[dict]:
    from transformers import WhisperForConditionalGeneration

    from ..synthetic.models import random_whisper_config
    from .flops import peak_flops, train_flops_per_sample

    device = torch.device(plan.device)
    peak = peak_flops(torch.cuda.get_device_name(0)) if plan.device == "cuda" else None
    out = []
    for name, shape in plan.shapes.items():
        config = random_whisper_config(chunk_length=plan.chunk_length, **shape)
        torch.manual_seed(0)
        with device:  # initialized where it runs: seconds, not minutes, for 1.5B parameters
            model = WhisperForConditionalGeneration(config)
        model.config.use_cache = False
        optimizer = _optimizer(model)
        flops = train_flops_per_sample(config, LABEL_TOKENS)
        for checkpointing in (False, True):
            if checkpointing:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_disable()
            for batch_size in plan.batch_sizes:
                record = {"model": name, "batch_size": batch_size, "gradient_checkpointing": checkpointing}
                try:
                    rate, memory = _bare_rate(model, optimizer, config, batch_size, plan)
                    record.update(samples_per_second=round(rate, 2), peak_memory_gib=memory,
                                  mfu=round(flops * rate / peak, 4) if peak else None)
                    cell = (f"{rate:8.1f} samples/s | MFU {'n/a' if not peak else f'{100 * flops * rate / peak:4.1f}%'}"
                            f" | peak {'n/a' if memory is None else f'{memory:5.1f} GiB'}")
                except torch.OutOfMemoryError:
                    record.update(samples_per_second=None, peak_memory_gib=None, mfu=None, oom=True)
                    cell = "OOM"
                optimizer.zero_grad(set_to_none=True)
                _free()
                out.append(record)
                rows.append((f"train {name} batch {batch_size}{' +checkpointing' if checkpointing else ''}", cell))
        del model, optimizer
        _free()
    return out


def _optimizer(model):
    from ..training.config import TrainingConfig
    from ..training.optim import build_optimizer

    return build_optimizer(model, TrainingConfig(output_dir="unused", learning_rate=1e-5))


def _bare_rate(model, optimizer, config, batch_size: int, plan: Plan) -> tuple[float, float | None]:
    """Samples/s of forward + backward + clip + optimizer step, and the peak memory (GiB)."""
    from ..training.loop import token_loss_sum

    device = torch.device(plan.device)
    generator = torch.Generator(device="cpu").manual_seed(batch_size)
    frames = 2 * config.max_source_positions
    batch = {
        "input_features": torch.randn(batch_size, config.num_mel_bins, frames, generator=generator).to(device),
        "decoder_input_ids": torch.randint(0, config.vocab_size, (batch_size, LABEL_TOKENS), generator=generator).to(device),
        "labels": torch.randint(0, config.vocab_size, (batch_size, LABEL_TOKENS), generator=generator).to(device),
    }
    dtype = torch.bfloat16 if plan.precision == "bf16" else torch.float32
    model.train()
    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=plan.precision == "bf16"):
            loss = token_loss_sum(model, batch, device)
        (loss / batch["labels"].numel()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(plan.warmup_steps):
        step()
    _sync(plan)
    started = time.perf_counter()
    for _ in range(plan.timed_steps):
        step()
    _sync(plan)
    rate = plan.timed_steps * batch_size / (time.perf_counter() - started)
    memory = round(torch.cuda.max_memory_allocated() / 2**30, 2) if plan.device == "cuda" else None
    return rate, memory


def _sync(plan: Plan) -> None:
    if plan.device == "cuda":
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# 2-4. This project's own paths on whisper-small (random weights, synthetic clips)
# --------------------------------------------------------------------------------------------


def _model_folder(plan: Plan, work: str, name: str) -> str:
    from ..synthetic.models import build_random_whisper

    folder = os.path.join(work, f"{name}-random")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        build_random_whisper(folder, chunk_length=plan.chunk_length, **plan.shapes[name])
    return folder


def _data(plan: Plan, work: str) -> str:
    from ..synthetic.speech import build_tone_dataset

    return build_tone_dataset(os.path.join(work, "data"), {"train": plan.train_clips, "validation": plan.eval_clips},
                              max_seconds=min(5.0, plan.chunk_length))


def _setup(plan: Plan, batch_size: int, steps: int):
    from .__main__ import Setup

    return Setup(quick=plan.device == "cpu", train_rows=plan.train_clips, eval_rows=plan.eval_clips,
                 batch_size=batch_size, steps=steps, warmup=max(2, steps // 4), eval_batch_size=plan.eval_batch_size,
                 baseline_eval_batch_size=plan.eval_batch_size, generation_max_length=plan.generation_max_length,
                 resume_rows=0, resume_step=0, window_seconds=plan.chunk_length, max_clip_seconds=5.0)


def loop_vs_bare(plan: Plan, work: str, rows: Rows) -> dict:
    from .__main__ import Bench, bare_step_rate, our_train_throughput

    model, data = _model_folder(plan, work, plan.loop_shape), _data(plan, work)
    setup = _setup(plan, plan.loop_batch_size, plan.loop_steps)
    loop = our_train_throughput(model, data, os.path.join(work, "loop"), setup, plan.precision, False)
    _free()
    bare = bare_step_rate(Bench(model, data, work, setup, plan.precision, False, 1))
    _free()
    rows.append((f"this loop, {plan.loop_shape} batch {plan.loop_batch_size}",
                 f"{loop:8.1f} samples/s = {loop / bare:.2f} of the bare step on the same batches ({bare:.1f})"))
    return {"model": plan.loop_shape, "batch_size": plan.loop_batch_size, "samples_per_second": round(loop, 2),
            "bare_step_samples_per_second": round(bare, 2), "train_vs_bare_step": round(loop / bare, 3)}


EVAL_SWITCHES = {
    "default": {},
    "encoder in sub-batches of 8": {"eval_encoder_batch_size": 8},
    "static cache + torch.compile": {"eval_static_cache": "true"},
    "static cache, no compile": {"eval_static_cache": "true", "eval_compile": "false"},
}


def eval_switches(plan: Plan, work: str, rows: Rows) -> dict:
    """Each switch evaluated twice: the first includes compiling, the second is the rate."""
    from .__main__ import our_eval_throughput

    model, data = _model_folder(plan, work, plan.eval_shape), _data(plan, work)
    setup = _setup(plan, plan.loop_batch_size, plan.loop_steps)
    out: dict[str, dict] = {}
    texts: dict[str, list[str]] = {}
    for name, flags in EVAL_SWITCHES.items():
        started = time.perf_counter()
        our_eval_throughput(model, data, work, setup, plan.eval_batch_size, plan.precision, **flags)
        first = time.perf_counter() - started
        rate, predictions = our_eval_throughput(model, data, work, setup, plan.eval_batch_size, plan.precision, **flags)
        texts[name] = [p["prediction"] for p in predictions]
        out[name] = {"clips_per_second": round(rate, 2), "first_run_seconds": round(first, 1)}
        _free()
    for name in EVAL_SWITCHES:
        out[name]["transcripts_equal_to_default"] = texts[name] == texts["default"]
        out[name]["vs_default"] = round(out[name]["clips_per_second"] / out["default"]["clips_per_second"], 3)
        rows.append((f"eval {plan.eval_shape} batch {plan.eval_batch_size}, {name}",
                     f"{out[name]['clips_per_second']:8.1f} clips/s = {out[name]['vs_default']:.2f}x default | "
                     f"first run {out[name]['first_run_seconds']:.0f} s | transcripts "
                     f"{'equal' if out[name]['transcripts_equal_to_default'] else 'DIFFERENT'}"))
    return out


def zero2_smoke(plan: Plan, work: str, rows: Rows) -> dict:
    """``accelerate launch`` with launch/accelerate/deepspeed_zero2.yaml on one process."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    model, data = _model_folder(plan, work, plan.loop_shape), _data(plan, work)
    out = os.path.join(work, "zero2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if plan.device == "cpu":
        env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               os.path.join(root, "launch", "accelerate", "deepspeed_zero2.yaml"), "--num_processes", "1",
               "--main_process_port", str(_free_port()), os.path.join(root, "train_loop", "main.py"),
               "--model_name_or_path", model, "--data_dir", data, "--output_dir", out, "--overwrite_output_dir",
               "--cache_dir", os.path.join(work, "cache"), "--mixed_precision", plan.precision,
               "--per_device_train_batch_size", str(min(16, plan.loop_batch_size)), "--max_steps", "6",
               "--learning_rate", "1e-5", "--warmup_steps", "1", "--logging_steps", "1", "--eval_steps", "0",
               "--max_eval_samples", str(min(16, plan.eval_clips)), "--generation_max_length", "16",
               "--test_split_name", "none", "--save_steps", "3", "--report_to", "none"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=420)
    seconds = round(time.perf_counter() - started, 1)
    loads = False
    if result.returncode == 0:
        from transformers import WhisperForConditionalGeneration

        loads = WhisperForConditionalGeneration.from_pretrained(out) is not None
    ok = result.returncode == 0 and loads
    if not ok:
        print(result.stdout[-3000:] + result.stderr[-3000:], file=sys.stderr)
    rows.append((f"ZeRO-2 {plan.precision} smoke, {plan.loop_shape}, 1 process",
                 f"{'passed' if ok else f'FAILED (exit {result.returncode})'}: 6 steps, eval, 2 checkpoints, "
                 f"final model loads | {seconds:.0f} s"))
    return {"passed": ok, "exit_code": result.returncode, "seconds": seconds}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def print_table(results: dict, rows: Rows) -> None:
    print(f"\ngpu check on {results['device']} | {results['precision']} | torch {results['torch']} | "
          f"{results['date']} | {results['seconds']:.0f} s")
    width = max(len(name) for name, _ in rows) if rows else 10
    print("-" * (width + 60))
    for name, cell in rows:
        print(f"{name:<{width}} | {cell}")
    print()


if __name__ == "__main__":
    sys.exit(main())
