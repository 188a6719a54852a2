"""Streaming: read rows as they come, shuffle, decode and batch in DataLoader workers, and
resume exactly where a checkpoint left off.

Each of the ``processes x workers`` readers owns a set of shards (the shard order is
reshuffled every epoch from (seed, epoch)) and a shuffle buffer. Its state is small and
exact: the epoch, its position (which shard, how many rows of it were read), the rows in its
buffer (references and text, not decoded audio) and its random generator. torchdata's
``StatefulDataLoader`` collects each worker's state with every batch it delivers, so a
checkpoint holds the state as of the last batch *trained on* (not the last one prefetched),
and restores every worker, and which worker is next, on resume.

Why not ``datasets.IterableDataset.state_dict()``: it does not save the shuffle buffer, so a
resume loses or repeats up to a buffer of rows (datasets#7901).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any, Iterator

import datasets
import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .collator import SpeechCollator
from .features import Featurizer, Filters, SkipReport
from .overlap import HELD_OUT_COLUMN

SKIP_EPOCH_REMAINDER = "end-of-epoch remainder smaller than a batch (reshuffled next epoch)"
LOCAL_SHARDS = 64  # local tables are cut into this many shards, so workers can split them


class RowShards:
    """A row source cut into shards that can be read from any row onward.

    A local table (streaming a local folder: references in memory, audio decoded later) is
    cut into ``LOCAL_SHARDS`` ranges and seeks directly. A Hub stream uses its own shards (its
    files); with ``limit`` (``--max_train_samples``) it is one shard read up to the limit.
    """

    def __init__(self, rows: datasets.Dataset | datasets.IterableDataset, limit: int | None = None):
        self.rows = rows
        self.limit = limit
        if isinstance(rows, datasets.Dataset):
            total = len(rows) if limit is None else min(limit, len(rows))
            count = max(1, min(total, LOCAL_SHARDS))
            bounds = np.linspace(0, total, count + 1).astype(int)
            self.ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
            self.num_shards = len(self.ranges)
        else:
            self.ranges = None
            self.num_shards = 1 if limit is not None else max(1, rows.num_shards)

    def read(self, shard: int, start: int) -> Iterator[dict[str, Any]]:
        """Rows of ``shard`` from row ``start`` on. A local table seeks; a remote stream is read
        from the shard's beginning and its first ``start`` rows are passed over undecoded
        (a shard is one file of the dataset, so this costs at most one file's download)."""
        if self.ranges is not None:
            low, high = self.ranges[shard]
            for index in range(low + start, high):
                yield self.rows[index]
            return
        if self.num_shards == 1:
            stream = self.rows if self.limit is None else self.rows.take(self.limit)
        else:
            stream = self.rows.shard(num_shards=self.num_shards, index=shard, contiguous=True)
        for position, row in enumerate(stream):
            if position >= start:
                yield row


class ShuffledReader:
    """One reader's rows of one epoch: its shards in order, through a shuffle buffer.

    The state is explicit and small: the position (which of its shards, how many rows of it
    were read, rows seen in all), the buffered rows (references and text, not decoded audio)
    and the random generator. ``state_dict`` between two rows is an exact place to resume.
    """

    def __init__(self, shards: RowShards, my_shards: list[int], strided: bool, reader: int, readers: int,
                 buffer_size: int, epoch: int, seed: int):
        self.shards, self.my_shards, self.strided = shards, my_shards, strided
        self.reader, self.readers, self.buffer_size = reader, readers, buffer_size
        self.epoch = epoch
        self.shard_position = 0  # index into my_shards
        self.row = 0  # rows of that shard already read
        self.rows_seen = 0  # rows read in all (the stride counts these)
        self.buffer: list[dict[str, Any]] = []
        self.rng = random.Random(f"{seed}-{epoch}-{reader}")

    def state_dict(self) -> dict[str, Any]:
        return {"phase": "reading", "epoch": self.epoch, "shard_position": self.shard_position, "row": self.row,
                "rows_seen": self.rows_seen, "buffer": list(self.buffer), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shard_position, self.row, self.rows_seen = state["shard_position"], state["row"], state["rows_seen"]
        self.buffer = list(state["buffer"])
        self.rng.setstate(_as_tuples(state["rng"]))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.shard_position < len(self.my_shards):
            for row in self.shards.read(self.my_shards[self.shard_position], self.row):
                self.row += 1
                self.rows_seen += 1
                if self.strided and (self.rows_seen - 1) % self.readers != self.reader:
                    continue
                row = {"id": row["id"], "audio": row["audio"], "text": row["text"]}
                if self.buffer_size <= 1:
                    yield row
                elif len(self.buffer) < self.buffer_size:
                    self.buffer.append(row)
                else:
                    slot = self.rng.randrange(len(self.buffer))
                    self.buffer[slot], row = row, self.buffer[slot]
                    yield row
            self.shard_position += 1
            self.row = 0
        while self.buffer:
            yield self.buffer.pop(self.rng.randrange(len(self.buffer)))


class StreamingBatches(IterableDataset):
    """Batches of exactly ``batch_size`` usable clips (the last of an epoch may be smaller when
    ``drop_last`` is false), each with ``skipped``: the rows dropped, by reason, since the
    previous batch of the same worker.

    ``process_index``/``num_processes`` split the shards between training processes; each
    DataLoader worker of a process then takes its own part (a ``ShuffledReader``).
    """

    def __init__(self, shards: RowShards, featurizer: Featurizer, filters: Filters,
                 collator: SpeechCollator, batch_size: int, shuffle_buffer_size: int = 0,
                 seed: int = 0, drop_last: bool = True, process_index: int = 0, num_processes: int = 1):
        self.shards = shards
        self.featurizer = featurizer
        self.filters = filters
        self.collator = collator
        self.batch_size = batch_size
        self.shuffle_buffer_size = shuffle_buffer_size
        self.seed = seed
        self.drop_last = drop_last
        self.process_index = process_index
        self.num_processes = num_processes
        self.epoch = 0
        self._reader: ShuffledReader | None = None  # reading this epoch
        self._restored: dict[str, Any] | None = None  # a reader's state to continue from
        self._done = False  # this reader finished the epoch

    def set_epoch(self, epoch: int) -> None:
        # Takes effect for the next iterator: workers get a fresh copy of this object.
        self.epoch = epoch

    # ---- state (called by StatefulDataLoader in the worker that owns it) ----------------

    def state_dict(self) -> dict[str, Any]:
        """``phase`` 'fresh' (nothing read this epoch), 'reading' (the reader's state) or 'done'
        (this reader finished the epoch)."""
        if self._done:
            return {"phase": "done", "epoch": self.epoch}
        if self._reader is not None:
            return self._reader.state_dict()
        if self._restored is not None:
            return dict(self._restored)
        return {"phase": "fresh", "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self._reader, self._done = None, state["phase"] == "done"
        self._restored = dict(state) if state["phase"] == "reading" else None

    # ---- reading ------------------------------------------------------------------------

    def _reader_index(self) -> tuple[int, int]:
        """(this reader's index, number of readers) over all processes and workers."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.process_index * workers + worker, self.num_processes * workers

    def _my_shards(self, epoch: int, reader: int, readers: int) -> tuple[list[int], bool]:
        """This reader's shards in this epoch's order; with fewer shards than readers every
        reader reads all shards and keeps every ``readers``-th row (the bool)."""
        order = list(range(self.shards.num_shards))
        if self.shuffle_buffer_size > 1:
            random.Random(f"{self.seed}-{epoch}-shards").shuffle(order)
        if self.shards.num_shards >= readers:
            return order[reader::readers], False
        return order, True

    def _start_reader(self) -> ShuffledReader:
        reader, readers = self._reader_index()
        my_shards, strided = self._my_shards(self.epoch, reader, readers)
        started = ShuffledReader(self.shards, my_shards, strided, reader, readers, self.shuffle_buffer_size,
                                 self.epoch, self.seed)
        if self._restored is not None:
            started.load_state_dict(self._restored)
            self._restored = None
        return started

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._done:
            self._done = False  # restored at the end of an epoch: nothing left to read
            return
        self._reader = reader = self._start_reader()
        examples: list[dict[str, Any]] = []
        skipped: Counter = Counter()
        details: list[str] = []
        for row in reader:
            if row.get(HELD_OUT_COLUMN):  # a stream's rows shared with dev/test (overlap.py) are counted here
                skipped[row[HELD_OUT_COLUMN]] += 1
                continue
            example = self.featurizer(row["id"], row["audio"], row["text"], epoch=self.epoch)
            reason = example["skip_reason"] or self.filters.reason(example["duration"], example["label_tokens"])
            if reason:
                skipped[reason] += 1
                if example["detail"] and len(details) < 3:
                    details.append(example["detail"])
                continue
            examples.append(example)
            if len(examples) == self.batch_size:
                batch = self.collator(examples)
                batch["skipped"] = _report(len(examples), skipped, details)
                examples, skipped, details = [], Counter(), []
                yield batch
        # The epoch is over for this reader; a checkpoint taken from here on must not read it again.
        self._reader, self._done = None, True
        if examples and not self.drop_last:
            batch = self.collator(examples)
            batch["skipped"] = _report(len(examples), skipped, details)
            yield batch
        else:
            if examples:
                skipped[SKIP_EPOCH_REMAINDER] += len(examples)
            if sum(skipped.values()):
                # No batch left to yield, but the rows read since the last one must be counted.
                yield {"skipped": _report(0, skipped, details), "ids": []}
        self._done = False


def _as_tuples(state: Any) -> Any:
    """random.Random.setstate needs tuples; a state that went through a checkpoint may hold lists."""
    return tuple(_as_tuples(item) for item in state) if isinstance(state, (list, tuple)) else state


def _report(used: int, skipped: Counter, details: list[str]) -> SkipReport:
    report = SkipReport(split="", rows=used + sum(skipped.values()), skipped=Counter(skipped))
    report.examples = list(details)
    return report
