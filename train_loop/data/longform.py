"""Long recordings for long-form evaluation (``--eval_long_form``).

Built from an evaluation split's clips: one speaker's clips in a row (``--speaker_column_name``;
in manifest order when the data names no speakers), joined with short silent gaps until the
recording reaches ``--long_form_minutes``. Each clip keeps its own leading and trailing silence,
so the recording sounds like a person reading with pauses; the true start of each clip's speech
(``speech_bounds.py``) is kept to score predicted timestamps. Or read from a folder of real long
recordings (``--long_form_data_dir``: an audiofolder's metadata.csv with full transcripts; their
true segment starts are unknown).

A recording is a list of clip references and offsets; its audio is assembled when it is
decoded, so a long evaluation set does not sit in memory.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import UserError
from .audio import SAMPLING_RATE, AudioDecodeError, decode_audio
from .features import SKIP_EMPTY_TEXT, SKIP_UNREADABLE, SkipReport
from .sources import RowSource
from .speech_bounds import SpeechBounds

GAP_SECONDS = (0.3, 1.2)  # silence between two clips of a recording


@dataclass
class LongRecording:
    name: str
    parts: list[tuple[object, float]]  # (audio reference, offset in seconds)
    reference: str
    duration: float
    speech_starts: list[float] | None  # true start of each clip's speech; None when unknown
    speaker: str = ""

    def waveform(self) -> np.ndarray:
        audio = np.zeros(int(round(self.duration * SAMPLING_RATE)), dtype=np.float32)
        for reference, offset in self.parts:
            clip = decode_audio(reference, SAMPLING_RATE)
            at = int(round(offset * SAMPLING_RATE))
            clip = clip[: len(audio) - at]
            audio[at : at + len(clip)] += clip
        return audio


@dataclass
class LongFormSet:
    """The recordings evaluated as ``eval_longform_*``; ``source`` says where they came from."""

    split: str
    recordings: list[LongRecording]
    source: str
    report: SkipReport | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(recording.duration for recording in self.recordings)


def build_long_recordings(rows: RowSource, minutes: float, max_recordings: int, bounds: str,
                          seed: int = 0) -> LongFormSet:
    """Recordings of about ``minutes`` from ``rows`` (see the module docstring), at most
    ``max_recordings``; deterministic for a seed. Unusable clips are counted, never joined."""
    table = rows.rows
    if not hasattr(table, "__len__"):
        table = list(table)  # a streamed Hub split: the clips are read once here
    report = SkipReport(split=f"{rows.split} (long-form)")
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for position in range(len(table)):
        by_speaker[str(table[position].get("speaker") or "")].append(position)
    rng = np.random.default_rng([seed, 31])
    detector = SpeechBounds(bounds)
    target = minutes * 60
    recordings: list[LongRecording] = []
    for speaker in sorted(by_speaker, key=lambda name: (name == "", name)):
        parts: list[tuple[object, float]] = []
        texts: list[str] = []
        starts: list[float] = []
        end = 0.0
        for position in by_speaker[speaker]:
            if len(recordings) >= max_recordings:
                break
            row = table[position]
            report.rows += 1
            if not (row["text"] or "").strip():
                report.add(SKIP_EMPTY_TEXT)
                continue
            try:
                audio = decode_audio(row["audio"], SAMPLING_RATE)
            except AudioDecodeError as err:
                report.add(SKIP_UNREADABLE, str(err))
                continue
            span = detector(audio)
            if span is None:
                report.add("no speech found by the voice-activity detector", str(row["id"]))
                continue
            offset = end + (float(rng.uniform(*GAP_SECONDS)) if parts else 0.0)
            parts.append((row["audio"], offset))
            texts.append(row["text"].strip())
            starts.append(offset + span[0])
            end = offset + len(audio) / SAMPLING_RATE
            if end >= target:
                recordings.append(LongRecording(f"longform-{len(recordings):03d}", parts, " ".join(texts), end,
                                                starts, speaker))
                parts, texts, starts, end = [], [], [], 0.0
        # A speaker's last, shorter recording is kept if it is at least half the target.
        if parts and end >= target / 2 and len(recordings) < max_recordings:
            recordings.append(LongRecording(f"longform-{len(recordings):03d}", parts, " ".join(texts), end,
                                            starts, speaker))
    if not recordings:
        raise UserError(f"{rows.name}: its usable clips make no long-form recording of {minutes:g} minutes "
                        f"(nor half of one; {report.summary()}); lower --long_form_minutes or add clips")
    return LongFormSet(rows.split, recordings, f"{len(recordings)} recordings built from {rows.name}", report)


def read_long_recordings(folder: str, text_column: str, max_recordings: int) -> LongFormSet:
    """``--long_form_data_dir``: ``metadata.csv`` (file_name + the transcript column) and the audio."""
    import soundfile

    from .sources import _read_manifest

    manifest = os.path.join(folder, "metadata.csv")
    if not os.path.isfile(manifest):  # an audiofolder with one split folder: {split}/metadata.csv
        below = sorted(name for name in (os.listdir(folder) if os.path.isdir(folder) else [])
                       if os.path.isfile(os.path.join(folder, name, "metadata.csv")))
        if len(below) != 1:
            raise UserError(f"--long_form_data_dir {folder}: no metadata.csv there (nor in exactly one split folder); "
                            f"it must list the long recordings (columns file_name and {text_column}) beside their "
                            "audio files")
        folder = os.path.join(folder, below[0])
        manifest = os.path.join(folder, "metadata.csv")
    rows = _read_manifest(manifest, ",", "file_name", text_column)
    recordings, report = [], SkipReport(split="long-form recordings")
    for row in rows.kept[:max_recordings]:
        path = os.path.join(folder, row["file_name"])
        report.rows += 1
        if not (row[text_column] or "").strip():
            report.add(SKIP_EMPTY_TEXT)
            continue
        try:
            info = soundfile.info(path)
        except Exception as err:  # missing or not audio: counted like any unreadable clip
            report.add(SKIP_UNREADABLE, f"{path}: {err}")
            continue
        recordings.append(LongRecording(os.path.splitext(row["file_name"])[0], [(path, 0.0)], row[text_column].strip(),
                                        info.frames / info.samplerate, None))
    report.add_left_out(rows.dropped)
    if not recordings:
        raise UserError(f"--long_form_data_dir {folder}: no usable recording ({report.summary()})")
    return LongFormSet("long-form", recordings, f"{len(recordings)} recordings from {folder}", report)
