"""Synthetic speech-like clips for benchmarks: many rows quickly, no espeak-ng needed.

Timing needs realistic *shapes* (clip lengths, transcript lengths), not intelligible audio.
Clips are modulated tones of 1-5 s (Common Voice's typical range) with Belarusian sentences
from the demo's vocabulary, in audiofolder layout.
"""

from __future__ import annotations

import csv
import os
import random

import numpy as np
import soundfile as sf

from ..demo import sentences


def build_tone_dataset(out_dir: str, rows: dict[str, int], seed: int = 0,
                       min_seconds: float = 1.0, max_seconds: float = 5.0) -> str:
    """``{split}/metadata.csv`` + wavs; returns ``out_dir``. Reuses a complete earlier build."""
    marker = os.path.join(out_dir, ".complete-" + "-".join(f"{k}{v}" for k, v in sorted(rows.items()))
                          + f"-{seed}-{min_seconds}-{max_seconds}")
    if os.path.exists(marker):
        return out_dir
    rng = random.Random(seed)
    texts = [t for split in sentences(seed).values() for t in split]
    for split, count in rows.items():
        folder = os.path.join(out_dir, split)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "metadata.csv"), "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", "sentence"])
            for index in range(count):
                seconds = rng.uniform(min_seconds, max_seconds)
                name = f"{index:06d}.wav"
                sf.write(os.path.join(folder, name), _tone(seconds, 120 + rng.random() * 300), 16000,
                         subtype="PCM_16")
                writer.writerow([name, rng.choice(texts)])
    open(marker, "w").close()
    return out_dir


def _tone(seconds: float, freq: float, sampling_rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    return (0.2 * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
