"""Synthetic speech-like clips for benchmarks: many rows quickly, no espeak-ng needed.

Timing needs realistic *shapes* and *formats*, not intelligible audio: clips are modulated
tones of 1-5 s (Common Voice's typical range), stored as Common Voice ships them (MP3 at
48 kHz, so decoding and resampling cost what they cost on the real data) or as 16 kHz WAV,
with Belarusian sentences from the demo's vocabulary, in audiofolder layout.
"""

from __future__ import annotations

import csv
import os
import random

import numpy as np
import soundfile as sf

from ..demo import sentences


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
    texts = [t for split in sentences(seed).values() for t in split]
    for split, count in rows.items():
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
