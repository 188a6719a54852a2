"""The embedded demo: fine-tune a tiny Whisper on a small Belarusian dataset, on CPU, in minutes.

    python -m train_loop.demo                 # data + model + training + WER table
    python -m train_loop.demo --help

Everything comes from this project, offline:
* sentences: built here from a small hand-written Belarusian vocabulary (words with
  apostrophes such as сям'я, аб'ява, and with ў, й, ё), written with both ' and ’ as in
  Common Voice, so the Belarusian normalizer has something to do;
* audio: synthesized with espeak-ng's Belarusian voice in several voice variants and
  speeds (22.05 kHz, so the 16 kHz resampling path runs too), plus two deliberately broken
  rows (an unreadable file, an empty transcript) that the run must count and skip;
* model: a tiny random Whisper with the real multilingual tokenizer and a 4 s input window.

It then runs the ordinary training entry point (``train_loop.main``) on that data and prints
the WER table: before fine-tuning (step 0), during, and on the held-out test split.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from .errors import UserError

SUBJECTS = ["Мая сям'я", "Наш сабака", "Стары воўк", "Малая дзяўчынка", "Мой сябар",
            "Настаўніца", "Бабуля"]
VERBS = ["бачыць", "любіць", "шукае", "чакае", "малюе", "купляе"]
OBJECTS = ["вялікі дом", "чырвоны яблык", "новую кнігу", "цёплы хлеб", "белую хмару",
           "п'есу", "аб'яву"]
PLACES = ["у лесе", "каля ракі", "сёння ўвечары", "на двары", "у горадзе", "раніцай",
          "ля школы"]
VOICES = ["be", "be+m1", "be+m3", "be+f2", "be+f4"]
# The tiny model at lr 3e-3 turns last-bit differences between CPU code paths (AVX2 or AVX-512
# kernels in torch and oneDNN, MKL's per-CPU branches, the thread count) into different WERs.
# Pinned, the demo prints the same table on every x86-64 machine with AVX2.
PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
                  "OMP_NUM_THREADS": "2"}
SPLITS = {"train": 400, "validation": 40, "test": 40}


def sentences(seed: int = 0) -> dict[str, list[str]]:
    """Disjoint train/validation/test sentences (raw text: cased, punctuated)."""
    rng = random.Random(seed)
    every = [(s, v, o, p) for s in SUBJECTS for v in VERBS for o in OBJECTS for p in PLACES]
    rng.shuffle(every)
    out, start = {}, 0
    for split, count in SPLITS.items():
        chosen = every[start : start + count]
        start += count
        out[split] = [_write(parts, rng) for parts in chosen]
    return out


def _write(parts: tuple[str, ...], rng: random.Random) -> str:
    text = " ".join(parts) + rng.choice([".", ".", "!", "?"])
    # Common Voice mixes apostrophe characters; the transcript keeps whichever was typed.
    return text.replace("'", "\u2019") if rng.random() < 0.3 else text


def synthesize(text: str, path: str, voice: str, speed: int) -> None:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", path, text],
                   check=True, capture_output=True)


def build_dataset(out_dir: str, seed: int = 0) -> str:
    """Write the demo dataset in audiofolder layout; reuse it if it is already complete."""
    marker = os.path.join(out_dir, ".complete")
    if os.path.exists(marker):
        return out_dir
    if shutil.which("espeak-ng") is None:
        raise UserError("the demo synthesizes its audio with espeak-ng, which is not installed; "
                        "run `apt-get install -y espeak-ng` (scripts/setup.sh does)")
    rng = random.Random(seed)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".demo-data-", dir=parent)
    jobs = []
    for split, texts in sentences(seed).items():
        os.makedirs(os.path.join(staging, split))
        rows = []
        for index, text in enumerate(texts):
            name = f"{split}-{index:04d}.wav"
            jobs.append((text, os.path.join(staging, split, name), rng.choice(VOICES), rng.randint(140, 190)))
            rows.append((name, text))
        if split == "train":  # rows a real dataset has: the run must skip and count them
            with open(os.path.join(staging, split, "broken.wav"), "wb") as handle:
                handle.write(b"RIFF\x00\x00\x00\x00WAVEjunk")
            rows.append(("broken.wav", "Гэты файл сапсаваны."))
            jobs.append(("Тут няма подпісу.", os.path.join(staging, split, "untranscribed.wav"), "be", 170))
            rows.append(("untranscribed.wav", ""))
        with open(os.path.join(staging, split, "metadata.csv"), "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", "sentence"])
            writer.writerows(rows)
    print(f"synthesizing {len(jobs)} clips with espeak-ng ...", flush=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda job: synthesize(*job), jobs))
    open(os.path.join(staging, ".complete"), "w").close()
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    return out_dir


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
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train_loop.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="runs/demo", help="Where data, model and run go (default: runs/demo).")
    parser.add_argument("--steps", type=int, default=400, help="Optimizer steps (default: 400).")
    args = parser.parse_args(argv)
    if platform.machine().lower() in ("x86_64", "amd64") and any(
            os.environ.get(name) != value for name, value in PINNED_KERNELS.items()):
        if "torch" in sys.modules:  # too late to pin in this process: run the demo in a fresh one
            return subprocess.call([sys.executable, "-m", "train_loop.demo", *(sys.argv[1:] if argv is None else argv)],
                                   env={**os.environ, **PINNED_KERNELS})
        os.environ.update(PINNED_KERNELS)
    from .model import build_tiny_whisper
    from . import main as train_main

    try:
        data_dir = build_dataset(os.path.join(args.output_dir, "data"))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model_dir = os.path.join(args.output_dir, "tiny-whisper")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        build_tiny_whisper(model_dir, chunk_length=4, d_model=128, layers=2, heads=4)
    run_dir = os.path.join(args.output_dir, "run")
    if os.path.exists(run_dir):  # a demo always trains from scratch; data and model are reused
        shutil.rmtree(run_dir)
    train_args = training_args(data_dir, model_dir, run_dir, args.steps,
                               os.path.join(args.output_dir, "cache"))
    print("python -m train_loop.main " + " ".join(train_args), flush=True)
    return train_main.main(train_args)


if __name__ == "__main__":
    sys.exit(main())
