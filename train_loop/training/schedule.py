"""Learning-rate schedule as a pure function of the optimizer step.

Step ``s`` (1 for the first optimizer step) uses ``lr(s)``:

* warmup, ``s <= warmup_steps``: ``peak * s / warmup_steps``, so step ``warmup_steps`` uses
  exactly ``--learning_rate`` (HF's schedulers reach the peak one step later, and use 0 for
  the first step);
* then linear or cosine decay from the peak towards ``min_learning_rate``, with every step up
  to ``total_steps`` still above it; or constant.

Because the value depends only on ``s`` and these numbers (stored in each checkpoint), a
resumed run gets exactly the learning rates of an uninterrupted one, whatever the number of
processes.

Extending ``--max_steps`` on resume past warmup *rebases* the decay: it continues from the
rate reached at the resume step (``rebase_step``, ``rebase_factor``) down to the minimum at
the new last step, so the rate never jumps back up.

The loop writes ``lr(step)`` into the optimizer before each step (nanoGPT's way): no torch
scheduler object, so nothing to save or restore beyond the numbers in ``trainer_state.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

# Decay after warmup: progress in [0, 1] -> fraction of the way from the peak to the minimum
# still left. One entry per --lr_scheduler_type choice.
DECAYS: dict[str, Callable[[float], float]] = {
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    "constant": lambda progress: 1.0,
}


@dataclass(frozen=True)
class LRSchedule:
    kind: str  # linear | cosine | constant
    peak: float
    warmup_steps: int
    total_steps: int
    min_lr: float = 0.0
    rebase_step: int = 0  # decay restarts here (0: at the end of warmup) ...
    rebase_factor: float = 1.0  # ... from this fraction of the peak

    def __call__(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (1-based)."""
        return self.peak * self.factor(step)

    def factor(self, step: int) -> float:
        """``lr(step) / peak``, computed so that the end of warmup is exactly 1.0."""
        if self.warmup_steps and step <= self.warmup_steps:
            return step / self.warmup_steps
        if self.kind not in DECAYS:
            raise ValueError(f"unknown schedule {self.kind!r}")
        # Progress through the decay, 0 right after warmup (or the rebase step); it reaches 1
        # one step after the last, so the final step still learns something.
        start, start_factor = max(self.warmup_steps, 1), 1.0  # without warmup, step 1 is the peak
        if self.rebase_step > self.warmup_steps:
            start, start_factor = self.rebase_step, self.rebase_factor
        span = max(1, self.total_steps - start + 1)
        progress = min(1.0, max(0.0, (step - start) / span))
        decay = DECAYS[self.kind](progress)
        floor = self.min_lr / self.peak
        return floor + (start_factor - floor) * decay

    def extended(self, total_steps: int, at_step: int) -> "LRSchedule":
        """This schedule with a new last step, continuing smoothly after ``at_step``."""
        if self.kind == "constant" or at_step <= self.warmup_steps:
            return dataclasses.replace(self, total_steps=total_steps)
        return dataclasses.replace(self, total_steps=total_steps, rebase_step=at_step,
                                   rebase_factor=self.factor(at_step))


def set_learning_rate(optimizer, learning_rate: float) -> None:
    """The rate of the coming optimizer step, for every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
