"""Training and evaluation data, built from the config sections: prepared (cached features,
``prepared.py``) or streamed (decoded in DataLoader workers, ``streaming.py``), batched by
``samplers.py``, loaded by ``loaders.py``. ``open_split`` is where the two paths part.

Prepared: batches are drawn by ``ShardedBatchSampler`` (an order that depends only on (seed,
epoch)); resuming starts at a batch index, and the skipped clips are never read. Streaming:
rows are read as they come, shuffled through a buffer that is reshuffled every epoch, decoded
and featurized in workers. Both report every row they do not use, with the reason.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import datasets
from torch.utils.data import DataLoader

from ..core.errors import UserError
from ..core.processes import once_per_node
from .augment import Augmenter
from .collator import SpeechCollator
from .config import DataConfig, FilterConfig, MixSource, PackingConfig, SourceConfig
from .features import Featurizer, Filters, SkipReport, featurizer_for
from .loaders import TrainBatches, loader_workers, make_loader
from .mixing import MIX_SEED_STRIDE, MixedBatchSampler, MixedExamples
from .overlap import Exclusion, HeldOut, exclude_held_out
from .packing import PackedBatchSampler, PackedWindows, PackingPlan, index_split
from .prepared import PreparedSplit, cache_key, cache_root, prepare_split
from .samplers import LengthGroupedBatchSampler, ShardedBatchSampler, eval_batches
from .sources import RowSource, content_hash, load_rows
from .streaming import RowShards, StreamingBatches


@dataclass
class EvalSet:
    split: str
    loader: DataLoader
    streaming: bool
    report: SkipReport | None  # None for a stream that has not been read yet
    num_clips: int | None  # usable clips in the whole set, when known
    clips_for_process: int | None  # for this process's progress bar
    left_out: dict[str, list[str]] = field(default_factory=dict)  # manifest rows (RowSource.dropped)


def collator_for(processor) -> SpeechCollator:
    tokenizer = processor.tokenizer
    return SpeechCollator(
        decoder_start_token_id=tokenizer.convert_tokens_to_ids("<|startoftranscript|>"),
        pad_token_id=tokenizer.pad_token_id,
        total_frames=processor.feature_extractor.nb_max_frames)


def _window_seconds(processor) -> float:
    return processor.feature_extractor.n_samples / processor.feature_extractor.sampling_rate


def train_filters(filters: FilterConfig, processor) -> Filters:
    return Filters(min_seconds=filters.min_duration_in_seconds,
                   max_seconds=min(filters.max_duration_in_seconds, _window_seconds(processor)),
                   max_label_tokens=filters.max_label_length)


def eval_filters(processor) -> Filters:
    # Evaluation keeps every clip the model can hear; only audio longer than its window goes.
    return Filters(min_seconds=0.0, max_seconds=_window_seconds(processor), max_label_tokens=10**9)


@dataclass
class Split:
    """One split, ready to batch: prepared (features cached on disk, filters applied) or a stream
    (decoded as it is read). The one place where the two paths part."""

    rows: RowSource
    featurizer: Featurizer
    collator: SpeechCollator
    filters: Filters
    prepared: PreparedSplit | None  # None when streaming
    pin_memory: bool

    def stream(self, accelerator, batch_size: int, *, max_rows: int | None, shuffle_buffer_size: int,
               seed: int, drop_last: bool) -> StreamingBatches:
        return StreamingBatches(RowShards(self.rows.rows, limit=max_rows), self.featurizer, self.filters,
                                self.collator, batch_size, shuffle_buffer_size=shuffle_buffer_size, seed=seed,
                                drop_last=drop_last, process_index=accelerator.process_index,
                                num_processes=accelerator.num_processes)


def open_split(source: SourceConfig, data: DataConfig, processor, accelerator, split: str, filters: Filters, *,
               streaming: bool, max_rows: int | None, eval_normalizer: str,
               exclusion: Exclusion | None = None) -> Split:
    """Read ``split``'s rows (``exclusion``'s, when given: the training split's); unless streaming,
    prepare its features (once per node, cached)."""
    featurizer = featurizer_for(processor, data, eval_normalizer)
    if exclusion is None:
        rows = load_rows(source, split, streaming=streaming)
    else:  # a stream reads only the kept rows; a prepared split leaves the others out after preparing
        rows = exclusion.selected() if streaming else exclusion.rows
    prepared = None
    if not streaming:
        left_out = exclusion.reasons if exclusion is not None else None
        prepared = once_per_node(accelerator, lambda: prepare_split(
            rows, featurizer, filters, cache_root(source), source.preprocessing_num_workers,
            cache_key(processor, data, eval_normalizer), max_rows=max_rows, left_out=left_out))
        prepared.report.add_left_out(rows.dropped)
    return Split(rows, featurizer, collator_for(processor), filters, prepared,
                 pin_memory=accelerator.device.type == "cuda")


def training_rows(source: SourceConfig, data: DataConfig, held_out: HeldOut | None, streaming: bool = False
                  ) -> Exclusion:
    """The training split's rows and which of them share a speaker, sentence or file with
    ``held_out`` (left out, counted; with --allow_eval_overlap only counted: ``overlap.py``)."""
    rows = load_rows(source, data.train_split_name, streaming=streaming)
    return exclude_held_out(rows, held_out or HeldOut(str), data.allow_eval_overlap)


def build_train_batches(source: SourceConfig, data: DataConfig, filters: FilterConfig, processor, accelerator,
                        *, batch_size: int, seed: int, eval_normalizer: str,
                        packing: PackingConfig | None = None, held_out: HeldOut | None = None,
                        mix: list[MixSource] | tuple = (), augment: Augmenter | None = None) -> TrainBatches:
    """``eval_normalizer`` shapes the labels only with --do_remove_punctuation; ``held_out``: what the
    run evaluates on, which training leaves out (``overlap.py``); ``mix``: more sources in fixed
    shares (``mixing.py``); ``augment``: audio augmentation (``augment.py``; packed or streamed data)."""
    if packing is not None and packing.pack_to_window:
        main = build_packed_batches(source, data, filters, packing, processor, accelerator, batch_size=batch_size,
                                    seed=seed, eval_normalizer=eval_normalizer, held_out=held_out, augment=augment)
    else:
        main = build_clip_batches(source, data, filters, processor, accelerator, batch_size=batch_size, seed=seed,
                                  eval_normalizer=eval_normalizer, held_out=held_out, augment=augment)
    if not mix:
        return main
    return build_mixed_batches(main, source.data_dir or source.dataset_name, mix, data, filters, packing, processor,
                               accelerator, batch_size=batch_size, seed=seed, eval_normalizer=eval_normalizer,
                               held_out=held_out, augment=augment)


def build_clip_batches(source: SourceConfig, data: DataConfig, filters: FilterConfig, processor, accelerator,
                       *, batch_size: int, seed: int, eval_normalizer: str,
                       held_out: HeldOut | None = None, augment: Augmenter | None = None) -> TrainBatches:
    """One clip per example, prepared (cached features) or streamed (augmented with ``augment``)."""
    exclusion = training_rows(source, data, held_out, streaming=source.streaming)
    split = open_split(source, data, processor, accelerator, data.train_split_name, train_filters(filters, processor),
                       streaming=source.streaming, max_rows=data.max_train_samples, eval_normalizer=eval_normalizer,
                       exclusion=exclusion)
    workers = loader_workers(data, source.streaming, accelerator)
    rows = split.rows
    if augment is not None and split.prepared is not None:
        raise UserError("audio augmentation needs the audio in the loader's workers: add --pack_to_window or --streaming")
    if split.prepared is None:
        split.featurizer.augment = augment
        stream = split.stream(accelerator, batch_size, max_rows=data.max_train_samples,
                              shuffle_buffer_size=data.shuffle_buffer_size, seed=seed, drop_last=True)
        loader = make_loader(stream, None, workers, split.pin_memory)
        if isinstance(rows.rows, datasets.Dataset):
            rows_key = content_hash(data.max_train_samples, *rows.rows["id"])
        else:
            rows_key = content_hash(rows.name, data.max_train_samples)
        report = SkipReport(split=data.train_split_name)
        report.add_left_out(rows.dropped)
        return TrainBatches(loader, None, stream, report, rows.num_rows, rows.fingerprint, rows_key,
                            exclusion=exclusion)
    prepared = split.prepared
    if len(prepared) < batch_size * accelerator.num_processes:
        raise UserError(
            f"{rows.name}: only {len(prepared)} usable training clips, fewer than one global batch "
            f"({batch_size} x {accelerator.num_processes} processes); lower "
            f"--per_device_train_batch_size or add data ({prepared.report.summary()})")
    if data.group_by_length:
        sampler = LengthGroupedBatchSampler(prepared.label_lengths(), batch_size, accelerator.num_processes,
                                            accelerator.process_index, seed=seed)
    else:
        sampler = ShardedBatchSampler(len(prepared), batch_size, accelerator.num_processes,
                                      accelerator.process_index, seed=seed)
    loader = make_loader(prepared, split.collator, workers, split.pin_memory, batch_sampler=sampler)
    return TrainBatches(loader, sampler, None, prepared.report, len(prepared), rows.fingerprint,
                        content_hash(*prepared.ids()), exclusion=exclusion)


def build_packed_batches(source: SourceConfig, data: DataConfig, filters: FilterConfig, packing: PackingConfig,
                         processor, accelerator, *, batch_size: int, seed: int, eval_normalizer: str,
                         held_out: HeldOut | None = None, augment: Augmenter | None = None) -> TrainBatches:
    """``--pack_to_window``: the split indexed once (cached), windows planned per epoch
    (``packing.py``), featurized in the loader's workers."""
    if source.streaming:
        raise UserError("--pack_to_window needs the whole split's index (durations, speech bounds and speakers "
                        "to fill windows): drop --streaming (packing decodes audio in the loader's workers anyway)")
    featurizer = featurizer_for(processor, data, eval_normalizer)
    exclusion = training_rows(source, data, held_out)
    rows = exclusion.rows
    index = once_per_node(accelerator, lambda: index_split(
        rows, featurizer, train_filters(filters, processor), packing.speech_bounds, cache_root(source),
        source.preprocessing_num_workers, cache_key(processor, data, eval_normalizer), max_rows=data.max_train_samples,
        left_out=exclusion.reasons))
    index.report.add_left_out(rows.dropped)
    prefix = [t for t in processor.tokenizer.prefix_tokens
              if t != processor.tokenizer.convert_tokens_to_ids("<|notimestamps|>")]
    plan = PackingPlan(window_seconds=featurizer.window_seconds, max_label_tokens=filters.max_label_length,
                       prefix_tokens=len(prefix) - 1, timestamp_probability=packing.timestamp_probability,
                       prev_text_probability=packing.prev_text_probability,
                       no_speech_probability=packing.no_speech_probability)
    sampler = PackedBatchSampler(index, plan, batch_size, accelerator.num_processes, accelerator.process_index,
                                 seed=seed)
    if sampler.batches_per_epoch() == 0:
        raise UserError(
            f"{rows.name}: {len(index)} usable clips pack into {len(sampler.windows(0))} windows, fewer than one "
            f"global batch ({batch_size} x {accelerator.num_processes} processes); lower "
            f"--per_device_train_batch_size or add data ({index.report.summary()})")
    dataset = PackedWindows(index, featurizer, filters.max_label_length, augment=augment)
    # Windows are decoded and featurized in workers, as a stream is: the streaming default applies.
    workers = loader_workers(data, True, accelerator)
    loader = make_loader(dataset, collator_for(processor), workers, accelerator.device.type == "cuda",
                         batch_sampler=sampler)
    return TrainBatches(loader, sampler, None, index.report, len(index), rows.fingerprint,
                        content_hash("packed", *index.ids()), exclusion=exclusion)


@dataclass
class MixPart:
    """One mixed source, ready to draw from."""

    name: str
    sampler: Any  # ShardedBatchSampler or PackedBatchSampler
    dataset: Any  # PreparedSplit or PackedWindows
    report: SkipReport
    rows_key: str
    fingerprint: str
    exclusion: Exclusion


def build_mixed_batches(main: TrainBatches, main_name: str, mix: list[MixSource], data: DataConfig, filters: FilterConfig,
                        packing: PackingConfig | None, processor, accelerator, *, batch_size: int, seed: int,
                        eval_normalizer: str, held_out: HeldOut | None, augment: Augmenter | None = None) -> TrainBatches:
    """The main source's batches with ``mix``'s sources drawn in (``mixing.py``)."""
    packed = packing is not None and packing.pack_to_window
    parts = []
    for number, mixed in enumerate(mix, start=1):
        part_seed = seed + number * MIX_SEED_STRIDE
        try:
            parts.append(_mix_part(mixed, data, filters, packing if packed else None,
                                   processor_for_language(processor, mixed.language), accelerator,
                                   batch_size=batch_size, seed=part_seed, eval_normalizer=eval_normalizer,
                                   held_out=held_out, augment=augment))
        except UserError as err:  # name the flag the folder came from
            raise UserError(str(err).replace("--data_dir", "--mix_data_dir").replace("--dataset_name",
                                                                                       "--mix_dataset_name")) from None
    sampler = MixedBatchSampler([main.sampler] + [part.sampler for part in parts],
                                [main_name] + [part.name for part in parts], [m.weight for m in mix], batch_size,
                                accelerator.num_processes, accelerator.process_index, seed=seed)
    dataset = MixedExamples([main.loader.dataset] + [part.dataset for part in parts], sampler.names)
    loader = make_loader(dataset, main.loader.collate_fn, main.loader.num_workers, main.loader.pin_memory,
                         batch_sampler=sampler)
    batches = TrainBatches(
        loader, sampler, None, main.report, main.num_clips,
        content_hash(main.fingerprint, *(part.fingerprint for part in parts)),
        content_hash("mixed", main.rows_key, *((part.rows_key, m.weight, m.language) for part, m in zip(parts, mix))),
        exclusion=main.exclusion)
    batches.mix_parts = parts
    return batches


def _mix_part(mixed: MixSource, data: DataConfig, filters: FilterConfig, packing: PackingConfig | None, processor,
              accelerator, *, batch_size: int, seed: int, eval_normalizer: str, held_out: HeldOut | None,
              augment: Augmenter | None) -> MixPart:
    split_data = dataclasses.replace(data, train_split_name=mixed.split, max_train_samples=None)
    if packing is not None:
        one = build_packed_batches(mixed.source, split_data, filters, packing, processor, accelerator,
                                   batch_size=batch_size, seed=seed, eval_normalizer=eval_normalizer,
                                   held_out=held_out, augment=augment)
    else:
        one = build_clip_batches(mixed.source, split_data, filters, processor, accelerator, batch_size=batch_size,
                                 seed=seed, eval_normalizer=eval_normalizer, held_out=held_out, augment=augment)
    one.report.split = f"{mixed.name}:{mixed.split} ({mixed.language})"
    return MixPart(mixed.name, one.sampler, one.loader.dataset, one.report, one.rows_key, one.fingerprint,
                   one.exclusion)


def processor_for_language(processor, language: str):
    """The processor's feature extractor and a copy of its tokenizer whose prefix names ``language``."""
    tokenizer = copy.deepcopy(processor.tokenizer)
    token = tokenizer.convert_tokens_to_ids(f"<|{language}|>")
    if token is None or token == tokenizer.unk_token_id:
        raise UserError(f"--mix_language {language}: not a language Whisper has a token for; use its code "
                        "(en, uk, ru, pl, ...)")
    tokenizer.set_prefix_tokens(language=language)
    return SimpleNamespace(feature_extractor=processor.feature_extractor, tokenizer=tokenizer)


def build_eval_set(source: SourceConfig, data: DataConfig, processor, accelerator, split: str, *,
                   batch_size: int, max_samples: int | None, eval_normalizer: str,
                   streaming: bool | None = None) -> EvalSet:
    """``data`` gives the loader workers and the label preparation (which the cache key holds)."""
    streaming = source.streaming if streaming is None else streaming
    opened = open_split(source, data, processor, accelerator, split, eval_filters(processor),
                        streaming=streaming, max_rows=max_samples, eval_normalizer=eval_normalizer)
    workers = loader_workers(data, streaming, accelerator)
    rows = opened.rows
    if opened.prepared is None:
        known = min(max_samples, rows.num_rows) if (max_samples and rows.num_rows) else (max_samples or rows.num_rows)
        stream = opened.stream(accelerator, batch_size, max_rows=max_samples, shuffle_buffer_size=0, seed=0,
                               drop_last=False)
        loader = make_loader(stream, None, workers, opened.pin_memory)
        per_process = math.ceil(known / accelerator.num_processes) if known else None
        return EvalSet(split, loader, True, None, known, per_process, left_out=rows.dropped)
    prepared = opened.prepared
    if len(prepared) == 0:
        raise UserError(f"{rows.name}: no usable evaluation clips ({prepared.report.summary()})")
    batches = eval_batches(prepared.durations(), batch_size, accelerator.num_processes, accelerator.process_index)
    loader = make_loader(prepared, opened.collator, workers, opened.pin_memory, batch_sampler=batches)
    return EvalSet(split, loader, False, prepared.report, len(prepared), sum(len(b) for b in batches))
