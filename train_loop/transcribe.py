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

from .core.console import run_tool
from .core.errors import UserError
from .core.flags import at_least, flag, parse_sections
from .evaluation.config import DecodingConfig, SavedModelConfig
from .evaluation.transcriber import Transcript

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
FORMATS = ("txt", "srt", "vtt", "jsonl")


@dataclass
class TranscribeConfig:
    """What to transcribe and where the transcripts go."""

    _argument_group_name = "What to transcribe and where (transcribe)"

    batch_size: int = flag(8, "Files (up to 30 s) per generation batch; longer files go in batches of their own kind.",
                           check=at_least(1))
    output_dir: str | None = flag(None, "Write one file per input here (jsonl: transcripts.jsonl) instead of stdout.")
    format: str = flag("txt", "Output format.", FORMATS)
    device: str = flag("auto", "cpu, cuda, or auto (cuda when available).", ("auto", "cpu", "cuda"))


SECTIONS = {"transcribe": TranscribeConfig, "saved": SavedModelConfig, "decoding": DecodingConfig}


def main(argv: list[str] | None = None) -> int:
    def body():
        parsed = parse_sections(SECTIONS, argv, prog="train_loop.transcribe", description=__doc__.split("\n\n")[0],
                                positional=("paths", "audio files or folders (searched recursively)"))
        failed = transcribe_paths(parsed["transcribe"], parsed["saved"], parsed["decoding"], parsed["paths"])
        return 1 if failed else 0

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


def transcribe_paths(options: TranscribeConfig, saved: SavedModelConfig, decoding: DecodingConfig,
                     paths: list[str]) -> list[tuple[str, str]]:
    """Transcribe every file; returns the (path, reason) of files that could not be read."""
    # Imported here, not at the top: `--help` answers before torch loads.
    from .core.console import progress_bar
    from .data.audio import AudioDecodeError, decode_audio
    from .evaluation.transcriber import Transcriber

    if not saved.model:
        raise UserError("--model is required: a run's output_dir, a checkpoint-N folder or a Hub id")
    files = audio_files(paths)
    transcriber = Transcriber(saved.model, saved.language, saved.task, decoding.num_beams, options.device,
                              decoding.generation_max_length)
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
        self.targets = self._targets(files)
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
        target = self.targets[transcript.path]
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(render(transcript, self.format))

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()

    def _targets(self, files: list[str]) -> dict[str, str]:
        """One output file per input, mirroring the inputs' folders: ``talk.txt`` for ``talk.wav``,
        and ``talk.wav.txt`` and ``talk.flac.txt`` when both are given (never one file for two)."""
        if not self.output_dir:
            return {}
        stems = {path: os.path.splitext(os.path.relpath(os.path.abspath(path), self.root))[0] for path in files}
        taken: dict[str, int] = {}
        for stem in stems.values():
            taken[stem] = taken.get(stem, 0) + 1
        return {path: os.path.join(self.output_dir, (stem if taken[stem] == 1 else
                                                     os.path.relpath(os.path.abspath(path), self.root))
                                   + "." + self.format)
                for path, stem in stems.items()}


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
