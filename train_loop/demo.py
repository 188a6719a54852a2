"""The embedded demo: fine-tune a tiny Whisper on a small Belarusian dataset, on CPU, in minutes.

    python -m train_loop.demo                 # data + model + training + WER table
    python -m train_loop.demo --help

Everything comes from this project, offline: Belarusian sentences synthesized with espeak-ng,
with two broken rows the run must count and skip (``synthetic/speech.py``), and a tiny random
Whisper with the real multilingual tokenizer and a 4 s input window (``synthetic/models.py``).
It then runs the ordinary training command (``python -m train_loop.main``) on that data, the way
this project fine-tunes: packed windows (``--pack_to_window``; the 4 s window mostly holds one
clip), half of them with timestamps, a few without speech. It
prints the WER table: before fine-tuning (step 0), during, and on the held-out test split, with
a long-form row (recordings of validation clips decoded sequentially). Then, as a user would, it
joins test clips into one long file, transcribes it to SRT with ``python -m train_loop.transcribe``
and prints the cues and that file's WER.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass

from .core.console import run_tool
from .core.flags import at_least, flag, parse_sections

# The tiny model at lr 3e-3 turns last-bit differences between CPU code paths (AVX2 or AVX-512
# kernels in torch and oneDNN, MKL's per-CPU branches, the thread count) into different WERs.
# Pinned, the demo prints the same table on every x86-64 machine with AVX2.
PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
                  "OMP_NUM_THREADS": "2"}


def training_args(data_dir: str, model_dir: str, output_dir: str, steps: int, cache_dir: str) -> list[str]:
    return [
        "--model_name_or_path", model_dir, "--data_dir", data_dir, "--output_dir", output_dir,
        "--cache_dir", cache_dir, "--language", "be", "--task", "transcribe",
        "--max_steps", str(steps), "--per_device_train_batch_size", "16",
        "--learning_rate", "3e-3", "--warmup_steps", str(max(1, steps // 10)),
        "--lr_scheduler_type", "linear", "--weight_decay", "0.01",
        "--logging_steps", "10", "--eval_steps", str(steps // 2), "--save_steps", str(steps // 2),
        "--save_total_limit", "1", "--eval_at_start", "--per_device_eval_batch_size", "40",
        "--generation_max_length", "40", "--preprocessing_num_workers", "2",
        "--dataloader_num_workers", "1", "--max_duration_in_seconds", "4",
        "--load_best_model_at_end", "--seed", "0", "--deterministic",
        # How this project fine-tunes (README, "Packed windows"): timestamps and silence. No previous
        # text here: on this tiny CPU model a prompt doubles the decoder's length, and with it the
        # step time (the logits over the whole vocabulary dominate); the recipes keep 0.2.
        "--pack_to_window", "--prev_text_probability", "0",
        "--eval_long_form", "--long_form_minutes", "0.65", "--long_form_recordings", "2",
    ]


@dataclass
class DemoConfig:
    """Where the demo works, and how long it trains."""
    _argument_group_name = "The demo (demo)"

    output_dir: str = flag("runs/demo", "Where data, model and run go.")
    steps: int = flag(800, "Optimizer steps (on packed windows with timestamps the tiny random model needs "
                      "about 600 to line its words up with speech at random offsets).", check=at_least(2))


def main(argv: list[str] | None = None) -> int:
    def body():
        options = parse_sections({"demo": DemoConfig}, argv, prog="train_loop.demo",
                                 description=__doc__.split("\n\n")[0])["demo"]
        if platform.machine().lower() in ("x86_64", "amd64") and any(
                os.environ.get(name) != value for name, value in PINNED_KERNELS.items()):
            if "torch" in sys.modules:  # too late to pin in this process: run the demo in a fresh one
                return subprocess.call([sys.executable, "-m", "train_loop.demo",
                                        *(sys.argv[1:] if argv is None else argv)], env={**os.environ, **PINNED_KERNELS})
            os.environ.update(PINNED_KERNELS)  # before torch loads: here and in the training process
        return run_demo(options)

    return run_tool(body)


def run_demo(options: DemoConfig) -> int:
    from .synthetic.models import build_tiny_whisper
    from .synthetic.speech import build_dataset

    data_dir = build_dataset(os.path.join(options.output_dir, "data"))
    model_dir = os.path.join(options.output_dir, "tiny-whisper")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        build_tiny_whisper(model_dir, chunk_length=4, d_model=128, layers=2, heads=4)
    run_dir = os.path.join(options.output_dir, "run")
    if os.path.exists(run_dir):  # a demo always trains from scratch; data and model are reused
        shutil.rmtree(run_dir)
    train_args = training_args(data_dir, model_dir, run_dir, options.steps,
                               os.path.join(options.output_dir, "cache"))
    print("python -m train_loop.main " + " ".join(train_args), flush=True)
    code = subprocess.call([sys.executable, "-m", "train_loop.main", *train_args])
    if code != 0:
        return code
    return transcribe_long_recording(data_dir, run_dir, options.output_dir)


def transcribe_long_recording(data_dir: str, run_dir: str, output_dir: str, seconds: float = 39.0) -> int:
    """Join test clips (0.5 s apart) into one file of about ``seconds``, transcribe it to SRT with
    ``train_loop.transcribe`` and print the cues and the file's WER: what a fine-tuned model does
    with a recording longer than its window."""
    import csv

    import numpy as np
    import soundfile as sf

    from .core.text import get_normalizer
    from .data.audio import SAMPLING_RATE, decode_audio
    from .evaluation.metrics import error_rates

    audio, texts = [], []
    with open(os.path.join(data_dir, "test", "metadata.csv"), encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            audio += [decode_audio(os.path.join(data_dir, "test", row["file_name"]), SAMPLING_RATE),
                      np.zeros(SAMPLING_RATE // 2, dtype=np.float32)]
            texts.append(row["sentence"])
            if sum(len(part) for part in audio) >= seconds * SAMPLING_RATE:
                break
    folder = os.path.join(output_dir, "long-form")
    os.makedirs(folder, exist_ok=True)
    recording = os.path.join(folder, "test-clips.wav")
    sf.write(recording, np.concatenate(audio), SAMPLING_RATE)
    reference = " ".join(texts)
    with open(os.path.join(folder, "test-clips.reference.txt"), "w", encoding="utf-8") as handle:
        handle.write(reference + "\n")
    command = [sys.executable, "-m", "train_loop.transcribe", "--model", run_dir, "--format", "srt",
               "--output_dir", folder, recording]
    print("\n" + " ".join(["python", *command[1:]]), flush=True)
    code = subprocess.call(command)
    if code != 0:
        return code
    srt_path = os.path.splitext(os.path.join(folder, os.path.basename(recording)))[0] + ".srt"
    with open(srt_path, encoding="utf-8") as handle:
        cues = [block.splitlines() for block in handle.read().strip().split("\n\n") if block.strip()]
    hypothesis = " ".join(" ".join(cue[2:]) for cue in cues)
    wer = error_rates([reference], [hypothesis], get_normalizer("belarusian"))["wer"]
    duration = sum(len(part) for part in audio) / SAMPLING_RATE
    print(f"long-form: {len(texts)} test clips in one {duration:.0f} s file -> {len(cues)} SRT cues "
          f"({srt_path}); WER {wer:.2f}%")
    for cue in cues[:4]:
        print(f"  {cue[1]}  {' '.join(cue[2:])}")
    if len(cues) > 4:
        print(f"  ... ({len(cues) - 4} more)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
