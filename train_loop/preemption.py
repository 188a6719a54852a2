"""Stop cleanly on SIGTERM / SIGINT: finish the step, write a checkpoint, exit.

A scheduler that preempts a job (SLURM, Kubernetes, spot instances) sends SIGTERM and waits a
grace period; Ctrl-C sends SIGINT. Either sets a flag that the loop reads after each optimizer
step. With several processes the flag is agreed on by all of them (any process that got the
signal stops everyone), so they all leave the loop after the same step and write one
checkpoint together. A second Ctrl-C stops at once, without a checkpoint.
"""

from __future__ import annotations

import signal
import sys
import threading

import torch


class StopOnSignal:
    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.signal_name: str | None = None
        self._group = None
        if accelerator.num_processes > 1:
            import torch.distributed as dist

            # The vote goes through a CPU (gloo) group: asking it every step never waits for
            # the GPU, unlike an all-reduce on the training process group.
            self._group = dist.new_group(backend="gloo")
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        self.signal_name = name
        print(f"\n{name} received: finishing this step, then writing a checkpoint "
              f"(press Ctrl-C again to stop at once, without one)", file=sys.stderr, flush=True)

    def requested(self) -> bool:
        """Whether any process has been asked to stop (the same answer on every process)."""
        local = self.signal_name is not None
        if self._group is None:
            return local
        import torch.distributed as dist

        vote = torch.tensor([int(local)], dtype=torch.int32)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self._group)
        return bool(vote.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
