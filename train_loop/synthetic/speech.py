"""Generated Belarusian speech, offline, in audiofolder layout.

* ``build_dataset``: the demo's data. Sentences built from a small hand-written vocabulary
  (words with apostrophes such as сям'я, аб'ява, and with ў, й, ё), written with both ' and ’
  as in Common Voice, so the Belarusian normalizer has something to do; audio synthesized with
  espeak-ng's Belarusian voice in several variants and speeds (22.05 kHz, so the 16 kHz
  resampling path runs too), plus two broken rows (an unreadable file, an empty transcript)
  that a run must count and skip.
* ``build_tone_dataset``: many rows quickly for benchmarks, no espeak-ng needed. Timing needs
  realistic *shapes* and *formats*, not intelligible audio: modulated tones of 1-5 s (Common
  Voice's typical range), stored as Common Voice ships them (MP3 at 48 kHz, so decoding and
  resampling cost what they cost on the real data) or as 16 kHz WAV.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf

from ..core.errors import UserError

SUBJECTS = ["Мая сям'я", "Наш сабака", "Стары воўк", "Малая дзяўчынка", "Мой сябар",
            "Настаўніца", "Бабуля"]
VERBS = ["бачыць", "любіць", "шукае", "чакае", "малюе", "купляе"]
OBJECTS = ["вялікі дом", "чырвоны яблык", "новую кнігу", "цёплы хлеб", "белую хмару",
           "п'есу", "аб'яву"]
PLACES = ["у лесе", "каля ракі", "сёння ўвечары", "на двары", "у горадзе", "раніцай",
          "ля школы"]
VOICES = ["be", "be+m1", "be+m3", "be+f2", "be+f4"]
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


def build_tone_dataset(out_dir: str, rows: dict[str, int], seed: int = 0, min_seconds: float = 1.0,
                       max_seconds: float = 5.0, audio_format: str = "wav") -> str:
    """``{split}/metadata.csv`` + audio (``wav``: 16 kHz PCM; ``mp3``: 48 kHz like Common
    Voice); returns ``out_dir``. Reuses a complete earlier build."""
    marker = os.path.join(out_dir, ".complete-" + "-".join(f"{k}{v}" for k, v in sorted(rows.items()))
                          + f"-{seed}-{min_seconds}-{max_seconds}-{audio_format}")
    rate = 48000 if audio_format == "mp3" else 16000
    if os.path.exists(marker):
        return out_dir
    rng = random.Random(seed)
    pools = sentences(seed)  # each split its own sentences: none leaks into another's (data/overlap.py)
    for split, count in rows.items():
        texts = pools.get(split) or pools["train"]
        folder = os.path.join(out_dir, split)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "metadata.csv"), "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", "sentence"])
            for index in range(count):
                seconds = rng.uniform(min_seconds, max_seconds)
                name = f"{index:06d}.{audio_format}"
                tone = _tone(seconds, 120 + rng.random() * 300, rate)
                if audio_format == "mp3":
                    sf.write(os.path.join(folder, name), tone, rate, format="MP3")
                else:
                    sf.write(os.path.join(folder, name), tone, rate, subtype="PCM_16")
                writer.writerow([name, rng.choice(texts)])
    open(marker, "w").close()
    return out_dir


def _tone(seconds: float, freq: float, sampling_rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    return (0.2 * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
