"""Which clips go into which batch, on which process: the training order (shuffled per epoch,
resumable at any batch) and the evaluation order (longest first, dealt to processes)."""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch


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

    def global_batches(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s global batches, one row of clip positions each."""
        used = self.batches_per_epoch() * self.global_batch_size
        return self.order(epoch)[:used].reshape(-1, self.global_batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.global_batches(self.epoch)
        lo = self.process_index * self.batch_size
        for batch in range(self.start_batch, self.batches_per_epoch()):
            yield batches[batch, lo : lo + self.batch_size].tolist()


def process_slices(items: list, batch_size: int, num_processes: int, process_index: int,
                   start_batch: int) -> Iterator[list]:
    """Process ``process_index``'s part of each global batch of ``items`` from ``start_batch`` on
    (the contract of ``ShardedBatchSampler`` for samplers over windows or mixed pairs)."""
    global_batch = batch_size * num_processes
    lo = process_index * batch_size
    for batch in range(start_batch, len(items) // global_batch):
        first = batch * global_batch + lo
        yield items[first : first + batch_size]


class LengthGroupedBatchSampler(ShardedBatchSampler):
    """``--group_by_length``: batches of clips with similar transcript lengths, so the decoder
    pads less, in an order that is still shuffled and a pure function of (seed, epoch).

    Each epoch takes the shuffled order of ``ShardedBatchSampler``, cuts it into groups of
    ``group_batches`` global batches, sorts each group by label length (longest first) and cuts
    it into global batches; then the batches themselves are shuffled, so long and short steps
    alternate through the epoch. As every batch is fixed by (seed, epoch, lengths), resuming
    at batch ``k`` is as exact as without grouping. (Hugging Face's ``group_by_length`` groups
    50 batches in the same way; unlike it, this order does not depend on the global RNG.)
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, num_processes: int = 1,
                 process_index: int = 0, seed: int = 0, group_batches: int = 50):
        super().__init__(len(lengths), batch_size, num_processes, process_index, seed)
        self.lengths = np.asarray(lengths)
        self.group_batches = group_batches

    def global_batches(self, epoch: int) -> np.ndarray:
        batches = super().global_batches(epoch)
        groups = []
        for start in range(0, len(batches), self.group_batches):
            group = batches[start : start + self.group_batches].reshape(-1)
            longest_first = np.argsort(-self.lengths[group], kind="stable")
            groups.append(group[longest_first].reshape(-1, self.global_batch_size))
        grouped = np.concatenate(groups) if groups else batches
        return grouped[np.random.default_rng([self.seed, epoch, 1]).permutation(len(grouped))]


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
