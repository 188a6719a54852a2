"""Training and evaluation data: prepared (cached features) or streamed (decoded in workers).

Prepared: every clip is decoded and turned into log-mel features once, by
``--preprocessing_num_workers`` processes, and stored under the cache folder keyed by a
fingerprint of the rows, files and processor. The next run with the same data reuses it.
Batches are drawn by ``ShardedBatchSampler``: an order that depends only on (seed, epoch),
cut into global batches, each process taking its slice. Resuming starts at a batch index;
the skipped clips are never read.

Streaming: rows are read from the source as they come, shuffled through a buffer that is
reshuffled every epoch, decoded and featurized in DataLoader workers, and batched there.

Both report every row they do not use, with the reason.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader

from .collator import SpeechCollator
from .config import default_cache_dir
from .distributed import once_per_node
from .features import SKIP_UNREADABLE, Featurizer, Filters, SkipReport
from .preemption import ignore_stop_signals
from .errors import UserError
from .sources import RowSource, content_hash, load_rows
from .streaming import RowShards, StreamingBatches

PREPARE_BATCH_SIZE = 16  # rows per map() call: small, so progress and memory stay smooth


# --------------------------------------------------------------------------------------------
# Prepared datasets
# --------------------------------------------------------------------------------------------


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
                 "labels": rows["labels"][i]} for i in range(len(positions))]

    def __getitem__(self, position: int) -> dict[str, Any]:
        return self.__getitems__([position])[0]

    def durations(self) -> np.ndarray:
        return np.asarray(self.table.with_format(None)["duration"], dtype=np.float32)[self.keep]

    def ids(self) -> list[str]:
        every = self.table.with_format(None).select_columns(["id"])[:]["id"]
        return [str(every[int(position)]) for position in self.keep]


def prepare_split(source: RowSource, featurizer: Featurizer, filters: Filters, cache_root: str,
                  num_proc: int, cache_key: str, max_rows: int | None = None) -> PreparedSplit:
    """Featurize ``source`` once (cached on disk) and select the rows ``filters`` keep."""
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
        reason = reason or filters.reason(duration, label_tokens)
        if reason:
            report.add(reason, detail if reason == SKIP_UNREADABLE else "")
        else:
            keep.append(position)
    return PreparedSplit(table, np.asarray(keep, dtype=np.int64), report)


class ShardedBatchSampler(torch.utils.data.Sampler):
    """Deterministic, resumable batches for every process.

    Epoch ``e`` orders the rows by a permutation seeded with (seed, e) and cuts it into global
    batches of ``batch_size * num_processes``; process ``p`` takes slice ``p`` of each. So one
    process with batch 4, two with batch 2, and batch 2 with 2 accumulation steps all see the
    same clips in every optimizer step. ``set_epoch(e, start_batch=k)`` resumes at batch ``k``
    without touching the rows before it. The last incomplete global batch of an epoch is left
    out (a different remainder every epoch, since the order is reshuffled).
    """

    def __init__(self, num_rows: int, batch_size: int, num_processes: int = 1,
                 process_index: int = 0, seed: int = 0, shuffle: bool = True):
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_processes

    def __len__(self) -> int:
        return self.num_rows // self.global_batch_size - self.start_batch

    def batches_per_epoch(self) -> int:
        return self.num_rows // self.global_batch_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_rows)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order(self.epoch)
        lo = self.process_index * self.batch_size
        for batch in range(self.start_batch, self.batches_per_epoch()):
            start = batch * self.global_batch_size
            yield order[start + lo : start + lo + self.batch_size].tolist()


def is_empty_batch(batch: dict[str, Any]) -> bool:
    return not batch["ids"]


def loader_workers(data_config, streaming: bool, accelerator) -> int:
    """``--dataloader_num_workers``, or its default for this machine (see the flag's help)."""
    if data_config.dataloader_num_workers is not None:
        return data_config.dataloader_num_workers
    if not streaming and accelerator.device.type == "cpu":
        return 0
    cores = (os.cpu_count() or 1) // max(1, accelerator.num_processes)
    return max(1, min(4, cores))


def make_loader(dataset, collator: SpeechCollator | None, num_workers: int, pin_memory: bool,
                batch_sampler=None):
    """A DataLoader for a prepared split (with a batch sampler) or a stream (batches made by the
    dataset in its workers). A stream gets torchdata's StatefulDataLoader, which hands back,
    with every batch, the state of the worker that made it: so a checkpoint can record the
    position of the batches *trained on*, not of those prefetched."""
    # Its own generator: a DataLoader draws a seed for its workers from the global torch RNG at
    # every new iterator, and a resumed run starts one at another moment than the original did;
    # the dropout stream that shares the global RNG would then be shifted after every resume.
    kwargs: dict[str, Any] = dict(num_workers=num_workers, pin_memory=pin_memory,
                                  generator=torch.Generator().manual_seed(0),
                                  worker_init_fn=ignore_stop_signals)  # see preemption.py
    if num_workers > 0:
        kwargs["prefetch_factor"] = 4
    if batch_sampler is not None:
        if num_workers > 0:
            kwargs["persistent_workers"] = True  # the sampler (main process) carries the epoch
        return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collator, **kwargs)
    from torchdata.stateful_dataloader import StatefulDataLoader

    # No persistent workers: each epoch's workers get a fresh copy that knows the new epoch.
    return StatefulDataLoader(dataset, batch_size=None, **kwargs)


def steps_for_epochs(batches_per_epoch: int, epochs: float, accumulation: int) -> int:
    return max(1, math.ceil(batches_per_epoch * epochs / accumulation))


# --------------------------------------------------------------------------------------------
# What the training loop and the evaluator consume
# --------------------------------------------------------------------------------------------


class TrainBatches:
    """Endless training micro-batches across epochs, with a resumable position.

    The position is (epoch, micro-batches of that epoch this process consumed). Prepared data
    resumes by starting the sampler at that batch: no clip before it is read. A stream resumes
    from its loader's state (each reader's shard, row, shuffle buffer and generator), so no row
    is read twice and none is lost.
    """

    def __init__(self, loader, sampler: ShardedBatchSampler | None, stream: StreamingBatches | None,
                 report: SkipReport, num_clips: int | None, fingerprint: str = "", rows_key: str = ""):
        self.loader = loader
        self.fingerprint = fingerprint  # of the rows and files: recorded in every checkpoint's manifest
        self.rows_key = rows_key  # of the ordered rows a position refers to: checked on resume
        self.sampler = sampler
        self.stream = stream
        self.report = report  # prepared: fixed at preparation; streaming: grows as rows are read
        self.num_clips = num_clips
        self.epoch = 0
        self.batches_done = 0
        self._iterator: Iterator | None = None
        self._loader_state: dict[str, Any] | None = None  # a stream's state, to restore on next()

    @property
    def batches_per_epoch(self) -> int | None:
        return self.sampler.batches_per_epoch() if self.sampler is not None else None

    def seek(self, epoch: int, batches_done: int) -> None:
        self.epoch, self.batches_done = epoch, batches_done
        self._iterator = None

    def state_dict(self) -> dict[str, Any]:
        """This process's data position (a stream's includes its readers' states)."""
        state: dict[str, Any] = {"epoch": self.epoch, "batches_done": self.batches_done}
        if self.stream is not None:
            state["loader"] = (self.loader.state_dict() if self._iterator is not None
                               else self._loader_state)
            state["report"] = {"rows": self.report.rows, "skipped": dict(self.report.skipped),
                               "examples": list(self.report.examples)}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seek(state["epoch"], state["batches_done"])
        if self.stream is not None:
            self._loader_state = state.get("loader")
            report = state.get("report") or {}
            self.report.rows = report.get("rows", 0)
            self.report.skipped = Counter(report.get("skipped", {}))
            self.report.examples = list(report.get("examples", []))

    def _start_epoch(self) -> Iterator:
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch, start_batch=self.batches_done)
            return iter(self.loader)
        self.stream.set_epoch(self.epoch)
        if self._loader_state is not None:
            self.loader.load_state_dict(self._loader_state)
            self._loader_state = None
        return iter(self.loader)

    def __iter__(self) -> "TrainBatches":
        return self

    def __next__(self) -> dict[str, Any]:
        while True:
            if self._iterator is None:
                self._iterator = self._start_epoch()
            try:
                batch = next(self._iterator)
            except StopIteration:
                if self.batches_done == 0:
                    raise UserError(f"the training data produced no batch in a whole epoch ({self.report.summary()}); "
                                    "check the data and the filters (--min/--max_duration_in_seconds, "
                                    "--max_label_length) or lower --per_device_train_batch_size") from None
                self.epoch, self.batches_done, self._iterator = self.epoch + 1, 0, None
                continue
            if "skipped" in batch:
                self.report.merge(batch["skipped"])
                if is_empty_batch(batch):
                    continue
            self.batches_done += 1
            return batch


@dataclass
class EvalSet:
    split: str
    loader: DataLoader
    streaming: bool
    report: SkipReport | None  # None for a stream that has not been read yet
    num_clips: int | None  # usable clips in the whole set, when known
    clips_for_process: int | None  # for this process's progress bar
    left_out: dict[str, list[str]] = field(default_factory=dict)  # manifest rows (RowSource.dropped)


def featurizer_for(processor, data_config, eval_normalizer: str) -> Featurizer:
    from .text import get_normalizer

    normalizer = get_normalizer(eval_normalizer) if data_config.do_remove_punctuation else None
    lower = data_config.do_lower_case
    return Featurizer(processor.feature_extractor, processor.tokenizer,
                      label_text=_LabelText(lower, normalizer),
                      feature_dtype=data_config.prepared_feature_dtype)


class _LabelText:
    """Picklable label-text function for map() workers."""

    def __init__(self, lower: bool, normalizer):
        self.lower, self.normalizer = lower, normalizer

    def __call__(self, text: str) -> str:
        from .text import prepare_label_text

        return prepare_label_text(text, self.lower, self.normalizer)


def cache_key(processor, data_config, eval_normalizer: str) -> str:
    """Everything that changes prepared features or labels (filters are applied afterwards)."""
    tokenizer = processor.tokenizer
    probe = tokenizer("Раз'яднаць ўсё, 123!").input_ids
    return content_hash(
        "features-v1", sorted(processor.feature_extractor.to_dict().items()), len(tokenizer),
        probe, data_config.do_lower_case, data_config.do_remove_punctuation,
        eval_normalizer if data_config.do_remove_punctuation else "", data_config.prepared_feature_dtype)


def collator_for(processor) -> SpeechCollator:
    tokenizer = processor.tokenizer
    return SpeechCollator(
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        pad_token_id=tokenizer.pad_token_id,
        total_frames=processor.feature_extractor.nb_max_frames)


def eval_batches(durations: np.ndarray, batch_size: int, num_processes: int,
                 process_index: int) -> list[list[int]]:
    """Longest clips first (a batch of similar lengths finishes together, and memory peaks at
    the start), dealt round-robin to processes. Every process gets the same number of batches
    (generation under ZeRO-3 needs all of them in every step): one short of a batch repeats a
    clip, which the merge by id removes."""
    order = np.argsort(-durations, kind="stable")
    mine = order[process_index::num_processes]
    batches = [mine[i : i + batch_size].tolist() for i in range(0, len(mine), batch_size)]
    most = math.ceil(math.ceil(len(order) / num_processes) / batch_size)
    while len(batches) < most:
        batches.append([int(order[0])])
    return batches


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def cache_root(source_config) -> str:
    return source_config.cache_dir or default_cache_dir()


def _window_seconds(processor) -> float:
    return processor.feature_extractor.n_samples / processor.feature_extractor.sampling_rate


def train_filters(config, processor) -> Filters:
    flt = config.filters
    return Filters(min_seconds=flt.min_duration_in_seconds,
                   max_seconds=min(flt.max_duration_in_seconds, _window_seconds(processor)),
                   max_label_tokens=flt.max_label_length)


def eval_filters(processor) -> Filters:
    # Evaluation keeps every clip the model can hear; only audio longer than its window goes.
    return Filters(min_seconds=0.0, max_seconds=_window_seconds(processor), max_label_tokens=10**9)


def build_train_batches(config, processor, accelerator) -> TrainBatches:
    src, data = config.source, config.data
    featurizer = featurizer_for(processor, data, config.eval.eval_normalizer)
    collator = collator_for(processor)
    filters = train_filters(config, processor)
    batch_size = config.training.per_device_train_batch_size
    pin = accelerator.device.type == "cuda"
    rows = load_rows(src, data.train_split_name, streaming=src.streaming)
    if src.streaming:
        stream = StreamingBatches(RowShards(rows.rows, limit=data.max_train_samples), featurizer,
                                  filters, collator, batch_size,
                                  shuffle_buffer_size=data.shuffle_buffer_size,
                                  seed=config.training.seed, drop_last=True,
                                  process_index=accelerator.process_index,
                                  num_processes=accelerator.num_processes)
        loader = make_loader(stream, None, loader_workers(data, True, accelerator), pin)
        if isinstance(rows.rows, datasets.Dataset):
            rows_key = content_hash(data.max_train_samples, *rows.rows["id"])
        else:
            rows_key = content_hash(rows.name, data.max_train_samples)
        report = SkipReport(split=data.train_split_name)
        report.add_left_out(rows.dropped)
        return TrainBatches(loader, None, stream, report, rows.num_rows, rows.fingerprint, rows_key)
    prepared = once_per_node(accelerator, lambda: prepare_split(
        rows, featurizer, filters, cache_root(src), src.preprocessing_num_workers,
        cache_key(processor, data, config.eval.eval_normalizer), max_rows=data.max_train_samples))
    prepared.report.add_left_out(rows.dropped)
    if len(prepared) < batch_size * accelerator.num_processes:
        raise UserError(
            f"{rows.name}: only {len(prepared)} usable training clips, fewer than one global batch "
            f"({batch_size} x {accelerator.num_processes} processes); lower "
            f"--per_device_train_batch_size or add data ({prepared.report.summary()})")
    sampler = ShardedBatchSampler(len(prepared), batch_size, accelerator.num_processes,
                                  accelerator.process_index, seed=config.training.seed)
    loader = make_loader(prepared, collator, loader_workers(data, False, accelerator), pin, batch_sampler=sampler)
    rows_key = content_hash(*prepared.ids())
    return TrainBatches(loader, sampler, None, prepared.report, len(prepared), rows.fingerprint, rows_key)


def build_eval_set(config, processor, accelerator, split: str, max_samples: int | None,
                   streaming: bool | None = None) -> EvalSet:
    src, data = config.source, config.data
    streaming = src.streaming if streaming is None else streaming
    featurizer = featurizer_for(processor, data, config.eval.eval_normalizer)
    collator = collator_for(processor)
    batch_size = config.eval.per_device_eval_batch_size
    pin = accelerator.device.type == "cuda"
    rows = load_rows(src, split, streaming=streaming)
    if streaming:
        known = min(max_samples, rows.num_rows) if (max_samples and rows.num_rows) else (max_samples or rows.num_rows)
        stream = StreamingBatches(RowShards(rows.rows, limit=max_samples), featurizer,
                                  eval_filters(processor), collator, batch_size,
                                  shuffle_buffer_size=0, drop_last=False,
                                  process_index=accelerator.process_index,
                                  num_processes=accelerator.num_processes)
        loader = make_loader(stream, None, loader_workers(data, True, accelerator), pin)
        per_process = math.ceil(known / accelerator.num_processes) if known else None
        return EvalSet(split, loader, True, None, known, per_process, left_out=rows.dropped)
    prepared = once_per_node(accelerator, lambda: prepare_split(
        rows, featurizer, eval_filters(processor), cache_root(src), src.preprocessing_num_workers,
        cache_key(processor, data, config.eval.eval_normalizer), max_rows=max_samples))
    prepared.report.add_left_out(rows.dropped)
    if len(prepared) == 0:
        raise UserError(f"{rows.name}: no usable evaluation clips ({prepared.report.summary()})")
    batches = eval_batches(prepared.durations(), batch_size, accelerator.num_processes,
                           accelerator.process_index)
    loader = make_loader(prepared, collator, loader_workers(data, False, accelerator), pin, batch_sampler=batches)
    return EvalSet(split, loader, False, prepared.report, len(prepared), sum(len(b) for b in batches))
