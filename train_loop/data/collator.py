"""Batch examples: pad log-mel features to the model's window and labels with -100.

Labels keep Whisper's prefix (<|be|><|transcribe|><|notimestamps|>) so the model learns to
emit it, but not the decoder-start token <|startoftranscript|>: that token is the first
decoder input, never a prediction target. Decoder inputs are the labels shifted right behind
the start token, built here (in DataLoader workers) rather than in the training step.
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
        targets = [self._targets(ex["labels"]) for ex in examples]
        length = max(len(t) for t in targets)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        decoder_input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        for row, target in enumerate(targets):
            labels[row, : len(target)] = torch.as_tensor(target)
            decoder_input_ids[row, 0] = self.decoder_start_token_id
            decoder_input_ids[row, 1 : len(target)] = torch.as_tensor(target[:-1])
        return {
            "input_features": torch.from_numpy(features),
            "labels": labels,
            "decoder_input_ids": decoder_input_ids,
            "ids": [ex["id"] for ex in examples],
            "texts": [ex["text"] for ex in examples],
        }

    def _targets(self, token_ids) -> list[int]:
        token_ids = [int(t) for t in token_ids]
        if token_ids and token_ids[0] == self.decoder_start_token_id:
            token_ids = token_ids[1:]
        return token_ids
