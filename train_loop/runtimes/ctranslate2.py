"""CTranslate2, the runtime of faster-whisper: the export (CTranslate2's own converter) and a
transcriber that decodes the way this project evaluates, for the parity check."""

from __future__ import annotations

import os
import tempfile

from ..core.errors import UserError

QUANTIZATIONS = ("float16", "float32", "bfloat16", "int8", "int8_float32", "int8_float16", "int8_bfloat16",
                 "int16")  # the first is the default


def export(model, processor, output_dir: str, quantization: str) -> str:
    """``output_dir`` as ``faster_whisper.WhisperModel(output_dir)`` loads it; returns it."""
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise UserError("--format ctranslate2 needs CTranslate2: pip install '.[export]' (or pip install "
                        "ctranslate2 faster-whisper)") from None
    # The converter reads a transformers folder: give it one made from what was loaded, so a
    # checkpoint-N (optimizer files beside the weights) or a folder lacking files converts alike.
    with tempfile.TemporaryDirectory(prefix="export-") as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        processor.feature_extractor.save_pretrained(staging)  # preprocessor_config.json
        TransformersConverter(staging, copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(
            output_dir, quantization=quantization, force=True)
    return output_dir


def _load(exported: str):
    try:
        from faster_whisper import WhisperModel
    except ImportError:
        raise UserError("the parity check needs faster-whisper: pip install '.[export]'") from None
    return WhisperModel(exported, device="auto", compute_type="default", cpu_threads=os.cpu_count() or 1)


def _decode(model, waveform, language: str, task: str, max_new_tokens: int, num_beams: int, timestamps: bool):
    """faster-whisper decoding as transformers does here: the same beam width (1: greedy), no
    temperature fallback, no previous-text prompt, no voice-activity or no-speech skipping."""
    segments, _ = model.transcribe(
        waveform, language=language, task=task, beam_size=num_beams, best_of=1, temperature=0.0,
        condition_on_previous_text=False, without_timestamps=not timestamps, vad_filter=False,
        no_speech_threshold=None, log_prob_threshold=None, compression_ratio_threshold=None,
        max_new_tokens=max_new_tokens)
    return list(segments)


def transcriber(exported: str, language: str, task: str, max_new_tokens: int, num_beams: int = 1):
    """waveform -> text with faster-whisper, no timestamps (see ``_decode``)."""
    model = _load(exported)

    def transcribe_faster_whisper(waveform) -> str:
        segments = _decode(model, waveform, language, task, max_new_tokens, num_beams, timestamps=False)
        return "".join(segment.text for segment in segments).strip()

    return transcribe_faster_whisper


def long_form_transcriber(exported: str, language: str, task: str, max_new_tokens: int, num_beams: int = 1):
    """waveform -> (text, segments) with faster-whisper's sequential long-form decoding and
    timestamps (the export check on a long file)."""
    model = _load(exported)

    def transcribe_long(waveform):
        found = [{"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text.strip()}
                 for s in _decode(model, waveform, language, task, max_new_tokens, num_beams, timestamps=True)]
        return " ".join(segment["text"] for segment in found).strip(), found

    return transcribe_long
