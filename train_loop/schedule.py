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
the new last step, so the rate never jumps back up. The scheduler is stepped once per optimizer step and is never handed to
``accelerator.prepare`` (which would step it once per process).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch


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
        if self.kind == "constant":
            return 1.0
        # Progress through the decay, 0 right after warmup (or the rebase step); it reaches 1
        # one step after the last, so the final step still learns something.
        start, start_factor = max(self.warmup_steps, 1), 1.0  # without warmup, step 1 is the peak
        if self.rebase_step > self.warmup_steps:
            start, start_factor = self.rebase_step, self.rebase_factor
        span = max(1, self.total_steps - start + 1)
        progress = min(1.0, max(0.0, (step - start) / span))
        if self.kind == "linear":
            decay = 1.0 - progress
        elif self.kind == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            raise ValueError(f"unknown schedule {self.kind!r}")
        floor = self.min_lr / self.peak
        return floor + (start_factor - floor) * decay

    def extended(self, total_steps: int, at_step: int) -> "LRSchedule":
        """This schedule with a new last step, continuing smoothly after ``at_step``."""
        if self.kind == "constant" or at_step <= self.warmup_steps:
            return dataclasses.replace(self, total_steps=total_steps)
        return dataclasses.replace(self, total_steps=total_steps, rebase_step=at_step,
                                   rebase_factor=self.factor(at_step))

    def multiplier(self, scheduler_steps_done: int) -> float:
        """For ``LambdaLR``: after ``n`` scheduler steps, the next optimizer step is ``n + 1``."""
        return self.factor(scheduler_steps_done + 1)


def restore_schedule(optimizer: torch.optim.Optimizer, scheduler, schedule: LRSchedule,
                     steps_done: int) -> None:
    """After loading a checkpoint: the optimizer's saved rates belong to the old run's
    schedule; set those of *this* schedule for the next step (peak and step count included)."""
    scheduler.lr_lambdas = [schedule.multiplier] * len(optimizer.param_groups)
    scheduler.base_lrs = [schedule.peak] * len(optimizer.param_groups)
    scheduler.last_epoch = steps_done
    for group in optimizer.param_groups:
        group["initial_lr"] = schedule.peak
        group["lr"] = schedule(steps_done + 1)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: LRSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    """A torch scheduler whose state (steps done) is saved in checkpoints."""
    for group in optimizer.param_groups:
        group["lr"] = schedule.peak
        group["initial_lr"] = schedule.peak
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.multiplier)
