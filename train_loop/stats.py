"""Dataset statistics: exact clip counts, hours, duration and label-length percentiles per
split, and how many clips the training filters would drop (and why).

    python -m train_loop.stats --data_dir cv-corpus-11.0/be --model_name_or_path openai/whisper-small
    python -m train_loop.stats --dataset_name mozilla-foundation/common_voice_11_0 \\
        --dataset_config_name be --splits train,validation,test

Every clip is decoded once (the same preparation training does, cached and shared with it,
``--preprocessing_num_workers`` processes), so the numbers are exact and the next training
run on the same data starts without preparing again.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from .config import DataConfig, FilterConfig, SourceConfig, TrainConfig, flag, parse_sections
from .errors import UserError
from .features import SKIP_OVER_WINDOW

PERCENTILES = (5, 50, 95, 99)


@dataclass
class StatsConfig:
    """Which splits, and the tokenizer/feature extractor that defines label length and window."""

    splits: str = flag("train,validation,test", "Comma-separated splits ('+' concatenates within one).")
    model_name_or_path: str = flag("openai/whisper-small", "Model whose processor tokenizes the labels.")
    language: str = flag("be", "Language of the label prefix tokens.")
    task: str = flag("transcribe", "Task of the label prefix tokens.", ("transcribe", "translate"))


SECTIONS = {"stats": StatsConfig, "source": SourceConfig, "filters": FilterConfig}


def main(argv: list[str] | None = None) -> int:
    from .logger import make_line_buffered, quiet_library_output

    make_line_buffered()
    quiet_library_output()
    try:
        sections = parse_sections(SECTIONS, argv, prog="train_loop.stats", description=__doc__.split("\n\n")[0])
        print(dataset_statistics(sections["stats"], sections["source"], sections["filters"]))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


def dataset_statistics(options: StatsConfig, source: SourceConfig, filters: FilterConfig) -> str:
    from .data import cache_root, cache_key, featurizer_for, prepare_split, train_filters
    from .features import Filters
    from .model import load_processor
    from .sources import load_rows

    if bool(source.dataset_name) == bool(source.data_dir):
        raise UserError("give exactly one data source: --dataset_name (Hub) or --data_dir (local folder)")
    source.streaming = False  # statistics need every clip: prepare (and cache) the split
    processor = load_processor(options.model_name_or_path, options.language, options.task)
    data = DataConfig()
    config = TrainConfig(source=source, filters=filters, data=data)
    featurizer = featurizer_for(processor, data, "belarusian")
    key = cache_key(processor, data, "belarusian")
    training_filters = train_filters(config, processor)
    blocks = [f"filters: {training_filters.min_seconds:g}-{training_filters.max_seconds:g} s, "
              f"at most {training_filters.max_label_tokens} label tokens"]
    for split in [s.strip() for s in options.splits.split(",") if s.strip()]:
        rows = load_rows(source, split)
        # Keep every decodable clip here, so the statistics describe the whole split; the drop
        # counts below apply the training filters to the same table.
        everything = Filters(min_seconds=0.0, max_seconds=float("inf"), max_label_tokens=10**9)
        prepared = prepare_split(rows, featurizer, everything, cache_root(source),
                                 source.preprocessing_num_workers, key)
        blocks.append(_describe(split, rows.name, prepared, training_filters))
    return "\n\n".join(blocks)


def _describe(split: str, name: str, prepared, filters) -> str:
    table = prepared.table.with_format(None).select_columns(["skip_reason", "duration", "label_tokens"])
    meta = table.to_dict()
    # Clips longer than the model's window decode fine: they count in hours and percentiles.
    decodable = [i for i, reason in enumerate(meta["skip_reason"]) if reason in ("", SKIP_OVER_WINDOW)]
    durations = np.asarray(meta["duration"], dtype=np.float64)[decodable]
    labels = np.asarray(meta["label_tokens"], dtype=np.int64)[decodable]
    lines = [f"{split} ({name})",
             f"  clips: {len(meta['skip_reason']):,} listed, {len(decodable):,} decodable with a transcript, "
             f"{durations.sum() / 3600:.2f} hours"]
    if len(decodable):
        lines.append("  duration s:   " + _percentiles(durations, "{:.2f}") +
                     f"  min {durations.min():.2f}  max {durations.max():.2f}  mean {durations.mean():.2f}")
        lines.append("  label tokens: " + _percentiles(labels, "{:.0f}") +
                     f"  min {labels.min()}  max {labels.max()}  mean {labels.mean():.1f}")
    drops = dict(prepared.report.skipped)
    for i in range(len(meta["skip_reason"])):
        if meta["skip_reason"][i]:
            continue  # already counted in the report
        reason = filters.reason(float(meta["duration"][i]), int(meta["label_tokens"][i]))
        if reason:
            drops[reason] = drops.get(reason, 0) + 1
    if drops:
        lines.append(f"  training would drop {sum(drops.values()):,}: " +
                     ", ".join(f"{count:,} {reason}" for reason, count in sorted(drops.items(), key=lambda kv: -kv[1])))
        if prepared.report.examples:
            lines.append("  e.g. " + "; ".join(prepared.report.examples))
    else:
        lines.append("  training would drop none")
    return "\n".join(lines)


def _percentiles(values: np.ndarray, fmt: str) -> str:
    return "  ".join(f"p{p} {fmt.format(np.percentile(values, p))}" for p in PERCENTILES)


if __name__ == "__main__":
    sys.exit(main())
