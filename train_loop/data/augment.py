"""Audio augmentation whose every draw is a pure function of (seed, epoch, example id).

A resumed run, a run on more processes and a DataLoader worker that was restarted all produce the
same augmented audio for the same example of the same epoch: ``Augmenter.draw`` seeds its own
generator from the three numbers and never touches a global random state. (audiomentations draws
from Python's and numpy's global generators, which a DataLoader worker shares across examples in
an order that depends on the workers; hence these few lines of numpy, and soxr for the resampling.)

* speed: the waveform is resampled as if it had been recorded at ``speed`` x 16 kHz (Kaldi's speed
  perturbation: tempo and pitch change together), so a clip of ``d`` seconds lasts ``d / speed``;
* gain: ``gain_db`` decibels;
* noise: a random stretch of a random file of ``--noise_dir`` (looped when shorter) at a random
  signal-to-noise ratio, for ``--noise_probability`` of the examples.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..core.errors import UserError
from .audio import SAMPLING_RATE, AudioDecodeError, decode_audio

NOISE_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus")


def parse_values(flag_name: str, text: str | None) -> tuple[float, ...]:
    """'0.9,1.1' -> (0.9, 1.1); None or '' -> ()."""
    if not text:
        return ()
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{flag_name} {text}: expected numbers separated by commas, e.g. 0.9,1.1") from None


@dataclass(frozen=True)
class Draw:
    """What happens to one example."""

    speed: float = 1.0
    gain_db: float = 0.0
    noise_file: int = -1  # index into the noise files; -1: no noise
    noise_start: float = 0.0  # where in the noise file, as a share of its length
    snr_db: float = 0.0


class Augmenter:
    """The run's augmentation settings; picklable, so DataLoader workers get a copy."""

    def __init__(self, seed: int, speeds: tuple[float, ...] = (), gain_db: tuple[float, ...] = (),
                 noise_dir: str | None = None, snr_db: tuple[float, ...] = (5.0, 30.0),
                 noise_probability: float = 0.0):
        self.seed, self.speeds, self.gain_db, self.snr_db = seed, speeds, gain_db, snr_db
        self.noise_probability = noise_probability if noise_dir else 0.0
        self.noise_files = noise_files(noise_dir) if noise_dir else []

    def __bool__(self) -> bool:
        return bool(self.speeds or self.gain_db or self.noise_files)

    def draw(self, epoch: int, example_id: str) -> Draw:
        key = int.from_bytes(hashlib.sha256(example_id.encode("utf-8")).digest()[:8], "little")
        rng = np.random.default_rng([self.seed, epoch, key])
        speed = _pick(rng, self.speeds, 1.0)
        gain = _pick(rng, self.gain_db, 0.0)
        noisy = bool(self.noise_files) and rng.random() < self.noise_probability
        # Every draw is made whether used or not, so one setting does not shift another's numbers.
        noise_file, noise_start, snr = int(rng.integers(max(1, len(self.noise_files)))), rng.random(), \
            _pick(rng, self.snr_db, 0.0)
        return Draw(speed, gain, noise_file if noisy else -1, noise_start, snr)

    def apply(self, waveform: np.ndarray, draw: Draw) -> np.ndarray:
        if draw.speed != 1.0:
            waveform = change_speed(waveform, draw.speed)
        if draw.gain_db:
            waveform = waveform * np.float32(10 ** (draw.gain_db / 20))
        if draw.noise_file >= 0 and len(waveform):
            waveform = add_noise(waveform, _noise(self.noise_files[draw.noise_file]), draw.noise_start, draw.snr_db)
        return np.clip(waveform, -1.0, 1.0).astype(np.float32, copy=False)

    def __call__(self, waveform: np.ndarray, epoch: int, example_id: str) -> np.ndarray:
        return self.apply(waveform, self.draw(epoch, example_id))


def augmenter_for(config, seed: int) -> Augmenter | None:
    """The run's Augmenter from its AugmentConfig (``--speed_perturbation`` ...), None when off."""
    if not config.active():
        return None
    speeds = parse_values("--speed_perturbation", config.speed_perturbation)
    if any(not 0.5 <= speed <= 2.0 for speed in speeds):
        raise UserError(f"--speed_perturbation {config.speed_perturbation}: factors must be between 0.5 and 2 "
                        "(e.g. 0.9,1.1)")
    snr = parse_values("--noise_snr_db", config.noise_snr_db)
    if config.noise_dir and not snr:
        raise UserError("--noise_snr_db: give a range such as 5,30")
    return Augmenter(seed, speeds, parse_values("--gain_db", config.gain_db), config.noise_dir, snr,
                     config.noise_probability)


def _pick(rng: np.random.Generator, values: tuple[float, ...], default: float) -> float:
    """Two values: a uniform draw between them; three or more: one of them; none: ``default``.
    A draw is made in every case, so the stream of numbers does not depend on the settings."""
    u = rng.random()
    if not values:
        return default
    if len(values) == 1:
        return values[0]
    if len(values) == 2:
        return float(values[0] + u * (values[1] - values[0]))
    return float(values[min(len(values) - 1, int(u * len(values)))])


def change_speed(waveform: np.ndarray, speed: float) -> np.ndarray:
    import soxr

    return soxr.resample(waveform, SAMPLING_RATE * speed, SAMPLING_RATE, quality="HQ").astype(np.float32)


def add_noise(waveform: np.ndarray, noise: np.ndarray, start: float, snr_db: float) -> np.ndarray:
    """``waveform`` plus ``noise`` (from ``start`` x its length, looped) at ``snr_db``."""
    if not len(noise):
        return waveform
    offset = int(start * len(noise))
    reps = int(np.ceil((offset + len(waveform)) / len(noise)))
    stretch = np.tile(noise, reps)[offset : offset + len(waveform)]
    signal_power = float(np.mean(waveform.astype(np.float64) ** 2))
    noise_power = float(np.mean(stretch.astype(np.float64) ** 2))
    if signal_power <= 0 or noise_power <= 0:
        return waveform
    scale = np.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
    return waveform + (scale * stretch).astype(np.float32)


def noise_files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise UserError(f"--noise_dir {folder}: no such folder")
    found = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if name.lower().endswith(NOISE_EXTENSIONS))
    import soundfile

    for path in found:  # a broken file is named now, not in a worker hours into the run
        try:
            soundfile.info(path)
        except Exception as err:
            raise UserError(f"--noise_dir: {path} cannot be read ({str(err).strip() or type(err).__name__}); remove "
                            "it from the folder") from None
    if not found:
        raise UserError(f"--noise_dir {folder} holds no audio ({', '.join(NOISE_EXTENSIONS)}); point it at a folder "
                        "of noise recordings (e.g. MUSAN's noise/)")
    return found


@lru_cache(maxsize=8)  # per worker: a few decoded noise files, not the whole folder
def _noise(path: str) -> np.ndarray:
    try:
        return decode_audio(path, SAMPLING_RATE)
    except AudioDecodeError as err:
        raise UserError(f"--noise_dir: {path} cannot be decoded ({err}); remove it from the folder") from None
