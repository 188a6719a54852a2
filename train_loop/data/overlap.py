"""Training rows that would leak into evaluation: the same speaker, the same sentence or the same
file as a clip the run evaluates or tests on.

Common Voice's ``validated.tsv`` holds every clip, those of ``dev.tsv`` and ``test.tsv`` included;
its official ``train`` split avoids their speakers and sentences, and so must any training split
built from more of it. ``HeldOut`` collects what the evaluation splits hold (speakers, normalized
sentences, clip file names); ``exclude_held_out`` drops the training rows that share any of them,
counting each under its reason, or, with ``--allow_eval_overlap``, only counts them.

A clip is known by its file name: ``validated.tsv`` and ``dev.tsv`` name the same
``clips/common_voice_be_123.mp3``, and a shard keeps the name it was read from.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import datasets
import pyarrow as pa

from .sources import RowSource, content_hash, load_rows

SKIP_HELD_OUT_CLIP = "clip in dev/test"
SKIP_HELD_OUT_SPEAKER = "speaker in dev/test"
SKIP_HELD_OUT_SENTENCE = "sentence in dev/test"
HELD_OUT_REASONS = (SKIP_HELD_OUT_CLIP, SKIP_HELD_OUT_SPEAKER, SKIP_HELD_OUT_SENTENCE)
HELD_OUT_COLUMN = "held_out"  # a streamed row's reason, counted when it is read


def clip_name(audio: Any) -> str:
    """The file name a row's audio came from ("" when the row has only bytes)."""
    path = audio.get("path") if isinstance(audio, dict) else audio
    return os.path.basename(str(path or ""))


@dataclass
class HeldOut:
    """Speakers, normalized sentences and clip files of the evaluation and test splits."""

    normalize: Callable[[str], str]
    splits: list[str] = field(default_factory=list)  # names, for messages
    speakers: set[str] = field(default_factory=set)
    sentences: set[str] = field(default_factory=set)
    clips: set[str] = field(default_factory=set)

    def add(self, rows: RowSource) -> None:
        self.splits.append(rows.name)
        for audio, text, speaker in _columns(rows.rows):
            if speaker:
                self.speakers.add(speaker)
            sentence = self.normalize(text or "")
            if sentence:
                self.sentences.add(sentence)
            name = clip_name(audio)
            if name:
                self.clips.add(name)

    def fingerprint(self) -> str:
        return content_hash("held-out-v1", sorted(self.speakers), sorted(self.sentences), sorted(self.clips))

    def reason(self, audio: Any, text: str, speaker: str) -> str:
        """Why a training row must not be trained on ("" when it may). The file first: a clip of
        dev/test is also its speaker's and its sentence's."""
        name = clip_name(audio)
        if name and name in self.clips:
            return SKIP_HELD_OUT_CLIP
        if speaker and speaker in self.speakers:
            return SKIP_HELD_OUT_SPEAKER
        if self.normalize(text or "") in self.sentences:
            return SKIP_HELD_OUT_SENTENCE
        return ""


def _columns(rows: datasets.Dataset | datasets.IterableDataset) -> Iterable[tuple[Any, str, str]]:
    """(audio reference, text, speaker) of every row, without decoding or loading audio bytes."""
    if isinstance(rows, datasets.Dataset):
        table = rows.select_columns(["audio", "text", "speaker"]).with_format("arrow")[:]
        audio = table.column("audio")
        if pa.types.is_string(audio.type) or pa.types.is_large_string(audio.type):  # file paths
            names = audio.to_pylist()
        else:  # {"bytes", "path"}: read the paths only
            names = [{"path": path} for path in audio.combine_chunks().field("path").to_pylist()]
        yield from zip(names, table.column("text").to_pylist(), table.column("speaker").to_pylist())
        return
    for row in rows:
        yield row["audio"], row["text"], row.get("speaker", "")


def clip_reasons(rows: datasets.Dataset, held_out: HeldOut) -> list[str]:
    """Each row's reason to be left out of training ("" to keep it), in row order."""
    return [held_out.reason(audio, text, speaker) for audio, text, speaker in _columns(rows)]


@dataclass
class Exclusion:
    """What ``exclude_held_out`` found in one training source.

    The rows stay as they were: a prepared split or a packing index is cached for all of them and
    leaves out the positions ``reasons`` names (so another evaluation split, or
    --allow_eval_overlap, needs no new preparation); ``selected`` gives the kept rows themselves."""

    rows: RowSource
    reasons: list[str] | None  # per row: its reason to be left out, "" to keep it; None: keep every row
    counts: Counter  # reason -> rows sharing it with dev/test (for a stream: counted as read)
    kept_anyway: bool  # --allow_eval_overlap: counted, not dropped

    def summary(self) -> str:
        if not self.counts:
            return f"{self.rows.split}: no clip shares a speaker, a sentence or a file with the evaluation splits"
        found = ", ".join(f"{self.counts[r]:,} {r}" for r in HELD_OUT_REASONS if self.counts[r])
        if self.kept_anyway:
            return (f"warning: {self.rows.split}: {found}; kept for training (--allow_eval_overlap): "
                    "the evaluation numbers of this run are not held-out numbers")
        return f"{self.rows.split}: left out {found} (--allow_eval_overlap keeps them)"

    def selected(self) -> RowSource:
        """The kept rows, the left-out ones counted in ``dropped`` (the split's skip report)."""
        if self.reasons is None or not any(self.reasons):
            return self.rows
        rows = self.rows
        dropped = {reason: list(lines) for reason, lines in rows.dropped.items()}
        for reason in filter(None, self.reasons):
            dropped.setdefault(reason, []).append("")  # no detail: the examples stay for broken files
        keep = [position for position, reason in enumerate(self.reasons) if not reason]
        return RowSource(name=rows.name, split=rows.split, rows=rows.rows.select(keep),
                         fingerprint=content_hash(rows.fingerprint, "held-out", content_hash(*self.reasons)),
                         num_rows=len(keep), dropped=dropped)


def exclude_held_out(rows: RowSource, held_out: HeldOut, allow_overlap: bool) -> Exclusion:
    """Which of ``rows`` share a speaker, a sentence or a file with ``held_out``, and why. A
    stream's rows are tagged instead and counted as they are read (``HELD_OUT_COLUMN``)."""
    if not held_out.splits:
        return Exclusion(rows, None, Counter(), allow_overlap)
    if not isinstance(rows.rows, datasets.Dataset):
        if allow_overlap:
            return Exclusion(rows, None, Counter(), True)
        tagged = rows.rows.map(lambda row: {HELD_OUT_COLUMN: held_out.reason(row["audio"], row["text"],
                                                                              row.get("speaker", ""))})
        return Exclusion(RowSource(name=rows.name, split=rows.split, rows=tagged, num_rows=rows.num_rows,
                                   fingerprint=content_hash(rows.fingerprint, held_out.fingerprint()),
                                   dropped=rows.dropped), None, Counter(), False)
    reasons = clip_reasons(rows.rows, held_out)
    counts = Counter(filter(None, reasons))
    return Exclusion(rows, None if allow_overlap or not counts else reasons, counts, allow_overlap)


def collect_held_out(parts: list[tuple[Any, str]], normalize: Callable[[str], str]) -> HeldOut:
    """The held-out rows of ``parts``, each (SourceConfig, split name); read without audio."""
    held_out = HeldOut(normalize)
    for source, split in parts:
        held_out.add(load_rows(source, split))
    return held_out
