"""Where speech starts and ends inside a clip, so packed windows' timestamps mark speech and not
the file's leading silence (a Common Voice clip often opens with a second of it).

``silero``: Silero's voice-activity detector (the ``silero-vad`` package: MIT, ships its 2 MB
model inside the wheel, so it runs offline, on CPU, at about 1 ms per second of audio). We use
it rather than an energy threshold because Common Voice's noise floor differs per microphone,
and rather than WebRTC's VAD because that needs a compiled extension and 10/20/30 ms framing
of int16 audio. ``file``: the whole file is speech (data that is already trimmed).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .audio import SAMPLING_RATE
from .config import SPEECH_BOUNDS


class SpeechBounds:
    """``(start, end)`` in seconds of the speech in a 16 kHz waveform; None when there is none.

    The detector is loaded on first use in each process (datasets' map workers are forked)."""

    def __init__(self, method: str = "silero"):
        if method not in SPEECH_BOUNDS:
            raise ValueError(f"unknown speech-bounds method {method!r}; choose from {SPEECH_BOUNDS}")
        self.method = method
        self._model = None

    def __call__(self, waveform: np.ndarray) -> tuple[float, float] | None:
        duration = len(waveform) / SAMPLING_RATE
        if self.method == "file":
            return (0.0, duration) if duration > 0 else None
        from silero_vad import get_speech_timestamps, load_silero_vad

        if self._model is None:
            with warnings.catch_warnings():  # silero-vad 6 loads a TorchScript file: torch.jit.load's notice
                warnings.simplefilter("ignore", DeprecationWarning)
                self._model = load_silero_vad()
        with torch.no_grad():
            spans = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)),
                                          self._model, sampling_rate=SAMPLING_RATE, speech_pad_ms=30)
        if not spans:
            return None
        return spans[0]["start"] / SAMPLING_RATE, min(spans[-1]["end"] / SAMPLING_RATE, duration)

    def __getstate__(self):  # the loaded detector does not travel to worker processes
        return {"method": self.method, "_model": None}
