"""Mixed precision: bf16 under one process, DDP, ZeRO-2 and ZeRO-3 (CPU, 2 processes), fp32
master weights in every saved model, fp16 loss-scaler skips, and one random stream per process.

Tolerance of bf16 against fp32 (stated in docs/scaling.md, measured on this CPU with the tiny model):
every step's training loss within 0.1% (relative), the weights' total update within 2%
(relative L2). Measured here: 0.02% and 0.4% over 12-40 steps.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SENTENCES, launch, train_args, write_audiofolder
from safetensors.torch import load_file

from train_loop import main as train_main

LOSS_RTOL = 1e-3
UPDATE_RTOL = 2e-2

TRAIN = [f"{SENTENCES[i % len(SENTENCES)]} {'слова ' * (i % 4)}{i}" for i in range(12)]
RUN = dict(per_device_train_batch_size=2, max_steps=4, warmup_steps=1, learning_rate=5e-3,
           eval_steps=2, save_steps=2, per_device_eval_batch_size=2, test_split_name="none")

# Records, for every optimizer step, a digest of this process's torch and numpy random state
# (what dropout and SpecAugment draw from), then runs the training entry point.
RNG_PROBE = f"""
import hashlib, json, os, sys
sys.path.insert(0, {str(ROOT)!r})
import numpy as np, torch
import train_loop.training.loop as loop
step, train = loop.optimizer_step, loop.train
current = {{}}
def tracking(run, progress):
    current["progress"] = progress
    return train(run, progress)
def recording(run, micro_batches):
    state = np.random.get_state()
    digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes() + state[1].tobytes()
                            + str(state[2]).encode()).hexdigest()[:16]
    path = os.path.join(run.config.training.output_dir, f"rng-{{run.accelerator.process_index}}.jsonl")
    with open(path, "a") as handle:
        handle.write(json.dumps({{"step": current["progress"].state.step + 1, "rng": digest}}) + "\\n")
    return step(run, micro_batches)
loop.optimizer_step, loop.train = recording, tracking
from train_loop.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision-data")
    return write_audiofolder(root, {"train": TRAIN, "validation": SENTENCES[:5]}, seconds=0.5)


@pytest.fixture(scope="module")
def fp32_single(tiny_model_dir, data, tmp_path_factory):
    """The reference: one process, float32, the global batch (4) in one micro-batch."""
    out = tmp_path_factory.mktemp("fp32-single")
    flags = {**RUN, "per_device_train_batch_size": 4, "mixed_precision": "no"}
    assert train_main.main(train_args(tiny_model_dir, data, out, out / "cache", **flags)) == 0
    return out


def records(out, key, name="metrics.jsonl"):
    with open(Path(out) / name, encoding="utf-8") as handle:
        return [r for r in map(json.loads, handle) if key in r]


def assert_float32_model(folder):
    """A saved model is float32 on disk and loads as float32 by default (config.json says so)."""
    from transformers import WhisperForConditionalGeneration

    weights = load_file(Path(folder) / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert json.loads((Path(folder) / "config.json").read_text())["dtype"] == "float32"
    assert WhisperForConditionalGeneration.from_pretrained(folder).dtype == torch.float32
    return weights


def assert_full_precision_masters(out, weights, deepspeed: bool):
    """The saved float32 weights are the optimizer's master weights, not 16-bit copies cast up."""
    last = Path(out) / "checkpoint-4"
    if deepspeed:  # DeepSpeed's own reconstruction of its float32 partitions, from the shards
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        masters = get_fp32_state_dict_from_zero_checkpoint(str(last), tag="pytorch_model")
    else:  # without DeepSpeed the module's own weights are the masters (saved by save_state)
        masters = load_file(last / "model.safetensors")
    for name, tensor in weights.items():
        assert torch.equal(tensor, masters[name]), name
    rounded = sum(torch.equal(t, t.to(torch.bfloat16).float()) for t in weights.values())
    assert rounded < len(weights) / 2, "the weights look like bf16 values cast to float32"


def assert_close_to_fp32(out, reference):
    mine, theirs = records(out, "loss"), records(reference, "loss")
    assert len(mine) == len(theirs) == 4
    for a, b in zip(mine, theirs):
        assert a["loss"] == pytest.approx(b["loss"], rel=LOSS_RTOL), a["step"]
        assert a["learning_rate"] == b["learning_rate"]
    for evaluation in records(out, "eval_wer"):
        assert evaluation["eval_samples"] == 5  # generation ran in bf16 over every clip once


LAYOUTS = {"ddp": "launch/accelerate/multi_gpu.yaml", "zero2": "launch/accelerate/deepspeed_zero2.yaml",
           "zero3": "launch/accelerate/deepspeed_zero3.yaml"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bf16_trains_evaluates_saves_resumes_and_keeps_float32(tiny_model_dir, data, fp32_single, tmp_path, layout):
    probe = tmp_path / "rng_probe.py"
    probe.write_text(RNG_PROBE)
    out = tmp_path / layout
    launch(LAYOUTS[layout], train_args(tiny_model_dir, data, out, tmp_path / "cache", **RUN,
                                       mixed_precision="bf16"), script=str(probe))
    assert "mixed precision bf16" in (out / "train.log").read_text()
    assert_close_to_fp32(out, fp32_single)
    final = assert_float32_model(out)
    assert_float32_model(out / "checkpoint-2")
    assert_full_precision_masters(out, final, deepspeed=layout != "ddp")

    # Each process draws from its own random stream (seed + rank), though both read one data order.
    ranks = [records(out, "rng", f"rng-{rank}.jsonl") for rank in (0, 1)]
    assert all(a["rng"] != b["rng"] for a, b in zip(*ranks, strict=True))

    resumed = tmp_path / f"{layout}-resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    launch(LAYOUTS[layout], train_args(tiny_model_dir, data, resumed, tmp_path / "cache", **RUN,
                                       mixed_precision="bf16", resume_from="latest"), script=str(probe))
    after = [r for r in records(out, "loss") if r["step"] > 2]
    assert [(r["step"], r["loss"], r["learning_rate"]) for r in records(resumed, "loss")] == \
        [(r["step"], r["loss"], r["learning_rate"]) for r in after]
    again = load_file(resumed / "model.safetensors")
    for name, tensor in final.items():
        assert torch.equal(tensor, again[name]), name
    for rank in (0, 1):  # every process continues its own random stream exactly
        assert records(resumed, "rng", f"rng-{rank}.jsonl") == \
            [r for r in records(out, "rng", f"rng-{rank}.jsonl") if r["step"] > 2]


@pytest.mark.slow  # ~1 min: builds DeepSpeed's CPU Adam (CI runs the slow tests too)
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_bf16_with_offload_uses_deepspeeds_cpu_adam(tiny_model_dir, data, fp32_single, tmp_path, stage):
    out = tmp_path / stage
    launch(f"launch/accelerate/deepspeed_{stage}_offload.yaml",
           train_args(tiny_model_dir, data, out, tmp_path / "cache", **RUN, mixed_precision="bf16"))
    assert "optimizer DeepSpeedCPUAdam (DeepSpeed offload: states and step in CPU memory)" in \
        (out / "train.log").read_text()
    assert_close_to_fp32(out, fp32_single)
    assert_full_precision_masters(out, assert_float32_model(out), deepspeed=True)


def test_bf16_agrees_with_fp32_within_the_stated_tolerance(tiny_model_dir, data, tmp_path):
    common = dict(max_steps=12, per_device_train_batch_size=4, learning_rate=5e-3, warmup_steps=2,
                  eval_split_name="none", test_split_name="none")
    runs = {}
    for precision in ("no", "bf16"):
        out = tmp_path / precision
        assert train_main.main(train_args(tiny_model_dir, data, out, tmp_path / "c", **common,
                                          mixed_precision=precision)) == 0
        runs[precision] = (records(out, "loss"), load_file(out / "model.safetensors"))
    (fp32, w32), (bf16, w16) = runs["no"], runs["bf16"]
    assert [r["loss"] for r in bf16] != [r["loss"] for r in fp32]  # bf16 really ran
    for a, b in zip(bf16, fp32, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=LOSS_RTOL), a["step"]
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    update = torch.sqrt(sum(((w32[k] - start[k]) ** 2).sum() for k in w32))
    difference = torch.sqrt(sum(((w32[k] - w16[k]) ** 2).sum() for k in w32))
    assert difference / update < UPDATE_RTOL


def test_save_dtype_makes_a_smaller_final_model_and_keeps_float32_checkpoints(tiny_model_dir, data, tmp_path):
    from transformers import WhisperForConditionalGeneration

    out = tmp_path / "run"
    assert train_main.main(train_args(tiny_model_dir, data, out, tmp_path / "c", max_steps=2, save_steps=2,
                                      eval_split_name="none", test_split_name="none", mixed_precision="bf16",
                                      save_dtype="bfloat16")) == 0
    final = load_file(out / "model.safetensors")
    assert {t.dtype for t in final.values()} == {torch.bfloat16}
    assert WhisperForConditionalGeneration.from_pretrained(out).dtype == torch.bfloat16
    masters = assert_float32_model(out / "checkpoint-2")
    assert set(final) == set(masters)  # the tied output projection is saved once, as in float32
    assert all(torch.equal(final[k], masters[k].to(torch.bfloat16)) for k in final)


# --------------------------------------------------------------------------------------------
# fp16: skipped steps
# --------------------------------------------------------------------------------------------

# accelerate runs fp16 only on GPUs. This runs its GPU code path on the CPU: torch's CPU
# autocast to float16 and a CPU GradScaler, built as accelerate builds them on a GPU. The
# initial scale 2**20 overflows fp16 gradients for the first few steps, which the scaler skips.
FP16_ON_CPU = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
import torch
import train_loop.main as main
import train_loop.training.setup as setup
build = setup.build_accelerator
def fp16_as_on_a_gpu(config):
    accelerator = build(config)
    accelerator.state._mixed_precision = "fp16"
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 20)
    return accelerator
setup.build_accelerator = fp16_as_on_a_gpu
sys.exit(main.main(sys.argv[1:]))
"""


def _run_fp16(script, args):
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


@pytest.mark.parametrize("optim", ["adamw_fused", pytest.param("adamw", marks=pytest.mark.slow)])
def test_fp16_skipped_steps_are_counted_and_resume_stays_exact(tiny_model_dir, data, tmp_path, optim):
    """A fused AdamW is called even when its kernel skips the update, so accelerate's own
    step_was_skipped says False there (accelerate#4242); the count must be right for both."""
    flags = dict(max_steps=8, per_device_train_batch_size=2, learning_rate=5e-3, warmup_steps=1,
                 save_steps=1, eval_steps=0, eval_split_name="none", test_split_name="none", optim=optim)
    out = tmp_path / "run"
    log = _run_fp16(FP16_ON_CPU, train_args(tiny_model_dir, data, out, tmp_path / "c", **flags))
    rows = records(out, "loss")
    skipped = [r["skipped_steps"] for r in rows]
    assert skipped[0] == 1 and skipped[-1] >= 2 and skipped == sorted(skipped)
    assert skipped[-1] < len(rows), "training must recover once the scale has come down"
    scales = [r["loss_scale"] for r in rows]
    assert scales[0] == 2.0 ** 19 and scales == sorted(scales, reverse=True)  # halved at each skip
    assert "| skipped steps 1 | loss scale 524288" in log
    assert all(r["grad_norm"] is None for r in rows[:skipped[0]])  # inf/NaN: null in valid JSON

    # A skipped step consumes its batch and its learning rate: the schedule is that of step N.
    fp32 = tmp_path / "fp32"
    assert train_main.main(train_args(tiny_model_dir, data, fp32, tmp_path / "c",
                                      **{**flags, "mixed_precision": "no"})) == 0
    assert [r["learning_rate"] for r in rows] == [r["learning_rate"] for r in records(fp32, "loss")]
    # Checkpoints due while updates were skipped wait for the first applied update.
    first_applied = skipped[-1] + 1
    saved = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert saved == list(range(first_applied, 9))

    # Resuming continues the step count (skipped steps included), the scaler's lowered scale
    # and the count of skipped steps exactly.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / f"checkpoint-{first_applied}", resumed / f"checkpoint-{first_applied}")
    _run_fp16(FP16_ON_CPU, train_args(tiny_model_dir, data, resumed, tmp_path / "c", **flags,
                                      resume_from="latest"))
    keys = ("step", "loss", "learning_rate", "skipped_steps", "loss_scale")
    assert [tuple(r[k] for k in keys) for r in records(resumed, "loss")] == \
        [tuple(r[k] for k in keys) for r in rows if r["step"] > first_applied]
    final, again = load_file(out / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(torch.equal(final[k], again[k]) for k in final)


def test_fp16_without_a_gpu_is_a_clear_error(tiny_model_dir, data, tmp_path):
    result = subprocess.run([sys.executable, "-m", "train_loop.main",
                             *train_args(tiny_model_dir, data, tmp_path / "o", tmp_path / "c", mixed_precision="fp16")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: --mixed_precision fp16 needs a GPU" in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 needs a CUDA GPU: on a CPU accelerate has no fp16 "
                    "autocast or loss scaler and DeepSpeed's CPU backend rejects fp16 (the CPU path is "
                    "tested above with the GPU code path on CPU kernels)")
@pytest.mark.parametrize("layout", ["single", "zero2"])
def test_fp16_on_a_gpu(tiny_model_dir, data, tmp_path, layout):
    out = tmp_path / layout
    args = train_args(tiny_model_dir, data, out, tmp_path / "c", **RUN, mixed_precision="fp16")
    if layout == "single":
        assert train_main.main(args) == 0
    else:
        launch("launch/accelerate/deepspeed_zero2.yaml", args, processes=1)
    rows = records(out, "loss")
    assert all("loss_scale" in r and "skipped_steps" in r for r in rows)
    assert_float32_model(out)
