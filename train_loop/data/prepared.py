"""Prepared splits: every clip decoded and turned into log-mel features and labels once, by
``--preprocessing_num_workers`` processes, and stored under the cache folder keyed by a
fingerprint of the rows, files and processor (``cache_key``). The next run with the same data
reuses it; filters are applied afterwards, so changing one needs no new preparation. Every row
left out is counted in the split's ``SkipReport``.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
import numpy as np
import torch

from .config import default_cache_dir
from .features import SKIP_NONFINITE_FEATURES, SKIP_UNREADABLE, Featurizer, Filters, SkipReport
from .sources import RowSource, content_hash

PREPARE_BATCH_SIZE = 16  # rows per map() call: small, so progress and memory stay smooth


def _prepared_features(feature_dtype: str, n_mels: int) -> datasets.Features:
    return datasets.Features({
        "id": datasets.Value("string"),
        "text": datasets.Value("string"),
        # (frames, mels): the frame axis varies per clip, which Array2D allows only first.
        "input_features": datasets.Array2D(shape=(None, n_mels), dtype=feature_dtype),
        "pad_value": datasets.Value("float32"),
        "labels": datasets.List(datasets.Value("int32")),
        "label_tokens": datasets.Value("int32"),
        "duration": datasets.Value("float32"),
        "skip_reason": datasets.Value("string"),
        "detail": datasets.Value("string"),
    })


class _FeaturizeBatch:
    """map() function: picklable, so --preprocessing_num_workers processes can run it."""

    def __init__(self, featurizer: Featurizer):
        self.featurizer = featurizer
        self.parent_pid = os.getpid()

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if os.getpid() != self.parent_pid and torch.get_num_threads() > 1:
            # A forked worker must not enter torch's thread pool: the parent's OpenMP state does
            # not survive fork, and the first parallel op (the STFT) would hang forever.
            # Parallelism comes from the worker processes.
            torch.set_num_threads(1)
        out: dict[str, list] = {}
        for row_id, audio, text in zip(batch["id"], batch["audio"], batch["text"]):
            example = self.featurizer(row_id, audio, text)
            features = example["input_features"]
            example["input_features"] = (np.zeros((0, self.featurizer.feature_extractor.feature_size),
                                                  dtype=self.featurizer.feature_dtype)
                                         if features is None else features.T)
            for key, value in example.items():
                out.setdefault(key, []).append(value)
        return out


class PreparedSplit(torch.utils.data.Dataset):
    """Featurized rows on disk; ``__getitems__`` returns examples for the collator."""

    def __init__(self, table: datasets.Dataset, keep: np.ndarray, report: SkipReport):
        self.table = table.with_format("numpy")
        self.keep = keep  # positions in ``table`` of the rows used
        self.report = report

    def __len__(self) -> int:
        return len(self.keep)

    def __getitems__(self, positions: list[int]) -> list[dict[str, Any]]:
        rows = self.table[[int(self.keep[p]) for p in positions]]
        return [{"id": str(rows["id"][i]), "text": str(rows["text"][i]),
                 "input_features": rows["input_features"][i].T, "pad_value": float(rows["pad_value"][i]),
                 "labels": rows["labels"][i], "duration": float(rows["duration"][i])}
                for i in range(len(positions))]

    def __getitem__(self, position: int) -> dict[str, Any]:
        return self.__getitems__([position])[0]

    def durations(self) -> np.ndarray:
        return np.asarray(self.table.with_format(None)["duration"], dtype=np.float32)[self.keep]

    def label_lengths(self) -> np.ndarray:
        return np.asarray(self.table.with_format(None)["label_tokens"], dtype=np.int64)[self.keep]

    def ids(self) -> list[str]:
        every = self.table.with_format(None).select_columns(["id"])[:]["id"]
        return [str(every[int(position)]) for position in self.keep]


def prepare_split(source: RowSource, featurizer: Featurizer, filters: Filters, cache_root: str,
                  num_proc: int, cache_key: str, max_rows: int | None = None,
                  left_out: list[str] | None = None) -> PreparedSplit:
    """Featurize ``source`` once (cached on disk) and select the rows ``filters`` keep; ``left_out``
    names, per row, a reason to leave it out before any filter ("" to keep it: overlap.py)."""
    rows = source.rows
    if max_rows is not None and max_rows < len(rows):
        rows = rows.select(range(max_rows))
    fingerprint = content_hash(source.fingerprint, cache_key, len(rows))
    folder = os.path.join(cache_root, "prepared", fingerprint)
    os.makedirs(folder, exist_ok=True)
    n_mels = featurizer.feature_extractor.feature_size
    num_proc = max(1, min(num_proc, len(rows)))
    table = rows.map(
        _FeaturizeBatch(featurizer), batched=True, batch_size=PREPARE_BATCH_SIZE,
        num_proc=num_proc if num_proc > 1 else None, remove_columns=rows.column_names,
        features=_prepared_features(featurizer.feature_dtype.name, n_mels),
        cache_file_name=os.path.join(folder, "features.arrow"), load_from_cache_file=True,
        desc=f"Preparing {source.split} ({len(rows):,} clips, {num_proc} processes)")
    meta = table.select_columns(["skip_reason", "detail", "duration", "label_tokens"]).to_dict()
    report = SkipReport(split=source.split, rows=len(table))
    keep = []
    for position, (reason, detail, duration, label_tokens) in enumerate(zip(
            meta["skip_reason"], meta["detail"], meta["duration"], meta["label_tokens"])):
        reason = (left_out[position] if left_out else "") or reason or filters.reason(duration, label_tokens)
        if reason:
            report.add(reason, detail if reason in (SKIP_UNREADABLE, SKIP_NONFINITE_FEATURES) else "")
        else:
            keep.append(position)
    return PreparedSplit(table, np.asarray(keep, dtype=np.int64), report)


def cache_key(processor, data_config, eval_normalizer: str) -> str:
    """Everything that changes prepared features or labels (filters are applied afterwards)."""
    tokenizer = processor.tokenizer
    probe = tokenizer("Раз'яднаць ўсё, 123!").input_ids
    return content_hash(
        "features-v1", sorted(processor.feature_extractor.to_dict().items()), len(tokenizer),
        probe, data_config.do_lower_case, data_config.do_remove_punctuation,
        eval_normalizer if data_config.do_remove_punctuation else "", data_config.prepared_feature_dtype)


def cache_root(source_config) -> str:
    return source_config.cache_dir or default_cache_dir()
