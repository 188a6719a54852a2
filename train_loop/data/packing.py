"""``--pack_to_window``: training examples the way Whisper was trained, 30 s windows of
consecutive speech instead of one short clip padded with silence.

Three parts:

* ``index_split``: one pass over the split (cached on disk like prepared features) that records
  per clip its duration, where its speech starts and ends (``speech_bounds.py``), its speaker,
  its transcript tokens and its audio, decoded and resampled once to 16 kHz and stored as FLAC
  (lossless for 16-bit sources, about half of raw PCM, and decoding it needs no resampling: a
  window is assembled and featurized in a DataLoader worker in milliseconds).
* ``plan_windows``: epoch ``e``'s windows, a pure function of (seed, e) and the index. One
  speaker's clips go together (``--speaker_column_name``); each clip is cut to its speech plus a
  short margin and placed after a random gap until the next one would not fit the window (in
  seconds or in label tokens). A share of windows is labelled with timestamps, a share gets the
  previous window's text as a prompt, and a share is added without speech. The windows are then
  shuffled, and ``PackedBatchSampler`` cuts them into global batches exactly as
  ``ShardedBatchSampler`` cuts clips: so resume, the per-process split and "one process = many"
  hold as without packing.
* ``PackedWindows``: the dataset the workers read; it turns a ``Window`` into features and the
  decoder's token sequence, with every special token id taken from the tokenizer by name.

Decoder sequence of a window (``labels``; the collator shifts it and masks the prompt):
``[<|startofprev|> prev tokens] <|startoftranscript|> <|be|> <|transcribe|>`` then either
``<|notimestamps|> text`` or ``<|t0|> text<|t1|><|t2|> text<|t3|>``, then ``<|endoftext|>``; a
window without speech is ``<|startoftranscript|> <|nospeech|> <|endoftext|>`` (the token the
tokenizer names ``<|nocaptions|>`` in the original multilingual vocabulary).
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator

import datasets
import numpy as np
import soundfile
import torch

from ..core.errors import UserError
from .audio import SAMPLING_RATE, AudioDecodeError, decode_audio
from .features import (
    SKIP_EMPTY_TEXT,
    SKIP_NONFINITE_FEATURES,
    SKIP_OVER_WINDOW,
    SKIP_UNREADABLE,
    Featurizer,
    Filters,
    SkipReport,
)
from .samplers import process_slices
from .sources import RowSource, content_hash
from .speech_bounds import SpeechBounds

SKIP_NO_SPEECH = "no speech found by the voice-activity detector"
TIME_PRECISION = 0.02  # Whisper's timestamp tokens: <|0.00|>, <|0.02|>, ... <|30.00|>
MARGIN_SECONDS = 0.1  # audio kept around each clip's speech
MAX_GAP_SECONDS = 1.0  # gaps between clips are drawn from [0.1 s, this]
MAX_DECODER_POSITIONS = 448  # every Whisper's decoder length (config.max_target_positions)


# --------------------------------------------------------------------------------------------
# The clip index
# --------------------------------------------------------------------------------------------


def _index_features() -> datasets.Features:
    return datasets.Features({
        "id": datasets.Value("string"), "text": datasets.Value("string"), "speaker": datasets.Value("string"),
        "tokens": datasets.List(datasets.Value("int32")), "duration": datasets.Value("float32"),
        "speech_start": datasets.Value("float32"), "speech_end": datasets.Value("float32"),
        "skip_reason": datasets.Value("string"), "detail": datasets.Value("string"),
        "flac": datasets.Value("binary"),  # the clip at 16 kHz, 16-bit FLAC
    })


class _IndexBatch:
    """map() function: decode each clip once for its duration and speech bounds; tokenize."""

    def __init__(self, featurizer: Featurizer, bounds: SpeechBounds):
        self.featurizer, self.bounds = featurizer, bounds
        self.parent_pid = os.getpid()

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if os.getpid() != self.parent_pid and torch.get_num_threads() > 1:
            torch.set_num_threads(1)  # forked worker: see prepared._FeaturizeBatch
        out: dict[str, list] = {key: [] for key in _index_features()}
        for row_id, audio, text, speaker in zip(batch["id"], batch["audio"], batch["text"], batch["speaker"]):
            entry = {"id": row_id, "text": text or "", "speaker": speaker or "", "tokens": [], "duration": 0.0,
                     "speech_start": 0.0, "speech_end": 0.0, "skip_reason": "", "detail": "", "flac": b""}
            if not text or not text.strip():
                entry["skip_reason"] = SKIP_EMPTY_TEXT
            else:
                try:
                    waveform = decode_audio(audio, SAMPLING_RATE)
                except AudioDecodeError as err:
                    waveform = None
                    entry.update(skip_reason=SKIP_UNREADABLE, detail=str(err))
                if waveform is not None:
                    entry["duration"] = len(waveform) / SAMPLING_RATE
                    entry["tokens"] = text_tokens(self.featurizer, text)
                    if not np.isfinite(waveform).all():
                        entry.update(skip_reason=SKIP_NONFINITE_FEATURES, detail=f"{row_id}: samples not finite")
                    elif (span := self.bounds(waveform)) is None:
                        entry.update(skip_reason=SKIP_NO_SPEECH, detail=f"{row_id}: no speech detected")
                    else:
                        entry["speech_start"], entry["speech_end"] = span
                        entry["flac"] = encode_flac(waveform)
            for key, value in entry.items():
                out[key].append(value)
        return out


def encode_flac(waveform: np.ndarray) -> bytes:
    """16-bit FLAC, scaled by 32768 as soundfile reads it back: a 16-bit source survives exactly
    (libsndfile's own float writer scales by 32767, which would move samples by one step)."""
    pcm = np.clip(np.round(waveform.astype(np.float64) * 32768), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, SAMPLING_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def decode_flac(data: bytes) -> np.ndarray:
    waveform, _ = soundfile.read(io.BytesIO(data), dtype="float32")
    return waveform


def text_tokens(featurizer: Featurizer, text: str) -> list[int]:
    """A clip's transcript as Whisper's segments hold it: a leading space, no special tokens."""
    return featurizer.tokenizer.encode(" " + featurizer.label_text(text), add_special_tokens=False)


@dataclass
class ClipIndex:
    """The usable clips of a split: metadata in memory (for planning), the table on disk."""

    table: datasets.Dataset  # columns of _index_features
    keep: np.ndarray  # table positions of the usable clips
    durations: np.ndarray
    speech: np.ndarray  # (clips, 2): speech start and end in seconds
    token_counts: np.ndarray
    speakers: np.ndarray  # an integer per speaker; -1 when the data names none
    report: SkipReport

    def __len__(self) -> int:
        return len(self.keep)

    def ids(self) -> list[str]:
        every = self.table.select_columns(["id"])[:]["id"]
        return [str(every[int(position)]) for position in self.keep]


def index_split(source: RowSource, featurizer: Featurizer, filters: Filters, bounds: str, cache_root: str,
                num_proc: int, cache_key: str, max_rows: int | None = None,
                left_out: list[str] | None = None) -> ClipIndex:
    """Index ``source`` once (cached under ``cache_root``) and keep the clips ``filters`` allow;
    ``left_out`` names, per row, a reason to leave it out first ("" to keep it: overlap.py)."""
    rows = source.rows
    if max_rows is not None and max_rows < len(rows):
        rows = rows.select(range(max_rows))
    folder = os.path.join(cache_root, "clip-index",
                          content_hash("index-v1", source.fingerprint, cache_key, bounds, len(rows)))
    os.makedirs(folder, exist_ok=True)
    num_proc = max(1, min(num_proc, len(rows)))
    table = rows.map(
        _IndexBatch(featurizer, SpeechBounds(bounds)), batched=True, batch_size=16,
        num_proc=num_proc if num_proc > 1 else None, remove_columns=rows.column_names,
        features=_index_features(), cache_file_name=os.path.join(folder, "index.arrow"), load_from_cache_file=True,
        desc=f"Indexing {source.split} for packing ({len(rows):,} clips, {num_proc} processes)")
    meta = table.select_columns(["skip_reason", "detail", "duration", "tokens", "speech_start", "speech_end",
                                 "speaker"]).to_dict()
    report = SkipReport(split=source.split, rows=len(table))
    prefix = len(featurizer.tokenizer.prefix_tokens)  # what Filters counts: the prefix, the text, <|endoftext|>
    window = featurizer.window_seconds
    keep = []
    for position, (reason, detail, duration, tokens) in enumerate(zip(
            meta["skip_reason"], meta["detail"], meta["duration"], meta["tokens"])):
        reason = (left_out[position] if left_out else "") or reason
        if not reason and duration > window:
            reason = SKIP_OVER_WINDOW
        reason = reason or filters.reason(duration, prefix + len(tokens))
        if reason:
            report.add(reason, detail if reason in (SKIP_UNREADABLE, SKIP_NONFINITE_FEATURES, SKIP_NO_SPEECH) else "")
        else:
            keep.append(position)
    keep = np.asarray(keep, dtype=np.int64)
    names = [meta["speaker"][p] for p in keep]
    known = sorted({name for name in names if name})
    number = {name: i for i, name in enumerate(known)}
    speakers = np.asarray([number.get(name, -1) for name in names], dtype=np.int64)
    return ClipIndex(
        table=table, keep=keep,
        durations=np.asarray(meta["duration"], dtype=np.float64)[keep] if len(keep) else np.zeros(0),
        speech=np.asarray([[meta["speech_start"][p], meta["speech_end"][p]] for p in keep], dtype=np.float64
                          ).reshape(-1, 2),
        token_counts=np.asarray([len(meta["tokens"][p]) for p in keep], dtype=np.int64),
        speakers=speakers, report=report)


# --------------------------------------------------------------------------------------------
# Planning windows
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """Audio ``[cut_start, cut_end)`` of clip ``clip`` (a position in the ClipIndex) placed at
    ``offset`` seconds in the window; ``speech`` marks it as a transcribed clip (else: non-speech)."""

    clip: int
    cut_start: float
    cut_end: float
    offset: float
    speech: bool = True


@dataclass(frozen=True)
class Window:
    """One training example: pieces of audio, how it is labelled, and noise for windows
    without speech (``seconds`` long, ``noise_seed`` and ``noise_level`` fix the noise)."""

    name: str
    pieces: tuple[Piece, ...]
    timestamps: bool = False
    prompt_clips: tuple[int, ...] = ()  # the previous window's clips, whose text is the prompt
    no_speech: bool = False
    seconds: float = 0.0
    noise_seed: int = 0
    noise_level: float = 0.0
    epoch: int = 0


@dataclass(frozen=True)
class PackingPlan:
    """What ``plan_windows`` needs besides the index; fixed for a run."""

    window_seconds: float
    max_label_tokens: int  # --max_label_length: the window's labels (prefix to <|endoftext|>)
    prefix_tokens: int  # <|be|><|transcribe|>: labels before the text
    timestamp_probability: float
    prev_text_probability: float
    no_speech_probability: float


def _pieces_fit(window_seconds: float, end: float, gap: float, length: float) -> bool:
    return end + gap + length <= window_seconds + 1e-9


def plan_windows(index: ClipIndex, plan: PackingPlan, seed: int, epoch: int) -> list[Window]:
    """Epoch ``epoch``'s windows in training order: a pure function of (seed, epoch, index)."""
    rng = np.random.default_rng([seed, epoch, 23])
    speech_windows = _pack(index, plan, rng)
    windows: list[Window] = []
    previous: tuple[list[Piece], int] | None = None
    for number, (pieces, speaker) in enumerate(speech_windows):
        timestamps = bool(rng.random() < plan.timestamp_probability)
        prompt: tuple[int, ...] = ()
        wants_prompt = rng.random() < plan.prev_text_probability
        if wants_prompt and previous is not None and previous[1] == speaker:
            prompt = tuple(piece.clip for piece in previous[0])
        windows.append(Window(f"e{epoch}w{number}", tuple(pieces), timestamps, prompt, epoch=epoch))
        previous = (pieces, speaker)
    windows += _no_speech_windows(index, plan, rng, len(windows), epoch)
    order = rng.permutation(len(windows))
    return [windows[i] for i in order]


def _pack(index: ClipIndex, plan: PackingPlan, rng: np.random.Generator) -> list[tuple[list[Piece], int]]:
    """Speech windows (pieces, speaker) in the order they were filled: one speaker's clips in a
    row (speakers and their clips in a random order), or any clip order when speakers are unknown."""
    clips = rng.permutation(len(index))
    speakers = index.speakers[clips]
    if (speakers >= 0).any():
        speaker_order = rng.permutation(int(speakers.max()) + 2)  # -1 (unknown) is sorted as one more
        clips = clips[np.argsort(speaker_order[speakers + 1], kind="stable")]
    # Labels with timestamps are the longest a window gets: plan for those.
    per_window = plan.prefix_tokens + 1  # the prefix and <|endoftext|>
    windows: list[tuple[list[Piece], int]] = []
    pieces: list[Piece] = []
    end = tokens = 0.0
    speaker = None
    for clip in clips.tolist():
        start, stop = index.speech[clip]
        cut_start = max(0.0, start - MARGIN_SECONDS)
        cut_end = min(float(index.durations[clip]), stop + MARGIN_SECONDS)
        length = cut_end - cut_start
        clip_tokens = int(index.token_counts[clip]) + 2  # its text between two timestamps
        gap = float(rng.uniform(0.1, MAX_GAP_SECONDS)) if pieces else float(rng.uniform(0.0, 0.5))
        same_speaker = speaker is None or int(index.speakers[clip]) == speaker
        if pieces and not (same_speaker and _pieces_fit(plan.window_seconds, end, gap, length)
                           and per_window + tokens + clip_tokens <= plan.max_label_tokens):
            windows.append((pieces, speaker))
            pieces, end, tokens = [], 0.0, 0
            gap = float(rng.uniform(0.0, 0.5))
        if not _pieces_fit(plan.window_seconds, end, gap, length):
            gap = max(0.0, plan.window_seconds - end - length)  # a clip as long as the window
        offset = _quantize(end + gap)
        if offset + length > plan.window_seconds:
            offset = 0.0
        pieces.append(Piece(clip, cut_start, cut_end, offset))
        end, tokens = offset + length, tokens + clip_tokens
        speaker = int(index.speakers[clip])
    if pieces:
        windows.append((pieces, speaker))
    return windows


def _no_speech_windows(index: ClipIndex, plan: PackingPlan, rng: np.random.Generator, speech_windows: int,
                       epoch: int) -> list[Window]:
    """``no_speech_probability`` of all windows: the data's own silences (before and after each
    clip's speech) where they are long enough, over generated noise of a random level."""
    p = plan.no_speech_probability
    if p <= 0 or speech_windows == 0:
        return []
    expected = speech_windows * p / (1 - p)
    count = int(expected) + int(rng.random() < expected - int(expected))
    windows = []
    for number in range(count):
        seconds = float(rng.uniform(min(1.0, plan.window_seconds), plan.window_seconds))
        pieces, end = [], 0.0
        for _ in range(20):
            clip = int(rng.integers(len(index)))
            start, stop = index.speech[clip]
            lead = (0.0, start - 0.05)
            tail = (stop + 0.05, float(index.durations[clip]))
            cut = max((lead, tail), key=lambda span: span[1] - span[0])
            length = cut[1] - cut[0]
            if length >= 0.3 and end + length <= seconds:
                pieces.append(Piece(clip, cut[0], cut[1], end, speech=False))
                end += length
        windows.append(Window(f"e{epoch}n{number}", tuple(pieces), no_speech=True, seconds=seconds,
                              noise_seed=int(rng.integers(2**31)), noise_level=float(10 ** rng.uniform(-4, -2)), epoch=epoch))
    return windows


def _quantize(seconds: float) -> float:
    return round(seconds / TIME_PRECISION) * TIME_PRECISION


# --------------------------------------------------------------------------------------------
# Batches of windows
# --------------------------------------------------------------------------------------------


class PackedBatchSampler(torch.utils.data.Sampler):
    """Global batches of epoch ``e``'s windows, process ``p`` taking slice ``p`` of each: the
    contract of ``ShardedBatchSampler`` (resumable at any batch, the same clips per optimizer step
    for any split of the global batch), over windows instead of clips. The number of windows
    varies a little between epochs (the gaps are random); ``batches_per_epoch`` is the current
    epoch's."""

    def __init__(self, index: ClipIndex, plan: PackingPlan, batch_size: int, num_processes: int = 1,
                 process_index: int = 0, seed: int = 0):
        self.index, self.plan = index, plan
        self.batch_size, self.num_processes, self.process_index, self.seed = (
            batch_size, num_processes, process_index, seed)
        self.epoch = self.start_batch = 0
        self._planned: dict[int, list[Window]] = {}

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_processes

    def windows(self, epoch: int) -> list[Window]:
        if epoch not in self._planned:
            self._planned = {epoch: plan_windows(self.index, self.plan, self.seed, epoch)}  # keep one epoch
        return self._planned[epoch]

    def batches_per_epoch(self) -> int:
        return len(self.windows(self.epoch)) // self.global_batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[list[Window]]:
        return process_slices(self.windows(self.epoch), self.batch_size, self.num_processes, self.process_index,
                              self.start_batch)


class PackedWindows(torch.utils.data.Dataset):
    """Windows to examples for ``SpeechCollator``: audio assembled and featurized, tokens built."""

    def __init__(self, index: ClipIndex, featurizer: Featurizer, max_label_tokens: int, augment=None):
        self.index, self.featurizer = index, featurizer
        self.augment = augment  # augment.Augmenter or None
        self.max_prompt_tokens = max_label_tokens // 2
        self.tokens = WindowTokens(featurizer.tokenizer)
        self.window_samples = int(round(featurizer.window_seconds * SAMPLING_RATE))
        self.token_rows = index.table.select_columns(["tokens"])

    def __len__(self) -> int:
        return len(self.index)

    def _row(self, clip: int) -> dict[str, Any]:
        return self.index.table[int(self.index.keep[clip])]

    def __getitems__(self, windows: list[Window]) -> list[dict[str, Any]]:
        return [self.example(window) for window in windows]

    def __getitem__(self, window: Window) -> dict[str, Any]:
        return self.example(window)

    def example(self, window: Window) -> dict[str, Any]:
        rows = {piece.clip: self._row(piece.clip) for piece in window.pieces}
        waveform = self.audio(window, rows)
        speed = 1.0
        if self.augment:
            draw = self.augment.draw(window.epoch, window.name)
            # Slowed down, the window's audio must still fit the input window: no slower than that.
            speed = max(draw.speed, len(waveform) / self.window_samples)
            waveform = self.augment.apply(waveform, dataclasses.replace(draw, speed=speed))[: self.window_samples]
        features, pad_value = self.featurizer.log_mel(waveform)
        if window.no_speech:
            labels, text, ids = self.tokens.no_speech(), "", [window.name]
        else:
            segments = [((piece.offset + rows[piece.clip]["speech_start"] - piece.cut_start) / speed,
                         (piece.offset + rows[piece.clip]["speech_end"] - piece.cut_start) / speed,
                         list(rows[piece.clip]["tokens"])) for piece in window.pieces]
            prompt = [token for clip in window.prompt_clips  # its tokens only: no audio read for a prompt
                      for token in self.token_rows[int(self.index.keep[clip])]["tokens"]]
            labels = self.tokens.window(segments, window.timestamps, prompt, self.max_prompt_tokens)
            text = " ".join(rows[piece.clip]["text"].strip() for piece in window.pieces)
            ids = [rows[piece.clip]["id"] for piece in window.pieces]
        return {"id": "+".join(ids), "text": text, "input_features": features, "pad_value": pad_value,
                "labels": labels,
                "audio_seconds": sum(p.cut_end - p.cut_start for p in window.pieces if p.speech) / speed}

    def audio(self, window: Window, rows: dict[int, dict[str, Any]]) -> np.ndarray:
        length = (max((p.offset + p.cut_end - p.cut_start for p in window.pieces), default=0.0)
                  if not window.no_speech else window.seconds)
        waveform = np.zeros(min(self.window_samples, int(math.ceil(length * SAMPLING_RATE))), dtype=np.float32)
        if window.no_speech:
            noise = np.random.default_rng(window.noise_seed).standard_normal(len(waveform)).astype(np.float32)
            waveform += window.noise_level * noise
        for piece in window.pieces:
            clip = decode_flac(rows[piece.clip]["flac"])
            part = clip[int(round(piece.cut_start * SAMPLING_RATE)) : int(round(piece.cut_end * SAMPLING_RATE))]
            at = int(round(piece.offset * SAMPLING_RATE))
            part = part[: max(0, len(waveform) - at)]
            waveform[at : at + len(part)] += part
        return waveform


class WindowTokens:
    """Decoder token sequences with Whisper's special tokens, each looked up by name in the
    tokenizer (never computed from an offset: large-v3's ids differ from the older models')."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        unknown = tokenizer.unk_token_id

        def token(*names: str) -> int:
            for name in names:
                token_id = tokenizer.convert_tokens_to_ids(name)
                if token_id is not None and token_id != unknown:
                    return token_id
            raise UserError(f"the tokenizer has no {' or '.join(names)} token, which packed windows need; "
                            "use a multilingual Whisper tokenizer (openai/whisper-*)")

        self.start_of_prev = token("<|startofprev|>")
        self.start = token("<|startoftranscript|>")
        self.no_timestamps = token("<|notimestamps|>")
        self.no_speech_token = token("<|nospeech|>", "<|nocaptions|>")
        self.end = tokenizer.eos_token_id
        self.first_timestamp = token("<|0.00|>")
        self.last_timestamp = token("<|30.00|>")
        # <|startoftranscript|><|be|><|transcribe|>, without <|notimestamps|>
        self.prefix = [t for t in tokenizer.prefix_tokens if t != self.no_timestamps]

    def timestamp(self, seconds: float) -> int:
        name = f"<|{min(max(_quantize(seconds), 0.0), 30.0):.2f}|>"
        token_id = self.tokenizer.convert_tokens_to_ids(name)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise UserError(f"the tokenizer has no timestamp token {name}; use a Whisper tokenizer with "
                            "timestamp tokens (openai/whisper-*)")
        return token_id

    def window(self, segments: list[tuple[float, float, list[int]]], timestamps: bool, prompt: list[int],
               max_prompt_tokens: int) -> list[int]:
        labels = list(self.prefix)
        if timestamps:
            for start, end, tokens in segments:
                labels += [self.timestamp(start), *tokens, self.timestamp(max(end, start))]
        else:
            labels.append(self.no_timestamps)
            labels += [token for _, _, tokens in segments for token in tokens]
        labels.append(self.end)
        room = min(max_prompt_tokens, MAX_DECODER_POSITIONS - len(labels) - 1)
        if prompt and room > 0:
            return [self.start_of_prev, *prompt[-room:], *labels]
        return labels

    def no_speech(self) -> list[int]:
        return [self.start, self.no_speech_token, self.end]
