"""Dataset statistics: exact clip counts, hours, duration and label-length percentiles per
split, and how many clips the training filters would drop (and why).

    python -m train_loop.stats --data_dir cv-corpus-23.0-2025-09-05/be
    python -m train_loop.stats --data_dir cv-corpus-23.0-2025-09-05/be --model_name_or_path runs/small-be
    python -m train_loop.stats --dataset_name USER/DATASET --splits train,test

Every clip is decoded once, so the numbers are exact. Without a model (the default) that is
all: counts, hours and durations need no tokenizer, and nothing is downloaded. With
``--model_name_or_path`` (a local Whisper folder or a Hub id) the clips are prepared exactly as
training prepares them (cached and shared with it, ``--preprocessing_num_workers`` processes):
label lengths in tokens are added, and the next training run starts without preparing again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from .core.console import run_tool
from .core.errors import UserError
from .core.flags import at_least, flag, parse_sections
from .data.config import DataConfig, FilterConfig, PackingConfig, SourceConfig
from .data.features import SKIP_OVER_WINDOW
from .evaluation.config import SavedModelConfig

# The parts that load torch, transformers or datasets are imported inside the functions that use
# them, so `--help` answers at once.

PERCENTILES = (5, 50, 95, 99)


@dataclass
class StatsConfig:
    """Which splits, and the tokenizer/feature extractor that defines label length and window."""

    _argument_group_name = "Which splits and which tokenizer (stats)"

    splits: str = flag("train,validation,test", "Comma-separated splits ('+' concatenates within one).")
    show_examples: int = flag(
        0, "Print the first N training examples of the first split as the model sees them: the decoder "
        "input with its special tokens (<|startofprev|>, timestamps, <|nocaptions|>) and which tokens "
        "carry loss. Needs --model; honours the packing flags (--pack_to_window ...).", check=at_least(0))
    seed: int = flag(42, "--show_examples: the training run's --seed (the order and draws of the examples).")
    held_out_splits: str = flag(
        "validation,test", "Splits a training run evaluates and tests on: every other split is checked against them "
        "as training checks its training split (clips sharing a speaker, a normalized sentence or a file are counted, "
        "with the hours left). 'none' skips the check.")


# --model (or --model_name_or_path): the Whisper whose processor tokenizes the labels; it adds label
# lengths and prepares the features training reuses (none: counts, hours and durations need no
# model). --language and --task give the label prefix (default: the model's language, else be).
SECTIONS = {"stats": StatsConfig, "saved": SavedModelConfig, "source": SourceConfig, "filters": FilterConfig,
            "packing": PackingConfig}


def main(argv: list[str] | None = None) -> int:
    def body():
        sections = parse_sections(SECTIONS, argv, prog="train_loop.stats", description=__doc__.split("\n\n")[0])
        options = sections["stats"]
        if options.show_examples:
            print(training_examples(options, sections["source"], sections["filters"], sections["packing"],
                                    sections["saved"]))
            return
        print(dataset_statistics(options, sections["source"], sections["filters"], sections["saved"]))

    return run_tool(body)


def dataset_statistics(options: StatsConfig, source: SourceConfig, filters: FilterConfig,
                       saved: SavedModelConfig | None = None) -> str:
    from .data.sources import load_rows

    source.kind()
    source.streaming = False  # statistics need every clip
    saved = saved or SavedModelConfig()
    measure = (_Prepared(source, filters, saved) if saved.model
               else _DecodedOnly(source, filters))
    blocks = [measure.header()]
    splits = [s.strip() for s in options.splits.split(",") if s.strip()]
    held_out, held_names = _held_out(source, options.held_out_splits, splits)
    for split in splits:
        rows = load_rows(source, split)
        reasons = None
        if held_out.splits and split not in held_names:
            from .data.overlap import clip_reasons

            reasons = clip_reasons(rows.rows, held_out)
        blocks.append(_describe(split, rows.name, *measure(rows), speakers=list(rows.rows["speaker"]),
                                held_out=(held_names, reasons) if reasons is not None else None))
    return "\n\n".join(blocks)


def _held_out(source: SourceConfig, held_out_splits: str, splits: list[str]):
    """The rows of the held-out splits that exist (as training collects them), and their names."""
    from .core.text import get_normalizer
    from .data.overlap import HeldOut
    from .data.sources import has_split, load_rows, split_names
    from .evaluation.config import ScoringConfig

    held_out = HeldOut(get_normalizer(ScoringConfig().eval_normalizer))
    if held_out_splits.strip().lower() == "none":
        return held_out, []
    names = [s.strip() for s in held_out_splits.split(",") if s.strip()]
    names = [name for name in names if name in splits or has_split(source, name)]
    for name in names:
        for part in split_names(name):
            held_out.add(load_rows(source, part))
    return held_out, names


def training_examples(options: StatsConfig, source: SourceConfig, filters: FilterConfig, packing: PackingConfig,
                      saved: SavedModelConfig) -> str:
    """``--show_examples N``: the first N examples of the first split, built exactly as training
    builds them (one process, the given seed), shown token by token."""
    import torch
    from accelerate import Accelerator

    from .core.model import load_processor, model_language
    from .data.build import build_train_batches

    if not saved.model:
        raise UserError("--show_examples needs --model: its tokenizer and feature extractor build the examples")
    source.kind()
    token_language = model_language(saved.model, saved.language) or "be"
    processor = load_processor(saved.model, token_language, saved.task)
    split = [s.strip() for s in options.splits.split(",") if s.strip()][0]
    data = DataConfig(train_split_name=split, dataloader_num_workers=0)
    batches = build_train_batches(source, data, filters, processor, Accelerator(cpu=True), batch_size=1,
                                  seed=options.seed, eval_normalizer="belarusian", packing=packing)
    tokenizer = processor.tokenizer
    window = processor.feature_extractor.n_samples / processor.feature_extractor.sampling_rate
    blocks = [f"{split}: the first {options.show_examples} training examples (seed {options.seed}); "
              "[token] = decoder input whose next token carries loss, (token) = input without loss"]
    try:
        for number in range(options.show_examples):
            batch = next(batches)
            inputs, labels = batch["decoder_input_ids"][0], batch["labels"][0]
            used = labels != -100
            shown = []
            for position, token in enumerate(inputs.tolist()):
                if position >= len(labels) or (not used[position:].any()):
                    break
                piece = tokenizer.decode([token], skip_special_tokens=False, decode_with_timestamps=True)
                shown.append(f"[{piece}]" if used[position] else f"({piece})")
            last = labels[used][-1:].tolist()
            ending = tokenizer.decode(last, skip_special_tokens=False) if last else ""
            blocks.append(
                f"example {number + 1}: {batch['ids'][0]}\n"
                f"  audio: {batch['audio_seconds']:.2f} s of clips in a {window:g} s input window\n"
                f"  reference: {batch['texts'][0]}\n"
                f"  decoder: {''.join(shown)} -> {ending}\n"
                f"  loss on {int(used.sum())} of {len(inputs)} positions")
    finally:
        batches.close()
    del torch
    return "\n\n".join(blocks)


class _Prepared:
    """Clips prepared as training prepares them (log-mel + tokenized labels), cached."""

    def __init__(self, source: SourceConfig, filters: FilterConfig, saved: SavedModelConfig):
        from .core.model import load_processor, model_language
        from .data.build import train_filters
        from .data.features import featurizer_for
        from .data.prepared import cache_key

        self.source = source
        token_language = model_language(saved.model, saved.language) or "be"
        processor = load_processor(saved.model, token_language, saved.task)
        data = DataConfig()
        self.featurizer = featurizer_for(processor, data, "belarusian")
        self.key = cache_key(processor, data, "belarusian")
        self.filters = train_filters(filters, processor)

    def header(self) -> str:
        return (f"filters: {self.filters.min_seconds:g}-{self.filters.max_seconds:g} s, at most "
                f"{self.filters.max_label_tokens} label tokens")

    def __call__(self, rows):
        from .data.features import Filters
        from .data.prepared import cache_root, prepare_split

        # Keep every decodable clip, so the statistics describe the whole split; the drop
        # counts apply the training filters to the same table.
        everything = Filters(min_seconds=0.0, max_seconds=float("inf"), max_label_tokens=10**9)
        prepared = prepare_split(rows, self.featurizer, everything, cache_root(self.source),
                                 self.source.preprocessing_num_workers, self.key)
        table = prepared.table.with_format(None).select_columns(["skip_reason", "duration", "label_tokens"])
        prepared.report.add_left_out(rows.dropped)
        return table.to_dict(), prepared.report, self.filters


class _DecodedOnly:
    """Every clip decoded for its length; no model, no tokenizer, no features."""

    def __init__(self, source: SourceConfig, filters: FilterConfig):
        from .data.features import Filters

        self.source = source
        # Whisper's window is 30 s for every released model; label lengths are unknown here.
        self.filters = Filters(min_seconds=filters.min_duration_in_seconds,
                               max_seconds=min(filters.max_duration_in_seconds, 30.0), max_label_tokens=10**9)

    def header(self) -> str:
        return (f"filters: {self.filters.min_seconds:g}-{self.filters.max_seconds:g} s (label lengths in "
                "tokens need --model_name_or_path)")

    def __call__(self, rows):
        from .data.features import SkipReport

        num_proc = max(1, min(self.source.preprocessing_num_workers, len(rows.rows)))
        measured = rows.rows.map(_measure_batch, batched=True, batch_size=16, num_proc=num_proc if num_proc > 1 else None,
                                 remove_columns=rows.rows.column_names,
                                 desc=f"Decoding {rows.split} ({len(rows.rows):,} clips)")
        meta = measured.to_dict()
        report = SkipReport(split=rows.split, rows=len(meta["duration"]))
        for reason, detail in zip(meta["skip_reason"], meta["detail"]):
            if reason:
                report.add(reason, detail)
        meta["label_tokens"] = None
        report.add_left_out(rows.dropped)
        return meta, report, self.filters


def _measure_batch(batch: dict[str, list]) -> dict[str, list]:
    """map() function: duration of each clip, or why it cannot be used."""
    from .data.audio import SAMPLING_RATE, AudioDecodeError, decode_audio
    from .data.features import SKIP_EMPTY_TEXT, SKIP_UNREADABLE

    out: dict[str, list] = {"duration": [], "skip_reason": [], "detail": []}
    for audio, text in zip(batch["audio"], batch["text"]):
        duration, reason, detail = 0.0, "", ""
        if not text or not text.strip():
            reason = SKIP_EMPTY_TEXT
        else:
            try:
                duration = len(decode_audio(audio, SAMPLING_RATE)) / SAMPLING_RATE
            except AudioDecodeError as err:
                reason, detail = SKIP_UNREADABLE, str(err)
        out["duration"].append(duration)
        out["skip_reason"].append(reason)
        out["detail"].append(detail)
    return out


def _describe(split: str, name: str, meta: dict, report, filters, speakers: list[str] | None = None,
              held_out: tuple[list[str], list[str]] | None = None) -> str:
    # Clips longer than the model's window decode fine: they count in hours and percentiles.
    decodable = [i for i, reason in enumerate(meta["skip_reason"]) if reason in ("", SKIP_OVER_WINDOW)]
    durations = np.asarray(meta["duration"], dtype=np.float64)[decodable]
    lines = [f"{split} ({name})",
             f"  clips: {report.rows:,} listed, {len(decodable):,} decodable with a transcript, "
             f"{durations.sum() / 3600:.2f} hours"]
    labels = None if meta["label_tokens"] is None else np.asarray(meta["label_tokens"], dtype=np.int64)[decodable]
    if len(decodable):
        lines.append("  duration s:   " + _percentiles(durations, "{:.2f}") +
                     f"  min {durations.min():.2f}  max {durations.max():.2f}  mean {durations.mean():.2f}")
        if labels is not None:
            lines.append("  label tokens: " + _percentiles(labels, "{:.0f}") +
                         f"  min {labels.min()}  max {labels.max()}  mean {labels.mean():.1f}")
    drops = dict(report.skipped)
    for i in range(len(meta["skip_reason"])):
        if meta["skip_reason"][i]:
            continue  # already counted in the report
        label_tokens = 0 if meta["label_tokens"] is None else int(meta["label_tokens"][i])
        reason = filters.reason(float(meta["duration"][i]), label_tokens)
        if reason:
            drops[reason] = drops.get(reason, 0) + 1
    if drops:
        lines.append(f"  training would drop {sum(drops.values()):,}: " +
                     ", ".join(f"{count:,} {reason}" for reason, count in sorted(drops.items(), key=lambda kv: -kv[1])))
        if report.examples:
            lines.append("  e.g. " + "; ".join(report.examples))
    else:
        lines.append("  training would drop none")
    if speakers is not None:
        lines.append(_speaker_line(speakers))
    if held_out is not None:
        lines.append(_held_out_line(*held_out, meta, filters))
    return "\n".join(lines)


def _speaker_line(speakers: list[str]) -> str:
    named = [speaker for speaker in speakers if speaker]
    if not named:
        return "  speakers: unknown (no speaker column; --speaker_column_name)"
    from collections import Counter

    per_speaker = np.asarray(sorted(Counter(named).values()), dtype=np.float64)
    line = (f"  speakers: {len(per_speaker):,}; clips per speaker: {_percentiles(per_speaker, '{:.0f}')}  "
            f"max {per_speaker.max():.0f}")
    if len(named) < len(speakers):
        line += f" ({len(speakers) - len(named):,} clips without a speaker)"
    return line


def _held_out_line(held_names: list[str], reasons: list[str], meta: dict, filters) -> str:
    from .data.features import SKIP_OVER_WINDOW
    from .data.overlap import HELD_OUT_REASONS

    counts = {reason: reasons.count(reason) for reason in HELD_OUT_REASONS}
    found = ", ".join(f"{count:,} {reason}" for reason, count in counts.items() if count) or "none"
    kept = [i for i, reason in enumerate(reasons) if not reason and meta["skip_reason"][i] in ("", SKIP_OVER_WINDOW)
            and not filters.reason(float(meta["duration"][i]),
                                   0 if meta["label_tokens"] is None else int(meta["label_tokens"][i]))]
    hours = float(np.sum(np.asarray(meta["duration"], dtype=np.float64)[kept])) / 3600 if kept else 0.0
    return (f"  shared with {' + '.join(held_names)}: {found}; as a training split it keeps {len(kept):,} clips, "
            f"{hours:.2f} hours (after the filters; --allow_eval_overlap keeps the shared ones)")


def _percentiles(values: np.ndarray, fmt: str) -> str:
    return "  ".join(f"p{p} {fmt.format(np.percentile(values, p))}" for p in PERCENTILES)


if __name__ == "__main__":
    sys.exit(main())
