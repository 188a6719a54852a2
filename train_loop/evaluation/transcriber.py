"""Whisper in transformers transcribing waveforms: batches of short clips (up to the model's
window) and Whisper's sequential long-form decoding beyond it (transformers' implementation of
OpenAI's algorithm: each window starts where the last complete segment ended, so no word is cut
at a window edge). ``python -m train_loop.transcribe`` and the app use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.errors import UserError
from ..core.model import decoding_language, refuse_adapters_only


@dataclass
class Transcript:
    path: str
    text: str
    segments: list[dict[str, Any]]  # {"start", "end", "text"} in seconds
    duration: float


class Transcriber:
    """A Whisper model and its processor, transcribing waveforms in batches (short-form up to the
    window, sequential long-form beyond it)."""

    def __init__(self, model_path: str, language: str | None, task: str, num_beams: int = 1,
                 device: str = "auto", max_new_tokens: int = 440):
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        refuse_adapters_only(model_path, "--model")
        try:
            self.processor = WhisperProcessor.from_pretrained(model_path)
            self.device = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available())
                                       else "cpu")
            dtype = torch.float16 if self.device.type == "cuda" else torch.float32
            self.model = WhisperForConditionalGeneration.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        except Exception as err:  # a missing folder, a Hub id offline, a folder without weights
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"--model {model_path}: cannot load a Whisper model and processor there "
                            f"({reason})") from None
        self.dtype = dtype
        self.language = decoding_language(self.model.generation_config, language)
        if self.language:
            try:  # the tokenizer knows Whisper's languages by code and by name
                self.processor.tokenizer.set_prefix_tokens(language=self.language, task=task)
            except ValueError:
                raise UserError(f"--language {language}: not a language Whisper has a token for; use its code "
                                "(e.g. be, uk, en) or name (e.g. belarusian)") from None
        self.task = task
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        extractor = self.processor.feature_extractor
        self.sampling_rate = extractor.sampling_rate
        self.window_seconds = extractor.n_samples / extractor.sampling_rate

    def __call__(self, waveforms: list, timestamps: bool = True) -> list[tuple[str, list[dict[str, Any]]]]:
        """(text, segments) per waveform; see ``decode_waveforms``."""
        return decode_waveforms(self.model, self.processor, waveforms, language=self.language, task=self.task,
                                num_beams=self.num_beams, max_new_tokens=self.max_new_tokens, device=self.device,
                                dtype=self.dtype, timestamps=timestamps)


def decode_waveforms(model, processor, waveforms: list, *, language: str | None, task: str, num_beams: int,
                     max_new_tokens: int, device, dtype, timestamps: bool = True,
                     autocast=None) -> list[tuple[str, list[dict[str, Any]]]]:
    """(text, segments) per waveform; all of one batch are short (<= window) or all long.
    Long audio always decodes with timestamps (they say where the next window starts); short
    audio without them is decoded exactly as training evaluated it. The transcriber and the
    long-form evaluation during training both decode through here."""
    import contextlib

    import torch

    extractor = processor.feature_extractor
    long_form = any(len(w) > extractor.n_samples for w in waveforms)
    timestamps = timestamps or long_form
    inputs = extractor(waveforms, sampling_rate=extractor.sampling_rate, return_tensors="pt",
                       return_attention_mask=True, **({"truncation": False, "padding": "longest"} if long_form else {}))
    kwargs: dict[str, Any] = {"task": task, "num_beams": num_beams, "return_timestamps": timestamps,
                              "max_new_tokens": max_new_tokens}
    if timestamps:
        kwargs.update(return_segments=True, condition_on_prev_tokens=False)
    if language:
        kwargs["language"] = language
    if long_form:
        kwargs["attention_mask"] = inputs["attention_mask"].to(device)
    with torch.no_grad(), (autocast or contextlib.nullcontext()):
        out = model.generate(inputs["input_features"].to(device, dtype), **kwargs)
    return [_segments(processor.tokenizer, out, index, len(waveform) / extractor.sampling_rate)
            for index, waveform in enumerate(waveforms)]


def _segments(tokenizer, out, index: int, duration: float) -> tuple[str, list[dict[str, Any]]]:
    segments = []
    for segment in (out["segments"][index] if isinstance(out, dict) and "segments" in out else []):
        text = tokenizer.decode(segment["tokens"], skip_special_tokens=True).strip()
        start = float(segment["start"])
        if text and start < duration:
            # A timestamp may point past the end of a last, partial window: clamp to the file.
            segments.append({"start": round(start, 3), "end": round(min(float(segment["end"]), duration), 3),
                             "text": text})
    sequences = out["sequences"] if isinstance(out, dict) else out
    text = tokenizer.decode(sequences[index], skip_special_tokens=True).strip()
    if segments:
        text = " ".join(segment["text"] for segment in segments)
    elif text:
        segments = [{"start": 0.0, "end": round(duration, 3), "text": text}]
    return text, segments
