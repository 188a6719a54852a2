"""Batch examples: pad log-mel features to the model's window and labels with -100.

An example's ``labels`` is its whole decoder sequence: ``<|startoftranscript|>`` and Whisper's
prefix (<|be|><|transcribe|><|notimestamps|>), the text, ``<|endoftext|>``; a packed window may
open with ``<|startofprev|>`` and the previous text. The decoder reads the sequence without its
last token and predicts it shifted by one. Nothing up to ``<|startoftranscript|>`` is a target:
neither the start token nor the prompt before it (the model is conditioned on the previous
text, not trained to produce it). The prefix is a target, so the model learns to emit it. This
is built here, in DataLoader workers, rather than in the training step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .features import expand_features

IGNORE_INDEX = -100  # positions the loss skips


@dataclass
class SpeechCollator:
    decoder_start_token_id: int
    pad_token_id: int
    total_frames: int  # the model's input length in frames (3000 for 30 s)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        features = np.stack([
            expand_features(np.asarray(ex["input_features"]), ex["pad_value"], self.total_frames)
            for ex in examples])
        sequences = [self._sequence(ex["labels"]) for ex in examples]
        length = max(len(sequence) - 1 for sequence in sequences)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        decoder_input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            start = sequence.index(self.decoder_start_token_id)
            decoder_input_ids[row, : len(sequence) - 1] = torch.as_tensor(sequence[:-1])
            labels[row, start : len(sequence) - 1] = torch.as_tensor(sequence[start + 1 :])
        return {
            "input_features": torch.from_numpy(features),
            "labels": labels,
            "decoder_input_ids": decoder_input_ids,
            "ids": [ex["id"] for ex in examples],
            "texts": [ex["text"] for ex in examples],
            # Seconds of clip audio in the batch (padding, gaps and no-speech windows excluded).
            "audio_seconds": float(sum(ex.get("audio_seconds", ex.get("duration", 0.0)) for ex in examples)),
        }

    def _sequence(self, token_ids) -> list[int]:
        sequence = [int(t) for t in token_ids]
        if self.decoder_start_token_id not in sequence:
            sequence.insert(0, self.decoder_start_token_id)
        return sequence
