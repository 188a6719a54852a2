"""Long-form evaluation: recordings longer than the model's window, decoded with Whisper's
sequential long-form algorithm (``transcriber.decode_waveforms``, what ``train_loop.transcribe``
runs), scored as ``eval_longform_*``:

* ``wer``, ``cer``, ``wer_raw`` and the substitutions/deletions/insertions behind them, over the
  whole recordings (one reference per recording: its clips' transcripts joined);
* ``loop_rate``: % of recordings with a repetition loop (``has_loop``);
* ``timestamp_error_s``: how far predicted segment starts are from the true clip starts (the
  start of each clip's speech, known where the recording was built from clips): each true
  start is matched to the nearest predicted segment start, and the error is the mean absolute
  distance over all clips of all recordings. A model that returns no segment for a recording
  leaves it out; null when no recording has both.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from ..core.console import progress_bar
from ..data.longform import LongFormSet, LongRecording
from .metrics import error_rates
from .transcriber import decode_waveforms

LOOP_SEGMENT_REPEATS = 3  # the same segment text this many times in a row
LOOP_NGRAM_REPEATS = 4  # or one 1- to 4-word sequence this many times in a row


def has_loop(segments: list[dict[str, Any]], text: str) -> bool:
    """A repetition loop: one segment's text repeated ``LOOP_SEGMENT_REPEATS`` times in a row, or
    a sequence of 1-4 words repeated ``LOOP_NGRAM_REPEATS`` times in a row within the text."""
    run = 1
    for before, after in zip(segments, segments[1:]):
        run = run + 1 if after["text"].strip().lower() == before["text"].strip().lower() else 1
        if run >= LOOP_SEGMENT_REPEATS:
            return True
    words = text.lower().split()
    for n in range(1, 5):
        for start in range(len(words) - n * LOOP_NGRAM_REPEATS + 1):
            gram = words[start : start + n]
            if all(words[start + k * n : start + (k + 1) * n] == gram for k in range(1, LOOP_NGRAM_REPEATS)):
                return True
    return False


def timestamp_errors(true_starts: list[float], segments: list[dict[str, Any]]) -> list[float]:
    """Per true start: the distance to the nearest predicted segment start (none without segments)."""
    predicted = [float(segment["start"]) for segment in segments]
    if not predicted:
        return []
    return [min(abs(start - guess) for guess in predicted) for start in true_starts]


def score_long_form(recordings: list[LongRecording], outputs: list[tuple[str, list[dict[str, Any]]]],
                    normalizer: Callable[[str], str]) -> dict[str, Any]:
    result = dict(error_rates([r.reference for r in recordings], [text for text, _ in outputs], normalizer))
    loops = sum(has_loop(segments, text) for text, segments in outputs)
    result["loop_rate"] = 100.0 * loops / len(recordings) if recordings else None
    errors = [error for recording, (_, segments) in zip(recordings, outputs) if recording.speech_starts
              for error in timestamp_errors(recording.speech_starts, segments)]
    result["timestamp_error_s"] = round(sum(errors) / len(errors), 3) if errors else None
    result["audio_seconds"] = round(sum(r.duration for r in recordings), 1)
    return result


def evaluate_long_form(model, processor, long_form: LongFormSet, *, language: str | None, task: str,
                       num_beams: int, max_new_tokens: int, accelerator, input_dtype, normalizer: Callable[[str], str],
                       predictions_path: str | None, show_progress: bool = True) -> dict[str, Any]:
    """Decode this process's share of the recordings, gather, score on the main process, share
    the result with every process (same keys as ``generation.evaluate``, plus ``loop_rate`` as
    defined here and ``timestamp_error_s``)."""
    start = time.perf_counter()
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    mine = list(range(accelerator.process_index, len(long_form.recordings), accelerator.num_processes))
    local: list[tuple[int, str, list[dict[str, Any]]]] = []
    bar = progress_bar(len(mine), f"eval {long_form.split} long-form", enabled=show_progress and accelerator.is_main_process,
                       unit="recording")
    try:
        for position in mine:
            recording = long_form.recordings[position]
            [(text, segments)] = decode_waveforms(
                unwrapped, processor, [recording.waveform()], language=language, task=task, num_beams=num_beams,
                max_new_tokens=max_new_tokens, device=accelerator.device, dtype=input_dtype,
                autocast=accelerator.autocast())
            local.append((position, text, segments))
            bar.update(1)
    finally:
        bar.close()
        unwrapped.train(was_training)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list, gather_object

        gathered = sorted(gather_object(local))
    else:
        gathered = sorted(local)
    outputs = [(text, segments) for _, text, segments in gathered]
    result: dict[str, Any] = {}
    if accelerator.is_main_process:
        result = score_long_form(long_form.recordings, outputs, normalizer)
        if predictions_path:
            write_long_form_predictions(predictions_path, long_form.recordings, outputs, normalizer)
    if accelerator.num_processes > 1:
        holder = [result]
        broadcast_object_list(holder, from_process=0)
        result = holder[0]
    result["seconds"] = time.perf_counter() - start
    result["samples_per_second"] = result["samples"] / max(result["seconds"], 1e-9)
    return result


def write_long_form_predictions(path: str, recordings: list[LongRecording],
                                outputs: list[tuple[str, list[dict[str, Any]]]], normalizer) -> None:
    """One JSON line per recording: reference, prediction, segments, true clip starts."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        for recording, (text, segments) in zip(recordings, outputs):
            handle.write(json.dumps({
                "id": recording.name, "speaker": recording.speaker, "duration": round(recording.duration, 2),
                "reference": recording.reference, "prediction": text,
                "reference_normalized": normalizer(recording.reference), "prediction_normalized": normalizer(text),
                "segments": segments, "true_starts": [round(s, 2) for s in recording.speech_starts or []],
                "loop": has_loop(segments, text)}, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)
