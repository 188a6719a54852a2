"""From one row (audio + transcript) to model inputs, or to the reason it is skipped.

Shared by the prepared path (run once, stored on disk) and the streaming path (run in
DataLoader workers), so both see the same features, labels and filters.

Log-mel features are stored cropped: Whisper pads every clip with silence to 30 s, and every
frame after the audio ends has the same value (the clamp floor of that clip's spectrum). We
keep the frames that touch audio plus that one value, and rebuild the exact 30 s matrix in
the collator. A 5 s clip then takes 1/6 of the disk and of the worker-to-trainer traffic.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..core.text import get_normalizer
from .audio import SAMPLING_RATE, AudioDecodeError, decode_audio

# Why a row is not used. The run prints a count per reason; nothing is dropped silently.
SKIP_UNREADABLE = "unreadable audio"
SKIP_EMPTY_TEXT = "empty transcript"
SKIP_TOO_SHORT = "shorter than --min_duration_in_seconds"
SKIP_TOO_LONG = "longer than --max_duration_in_seconds"
SKIP_LABEL_TOO_LONG = "transcript longer than --max_label_length tokens"
SKIP_OVER_WINDOW = "longer than the model's input window"
SKIP_NONFINITE_FEATURES = "log-mel features not finite"


@dataclass
class SkipReport:
    """Rows read and rows skipped per reason, with a few examples of unreadable files."""

    split: str
    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    @property
    def used(self) -> int:
        return self.rows - sum(self.skipped.values())

    def add(self, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if detail and len(self.examples) < 3:
            self.examples.append(detail)

    def add_left_out(self, dropped: dict[str, list[str]]) -> None:
        """Count manifest rows left out before their audio was read (RowSource.dropped)."""
        for reason, details in dropped.items():
            self.rows += len(details)
            for detail in details:
                self.add(reason, detail)

    def merge(self, other: "SkipReport") -> None:
        self.rows += other.rows
        self.skipped.update(other.skipped)
        self.examples.extend(other.examples[: max(0, 3 - len(self.examples))])

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.split}: {self.rows:,} clips, none skipped"
        reasons = ", ".join(f"{count:,} {reason}" for reason, count in self.skipped.most_common() if count)
        text = (f"{self.split}: {self.rows:,} clips, {self.used:,} used, "
                f"{sum(self.skipped.values()):,} skipped ({reasons})")
        if self.examples:
            text += "; e.g. " + "; ".join(self.examples)
        return text


@dataclass(frozen=True)
class Filters:
    """Which clips a split keeps. Training uses all three; evaluation only the window limit."""

    min_seconds: float = 0.0
    max_seconds: float = 30.0
    max_label_tokens: int = 448

    def reason(self, duration: float, label_tokens: int) -> str:
        if duration < self.min_seconds:
            return SKIP_TOO_SHORT
        if duration > self.max_seconds:
            return SKIP_TOO_LONG
        if label_tokens > self.max_label_tokens:
            return SKIP_LABEL_TOO_LONG
        return ""


class Featurizer:
    """Decode, compute log-mel features and tokenize one row.

    Returns a dict with ``id``, ``text`` (raw transcript, the WER reference),
    ``input_features`` (n_mels x num_frames, cropped), ``pad_value``, ``labels`` (token ids,
    starting with the decoder-start token), ``label_tokens`` (tokens the model predicts),
    ``duration`` and ``skip_reason`` ("" for a usable row).
    """

    def __init__(self, feature_extractor, tokenizer, label_text: Callable[[str], str],
                 feature_dtype: str = "float32"):
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.label_text = label_text
        self.feature_dtype = np.dtype(feature_dtype)
        self.window_seconds = feature_extractor.n_samples / SAMPLING_RATE
        self.augment: Callable[[np.ndarray, int, str], np.ndarray] | None = None  # training streams: augment.Augmenter

    def num_frames(self, num_samples: int) -> int:
        """Frames whose STFT window overlaps the audio; later frames see only padding."""
        half_window = self.feature_extractor.n_fft // 2
        frames = math.ceil((num_samples + half_window) / self.feature_extractor.hop_length)
        return min(frames, self.feature_extractor.nb_max_frames)

    def log_mel(self, waveform: np.ndarray) -> tuple[np.ndarray, float]:
        full = self.feature_extractor(waveform, sampling_rate=SAMPLING_RATE,
                                      return_tensors="np").input_features[0]
        frames = self.num_frames(len(waveform))
        pad_value = float(full[0, frames]) if frames < full.shape[1] else 0.0
        return np.ascontiguousarray(full[:, :frames], dtype=self.feature_dtype), pad_value

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(self.label_text(text)).input_ids

    def __call__(self, row_id: str, audio: Any, text: str | None, epoch: int = 0) -> dict[str, Any]:
        example: dict[str, Any] = {
            "id": row_id, "text": text or "", "input_features": None, "pad_value": 0.0,
            "labels": [], "label_tokens": 0, "duration": 0.0, "skip_reason": "", "detail": "",
        }
        if not text or not text.strip():
            example["skip_reason"] = SKIP_EMPTY_TEXT
            return example
        try:
            waveform = decode_audio(audio, SAMPLING_RATE)
        except AudioDecodeError as err:
            example.update(skip_reason=SKIP_UNREADABLE, detail=str(err))
            return example
        if self.augment is not None:
            waveform = self.augment(waveform, epoch, row_id)
        labels = self.tokenize(text)
        example.update(duration=len(waveform) / SAMPLING_RATE, labels=labels,
                       label_tokens=len(labels) - 1)  # the decoder-start token is input, not target
        if example["duration"] > self.window_seconds:
            example["skip_reason"] = SKIP_OVER_WINDOW
            return example
        example["input_features"], example["pad_value"] = self.log_mel(waveform)
        if not (np.isfinite(example["input_features"]).all() and math.isfinite(example["pad_value"])):
            example.update(skip_reason=SKIP_NONFINITE_FEATURES, detail=f"{row_id}: log-mel features not finite",
                           input_features=None)
        return example


def featurizer_for(processor, data_config, eval_normalizer: str) -> Featurizer:
    """The Featurizer of a run: its processor, the label text the data flags ask for
    (``eval_normalizer`` shapes the labels only with --do_remove_punctuation), the storage dtype."""
    normalizer = get_normalizer(eval_normalizer) if data_config.do_remove_punctuation else None
    return Featurizer(processor.feature_extractor, processor.tokenizer,
                      label_text=LabelText(data_config.do_lower_case, normalizer),
                      feature_dtype=data_config.prepared_feature_dtype)


def prepare_label_text(text: str, do_lower_case: bool, normalizer: Callable[[str], str] | None) -> str:
    """The transcript the model is trained to produce: raw by default (cased, punctuated)."""
    text = text.strip()
    if normalizer is not None:
        text = normalizer(text)
    if do_lower_case:
        text = text.lower()
    return text


class LabelText:
    """``prepare_label_text`` with the run's settings, picklable for the preparing processes."""

    def __init__(self, lower: bool, normalizer):
        self.lower, self.normalizer = lower, normalizer

    def __call__(self, text: str) -> str:
        return prepare_label_text(text, self.lower, self.normalizer)


def expand_features(features: np.ndarray, pad_value: float, total_frames: int) -> np.ndarray:
    """Rebuild the full (n_mels x total_frames) matrix from cropped features."""
    n_mels, frames = features.shape
    full = np.full((n_mels, total_frames), pad_value, dtype=np.float32)
    full[:, :frames] = features
    return full
