"""Several training sources in fixed shares (``--mix_data_dir``, ``--mix_weight``): English replay
against forgetting, or a related language when the main one has little data.

Each source keeps its own batches' contract (``ShardedBatchSampler`` for prepared clips,
``PackedBatchSampler`` for packed windows), seeded apart, and labels its examples with its own
language token. ``MixedBatchSampler`` makes one training order out of them:

* an epoch is the main source's epoch (all its clips or windows) plus, from every mixed source,
  ``round(N * weight / main weight)`` items, where N is the main source's count in epoch 0;
* a mixed source is read in its own order, epoch after epoch of its own, continuing where the
  previous mixed epoch stopped: a small source repeats, a large one is seen through over time;
* the items of all sources are shuffled together from (seed, epoch) and cut into global batches,
  process ``p`` taking slice ``p`` of each, as ``ShardedBatchSampler`` does.

So the order is a pure function of (seed, epoch): a resume at batch ``k`` continues it exactly,
and one process with batch 8 draws the same clips per step as two with batch 4. How many clips
each source gave up to any position (``clips_drawn``, logged as ``mix_clips``) is computed from
the order too, so it needs no state in the checkpoint.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from .samplers import process_slices

MIX_SEED_STRIDE = 1_000_003  # source s draws its own order from seed + s * stride


def items_of(sampler, epoch: int) -> list:
    """One source's training items of its epoch ``epoch``, in order: windows or clip positions."""
    if hasattr(sampler, "windows"):
        return sampler.windows(epoch)
    return sampler.order(epoch).tolist()


def clips_in(item) -> int:
    """Transcribed clips in one item: a window's speech pieces, or one clip."""
    if hasattr(item, "pieces"):
        return sum(piece.speech for piece in item.pieces) if not item.no_speech else 0
    return 1


class MixedBatchSampler(torch.utils.data.Sampler):
    """Global batches of (source number, item) pairs; source 0 is the main source."""

    def __init__(self, samplers: list, names: list[str], weights: list[float], batch_size: int,
                 num_processes: int = 1, process_index: int = 0, seed: int = 0):
        self.samplers, self.names = samplers, names
        self.main = samplers[0]
        main_weight = 1.0 - sum(weights)
        per_epoch = len(items_of(self.main, 0))
        self.counts = [per_epoch] + [max(1, round(per_epoch * w / main_weight)) for w in weights]
        self.batch_size, self.num_processes, self.process_index, self.seed = (
            batch_size, num_processes, process_index, seed)
        self.epoch = self.start_batch = 0
        self._mixed: dict[int, list[tuple[int, Any]]] = {}
        self._lengths: list[dict[int, int]] = [{} for _ in samplers]  # source -> its epoch -> items
        self._totals: dict[int, np.ndarray] = {}  # epoch -> _running_counts

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_processes

    def _length(self, source: int, own_epoch: int) -> int:
        lengths = self._lengths[source]
        if own_epoch not in lengths:
            lengths[own_epoch] = len(items_of(self.samplers[source], own_epoch))
        return lengths[own_epoch]

    def _source_items(self, source: int, epoch: int) -> list:
        """Mixed source ``source``'s items for mixed epoch ``epoch``: positions
        [epoch x count, (epoch + 1) x count) of its endless sequence of own epochs."""
        count = self.counts[source]
        position, own_epoch = epoch * count, 0
        while position >= self._length(source, own_epoch):
            position -= self._length(source, own_epoch)
            own_epoch += 1
        taken: list = []
        while len(taken) < count:
            taken += items_of(self.samplers[source], own_epoch)[position : position + count - len(taken)]
            position, own_epoch = 0, own_epoch + 1
        return taken

    def mixed(self, epoch: int) -> list[tuple[int, Any]]:
        """Epoch ``epoch``'s (source, item) pairs in training order."""
        if epoch not in self._mixed:
            pairs = [(0, item) for item in items_of(self.main, epoch)]
            for source in range(1, len(self.samplers)):
                pairs += [(source, item) for item in self._source_items(source, epoch)]
            order = np.random.default_rng([self.seed, epoch, 4049]).permutation(len(pairs))
            self._mixed = {epoch: [pairs[i] for i in order]}  # keep one epoch
        return self._mixed[epoch]

    def batches_per_epoch(self) -> int:
        return len(self.mixed(self.epoch)) // self.global_batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[list[tuple[int, Any]]]:
        return process_slices(self.mixed(self.epoch), self.batch_size, self.num_processes, self.process_index,
                              self.start_batch)

    def clips_drawn(self, epoch: int, batches_done: int) -> dict[str, int]:
        """Clips each source gave to training up to ``batches_done`` global batches into ``epoch``
        (over all processes; the remainder an epoch leaves out is not counted). Called for every
        metrics row: each epoch is counted once, into running sums per global batch."""
        total = np.zeros(len(self.names), dtype=np.int64)
        for earlier in range(epoch):
            total += self._running_counts(earlier)[-1]
        total += self._running_counts(epoch)[batches_done]
        return {name: int(count) for name, count in zip(self.names, total)}

    def _running_counts(self, epoch: int) -> np.ndarray:
        """(batches + 1, sources): clips per source in the epoch's first k global batches."""
        if epoch not in self._totals:
            pairs = self.mixed(epoch)
            batches = len(pairs) // self.global_batch_size
            per_pair = np.zeros((batches * self.global_batch_size, len(self.names)), dtype=np.int64)
            for position, (source, item) in enumerate(pairs[: len(per_pair)]):
                per_pair[position, source] = clips_in(item)
            per_batch = per_pair.reshape(batches, self.global_batch_size, -1).sum(axis=1)
            self._totals[epoch] = np.concatenate([np.zeros((1, len(self.names)), dtype=np.int64),
                                                  np.cumsum(per_batch, axis=0)])
        return self._totals[epoch]


class MixedExamples(torch.utils.data.Dataset):
    """(source, item) pairs to examples, each read by its source's dataset. A mixed source's ids
    are prefixed with its name ("en:train/0001.wav"): two folders may both hold a train/0001.wav."""

    def __init__(self, datasets: list, names: list[str]):
        self.datasets, self.names = datasets, names

    def __len__(self) -> int:
        return sum(len(dataset) for dataset in self.datasets)

    def __getitems__(self, pairs: list[tuple[int, Any]]) -> list[dict[str, Any]]:
        examples: list[dict[str, Any] | None] = [None] * len(pairs)
        for source in sorted({source for source, _ in pairs}):
            where = [i for i, (s, _) in enumerate(pairs) if s == source]
            for i, example in zip(where, self.datasets[source].__getitems__([pairs[i][1] for i in where])):
                if source:
                    example["id"] = f"{self.names[source]}:{example['id']}"
                examples[i] = example
        return examples

    def __getitem__(self, pair: tuple[int, Any]) -> dict[str, Any]:
        return self.__getitems__([pair])[0]
