"""DataLoaders for prepared splits and streams, and the resumable stream of training batches.

``TrainBatches`` is what the loop consumes: endless micro-batches across epochs with a position
(epoch, batches done) that a checkpoint records and a resume restores.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing
import os
import signal
from collections import Counter
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader

from ..core.errors import UserError
from .collator import SpeechCollator
from .features import SkipReport
from .samplers import ShardedBatchSampler
from .streaming import StreamingBatches


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
    if num_workers > 0:
        end_workers_at_exit()
    kwargs: dict[str, Any] = dict(num_workers=num_workers, pin_memory=pin_memory,
                                  generator=torch.Generator().manual_seed(0),
                                  worker_init_fn=ignore_stop_signals)
    if num_workers > 0:
        kwargs["prefetch_factor"] = 4
    if batch_sampler is not None:
        if num_workers > 0:
            kwargs["persistent_workers"] = True  # the sampler (main process) carries the epoch
        return DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collator, **kwargs)
    from torchdata.stateful_dataloader import StatefulDataLoader

    # No persistent workers: each epoch's workers get a fresh copy that knows the new epoch.
    return StatefulDataLoader(dataset, batch_size=None, **kwargs)


def end_workers_at_exit() -> None:
    """At interpreter exit, end this process's worker processes with SIGKILL. multiprocessing's
    own exit handler ends them with SIGTERM, which DataLoader workers ignore (see
    ignore_stop_signals), so it would wait for them forever. Registered after multiprocessing's
    handler, this one runs before it."""
    def kill_workers() -> None:
        for child in multiprocessing.active_children():
            if child.daemon:
                child.kill()
                child.join(timeout=10)

    if not getattr(end_workers_at_exit, "registered", False):
        atexit.register(kill_workers)
        end_workers_at_exit.registered = True


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: leave SIGTERM/SIGINT/SIGHUP to the training process, which stops
    cleanly on them (training/preemption.py) and shuts its workers down itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def close_loader(loader) -> None:
    """Stop a DataLoader's worker processes now. Persistent workers otherwise live as long as
    the loader, and at interpreter exit multiprocessing ends them with SIGTERM, which they
    ignore (ignore_stop_signals): the exit would wait for them forever."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    if hasattr(loader, "_iterator"):
        loader._iterator = None


def steps_for_epochs(batches_per_epoch: int, epochs: float, accumulation: int) -> int:
    return max(1, math.ceil(batches_per_epoch * epochs / accumulation))


class TrainBatches:
    """Endless training micro-batches across epochs, with a resumable position.

    The position is (epoch, micro-batches of that epoch this process consumed). Prepared data
    resumes by starting the sampler at that batch: no clip before it is read. A stream resumes
    from its loader's state (each reader's shard, row, shuffle buffer and generator), so no row
    is read twice and none is lost.
    """

    def __init__(self, loader, sampler: ShardedBatchSampler | None, stream: StreamingBatches | None,
                 report: SkipReport, num_clips: int | None, fingerprint: str = "", rows_key: str = "",
                 exclusion=None):
        self.loader = loader
        self.fingerprint = fingerprint  # of the rows and files: recorded in every checkpoint's manifest
        self.rows_key = rows_key  # of the ordered rows a position refers to: checked on resume
        self.sampler = sampler
        self.stream = stream
        self.report = report  # prepared: fixed at preparation; streaming: grows as rows are read
        self.num_clips = num_clips
        self.exclusion = exclusion  # overlap.Exclusion: training rows shared with dev/test (None: not checked)
        self.mix_parts: list = []  # build.MixPart of every mixed source (--mix_data_dir)
        self.epoch = 0
        self.batches_done = 0
        self._iterator: Iterator | None = None
        self._loader_state: dict[str, Any] | None = None  # a stream's state, to restore on next()

    @property
    def batches_per_epoch(self) -> int | None:
        return self.sampler.batches_per_epoch() if self.sampler is not None else None

    def mix_clips(self) -> dict[str, int] | None:
        """With mixed sources: clips each source gave so far, over all processes (None without)."""
        drawn = getattr(self.sampler, "clips_drawn", None)
        return drawn(self.epoch, self.batches_done) if drawn is not None else None

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

    def close(self) -> None:
        """Stop the loader's worker processes (see close_loader)."""
        if self._iterator is not None and hasattr(self._iterator, "_shutdown_workers"):
            self._iterator._shutdown_workers()
        self._iterator = None
        close_loader(self.loader)

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
