"""Transcribe audio files with a trained model: txt, srt, vtt or jsonl.

    python -m train_loop.transcribe --model runs/small-be recording.mp3
    python -m train_loop.transcribe --model runs/small-be --output_dir out --format srt talks/

A PATH is a file or a folder (searched recursively for wav, flac, ogg and mp3). Audio is read
with soundfile (no FFmpeg). Without ``--output_dir`` every file gives one line on stdout
(``PATH<TAB>text``, or a JSON object with ``--format jsonl``); with it, one file per input
(``OUT/<path>.txt|.srt|.vtt``, mirroring the inputs' folders) or ``OUT/transcripts.jsonl``.

Files longer than the model's 30 s window are transcribed whole with Whisper's **sequential
long-form decoding** (transformers' implementation of OpenAI's algorithm: each window starts
where the last complete segment ended, so no word is cut at a window edge). It is the algorithm
faster-whisper and whisper.cpp implement, so long files give the same kind of transcript in
every runtime this project exports to; chunked decoding with overlaps would merge the overlaps
by matching tokens instead, which can repeat or drop words at the seams. Segment times come
from the model's timestamp tokens.

Files up to 30 s are decoded without timestamps, as training evaluates (a model fine-tuned
with ``<|notimestamps|>`` transcribes best that way), except for srt/vtt, whose segments need
times.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from .config import flag, parse_sections
from .errors import UserError, run_tool

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
FORMATS = ("txt", "srt", "vtt", "jsonl")


@dataclass
class TranscribeConfig:
    """What to transcribe and how."""

    _argument_group_name = "What to transcribe and how (transcribe)"

    model: str | None = flag(None, "Model folder (a run's output_dir, a checkpoint-N) or Hub id.")
    language: str | None = flag(
        None, "Language to transcribe (code or name). Default: the one the model was fine-tuned "
        "for (its generation config), else detected.")
    task: str = flag("transcribe", "Whisper task.", ("transcribe", "translate"))
    batch_size: int = flag(8, "Files (up to 30 s) per generation batch; longer files go in batches of their own kind.")
    output_dir: str | None = flag(None, "Write one file per input here (jsonl: transcripts.jsonl) instead of stdout.")
    format: str = flag("txt", "Output format.", FORMATS)
    num_beams: int = flag(1, "Beam width (1 = greedy).")
    generation_max_length: int = flag(
        440, "Most tokens generated per 30 s window after the prompt (a window rarely holds over 200; "
        "the cap ends a repetition loop).")
    device: str = flag("auto", "cpu, cuda, or auto (cuda when available).", ("auto", "cpu", "cuda"))


def main(argv: list[str] | None = None) -> int:
    def body():
        parsed = parse_sections({"transcribe": TranscribeConfig}, argv, prog="train_loop.transcribe",
                                description=__doc__.split("\n\n")[0],
                                positional=("paths", "audio files or folders (searched recursively)"))
        return 1 if transcribe_paths(parsed["transcribe"], parsed["paths"]) else 0

    return run_tool(body)


def audio_files(paths: list[str]) -> list[str]:
    """Every audio file named or inside a named folder, sorted within each folder."""
    if not paths:
        raise UserError("no audio given: name files or folders, e.g. python -m train_loop.transcribe "
                        "--model runs/x clip.wav recordings/")
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            inside = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                            if name.lower().endswith(AUDIO_EXTENSIONS))
            if not inside:
                raise UserError(f"{path}: no {', '.join(AUDIO_EXTENSIONS)} files in this folder")
            found.extend(inside)
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return list(dict.fromkeys(found))  # a file named twice is transcribed once


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
        from .model import decoding_language

        self.language = decoding_language(self.model.generation_config, language)
        self.task = task
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        extractor = self.processor.feature_extractor
        self.sampling_rate = extractor.sampling_rate
        self.window_seconds = extractor.n_samples / extractor.sampling_rate

    def __call__(self, waveforms: list, timestamps: bool = True) -> list[tuple[str, list[dict[str, Any]]]]:
        """(text, segments) per waveform; all of one batch are short (<= window) or all long.
        Long audio always decodes with timestamps (they say where the next window starts);
        short audio without them is decoded exactly as training evaluated it."""
        import torch

        long_form = any(len(w) > self.processor.feature_extractor.n_samples for w in waveforms)
        timestamps = timestamps or long_form
        inputs = self.processor.feature_extractor(
            waveforms, sampling_rate=self.sampling_rate, return_tensors="pt", return_attention_mask=True,
            **({"truncation": False, "padding": "longest"} if long_form else {}))
        kwargs: dict[str, Any] = {"task": self.task, "num_beams": self.num_beams, "return_timestamps": timestamps,
                                  "max_new_tokens": self.max_new_tokens}
        if timestamps:
            kwargs.update(return_segments=True, condition_on_prev_tokens=False)
        if self.language:
            kwargs["language"] = self.language
        if long_form:
            kwargs["attention_mask"] = inputs["attention_mask"].to(self.device)
        with torch.no_grad():
            out = self.model.generate(inputs["input_features"].to(self.device, self.dtype), **kwargs)
        return [self._decode(out, index, len(waveform) / self.sampling_rate)
                for index, waveform in enumerate(waveforms)]

    def _decode(self, out, index: int, duration: float) -> tuple[str, list[dict[str, Any]]]:
        tokenizer = self.processor.tokenizer
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


def transcribe_paths(options: TranscribeConfig, paths: list[str]) -> list[tuple[str, str]]:
    """Transcribe every file; returns the (path, reason) of files that could not be read."""
    from .audio import AudioDecodeError, decode_audio
    from .logger import progress_bar

    if not options.model:
        raise UserError("--model is required: a run's output_dir, a checkpoint-N folder or a Hub id")
    if options.batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {options.batch_size}")
    files = audio_files(paths)
    if not 1 <= options.generation_max_length <= 440:
        raise UserError(f"--generation_max_length must be between 1 and 440, got {options.generation_max_length}")
    transcriber = Transcriber(options.model, options.language, options.task, options.num_beams, options.device,
                              options.generation_max_length)
    writer = Writer(options.output_dir, options.format, files)
    failed: list[tuple[str, str]] = []
    bar = progress_bar(len(files), "transcribe", enabled=True, unit="file")
    started = time.perf_counter()
    audio_seconds = 0.0
    pending: dict[bool, list[tuple[str, Any]]] = {False: [], True: []}  # by long-form

    done: dict[str, Transcript | None] = {}  # finished out of order (batches by length); written in order
    next_to_write = 0

    def release() -> None:
        nonlocal next_to_write
        while next_to_write < len(files) and files[next_to_write] in done:
            transcript = done.pop(files[next_to_write])
            if transcript is not None:
                writer.write(transcript)
            next_to_write += 1

    def flush(long_form: bool) -> None:
        batch = pending[long_form]
        if not batch:
            return
        # Subtitles need segment times; plain text of short files decodes as evaluation does.
        timestamps = options.format in ("srt", "vtt")
        for (path, waveform), (text, segments) in zip(batch, transcriber([w for _, w in batch], timestamps)):
            done[path] = Transcript(path, text, segments, len(waveform) / transcriber.sampling_rate)
        bar.update(len(batch))
        pending[long_form] = []
        release()

    for path in files:
        try:
            waveform = decode_audio(path, transcriber.sampling_rate)
        except AudioDecodeError as err:
            failed.append((path, str(err).removeprefix(f"{path}: ")))
            done[path] = None
            bar.update(1)
            continue
        audio_seconds += len(waveform) / transcriber.sampling_rate
        long_form = len(waveform) / transcriber.sampling_rate > transcriber.window_seconds
        pending[long_form].append((path, waveform))
        if len(pending[long_form]) == options.batch_size:
            flush(long_form)
    flush(False)
    flush(True)
    release()
    bar.close()
    writer.close()
    seconds = time.perf_counter() - started
    done = len(files) - len(failed)
    print(f"transcribed {done} file(s), {audio_seconds:.0f} s of audio in {seconds:.1f} s"
          + (f"; written to {options.output_dir}" if options.output_dir else ""), file=sys.stderr, flush=True)
    if failed:
        print(f"{len(failed)} file(s) could not be read and were skipped:", file=sys.stderr)
        for path, reason in failed:
            print(f"  {path}: {reason}", file=sys.stderr)
    return failed


class Writer:
    """Transcripts to stdout (one line each) or to files under ``output_dir``."""

    def __init__(self, output_dir: str | None, fmt: str, files: list[str]):
        self.output_dir, self.format = output_dir, fmt
        absolute = [os.path.abspath(path) for path in files]
        self.root = os.path.commonpath([os.path.dirname(path) for path in absolute]) if absolute else ""
        self.jsonl = None
        if output_dir:
            if os.path.exists(output_dir) and not os.path.isdir(output_dir):
                raise UserError(f"--output_dir {output_dir}: a file, not a folder")
            os.makedirs(output_dir, exist_ok=True)
            if fmt == "jsonl":
                self.jsonl = open(os.path.join(output_dir, "transcripts.jsonl"), "w", encoding="utf-8")

    def write(self, transcript: Transcript) -> None:
        record = {"path": transcript.path, "text": transcript.text, "duration": round(transcript.duration, 3),
                  "segments": transcript.segments}
        if not self.output_dir:
            line = json.dumps(record, ensure_ascii=False) if self.format == "jsonl" else f"{transcript.path}\t{transcript.text}"
            print(line, flush=True)
            return
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.jsonl.flush()
            return
        relative = os.path.relpath(os.path.abspath(transcript.path), self.root)
        target = os.path.join(self.output_dir, os.path.splitext(relative)[0] + "." + self.format)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(render(transcript, self.format))

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()


def render(transcript: Transcript, fmt: str) -> str:
    if fmt == "txt":
        return transcript.text + "\n"
    segments = transcript.segments or [{"start": 0.0, "end": transcript.duration, "text": transcript.text}]
    if fmt == "srt":
        return "".join(f"{number}\n{_clock(s['start'], ',')} --> {_clock(s['end'], ',')}\n{s['text']}\n\n"
                       for number, s in enumerate(segments, start=1))
    if fmt == "vtt":
        return "WEBVTT\n\n" + "".join(f"{_clock(s['start'], '.')} --> {_clock(s['end'], '.')}\n{s['text']}\n\n"
                                      for s in segments)
    raise ValueError(fmt)


def _clock(seconds: float, decimal: str) -> str:
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


if __name__ == "__main__":
    sys.exit(main())
