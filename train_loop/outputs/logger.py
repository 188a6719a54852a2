"""Run logging: console lines flushed at once, train.log, metrics.jsonl and TensorBoard.

stdout is line-buffered (``core.console``) and every line is flushed as it is written, so a log piped through
``| tee`` or collected by a scheduler shows each step when it happens (a block-buffered stdout
would show them in bursts). Progress bars go to stderr, and only to a terminal, so piped logs
hold clean lines.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

from tqdm.auto import tqdm

from .trackers import scalar_name


def finite_or_none(value: Any) -> Any:
    """NaN and infinity are not JSON (``json.dumps`` would write the bare token NaN): null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a crash


class RunLogger:
    """Writes what the main process reports; other processes stay silent."""

    def __init__(self, output_dir: str, is_main: bool, accelerator=None, resume_step: int | None = None):
        self.is_main = is_main
        self.accelerator = accelerator
        self.metrics_path = os.path.join(output_dir, "metrics.jsonl")
        self.samples_path = os.path.join(output_dir, "samples.jsonl")
        self._console = None
        self._metrics = None
        self._samples = None
        self.dropped_lines = 0
        if is_main:
            os.makedirs(output_dir, exist_ok=True)
            if resume_step is not None:
                self.dropped_lines = _truncate_after(self.metrics_path, resume_step)
                _truncate_after(self.samples_path, resume_step)
            self._console = open(os.path.join(output_dir, "train.log"), "a", encoding="utf-8")
            self._metrics = open(self.metrics_path, "a", encoding="utf-8")

    def info(self, message: str) -> None:
        if not self.is_main:
            return
        tqdm.write(message, file=sys.stdout)  # keeps an active progress bar intact
        sys.stdout.flush()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for line in message.splitlines() or [""]:
            self._console.write(f"[{stamp}] {line}\n")
        self._console.flush()

    def metrics(self, values: dict[str, Any], step: int) -> None:
        """One JSON line per record and the same numbers to the experiment tracker."""
        if self.accelerator is not None and self.accelerator.trackers:
            numeric = {scalar_name(k): v for k, v in values.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(numeric, step=step)
        if not self.is_main:
            return
        record = {"step": step, **{k: finite_or_none(v) for k, v in values.items()},
                  "time": round(time.time(), 3)}
        self._metrics.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        self._metrics.flush()

    def samples(self, step: int, ids: list[str]) -> None:
        """The clips of one optimizer step (``--log_sample_ids``)."""
        if not self.is_main:
            return
        if self._samples is None:
            self._samples = open(self.samples_path, "a", encoding="utf-8")
        self._samples.write(json.dumps({"step": step, "ids": ids}, ensure_ascii=False) + "\n")
        self._samples.flush()

    def close(self) -> None:
        for handle in (self._console, self._metrics, self._samples):
            if handle is not None:
                handle.close()
        self._console = self._metrics = self._samples = None


def _truncate_after(path: str, resume_step: int) -> int:
    """On resume, drop lines a crashed run logged after its last checkpoint: they are
    recomputed, and keeping both would show each of those steps twice."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as handle:
        lines = handle.readlines()
    kept = [line for line in lines if _step_of(line) is not None and _step_of(line) <= resume_step]
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.writelines(kept)
    os.replace(path + ".tmp", path)
    return len(lines) - len(kept)
