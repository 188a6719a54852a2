"""Stop cleanly on SIGTERM / SIGINT / SIGHUP, however the run was launched.

A scheduler that preempts a job (SLURM, Kubernetes, spot instances) sends SIGTERM and waits a
grace period; Ctrl-C sends SIGINT; a closed terminal or a dropped SSH session sends SIGHUP. During
training each sets a flag that the loop reads
after each optimizer step: the step finishes, a checkpoint is written and the process exits
with ``EXIT_STOPPED`` (75, "temporary failure, retry": resumable with ``--resume_from
latest``). With several processes the flag is agreed on by all of them (any process that got
the signal stops everyone), so they leave the loop after the same step and write one
checkpoint together. Before training starts (loading, preparing features) there is nothing to
save: the run stops at once, with the same exit status. A second Ctrl-C stops at once,
without a checkpoint (exit status 130).

Launchers deliver the signal differently, and each way ends the same:
* ``torchrun`` and ``accelerate launch`` with several processes forward SIGTERM/SIGINT to every
  worker (and SIGKILL them after ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds, 30 by default);
* ``accelerate launch`` with one process forwards nothing: a signal ends the launcher alone.
  So a process started by a launcher asks the kernel for SIGTERM when its launcher dies
  (``PR_SET_PDEATHSIG``), and stops as if the launcher had forwarded the signal;
* DataLoader workers ignore both signals (``data.loaders.ignore_stop_signals``): the training
  process shuts them down itself (a worker killed by a group-wide signal would otherwise end
  the run with a traceback).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

import torch

from ..core.errors import StoppedBeforeTraining

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
DUPLICATE_WINDOW_S = 1.0  # a second signal this soon after the first is the same one, forwarded
LAUNCHERS = ("accelerate", "torch.distributed.run", "torchrun", "torch/distributed/run.py")


class StopOnSignal:
    """Installed at the start of a run; ``training_started()`` switches it from "stop now" to
    "finish the step, then checkpoint"."""

    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.signal_name: str | None = None
        self.training = False
        self._group = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                    continue  # started with nohup: the run is meant to outlive its terminal
                self._previous[sig] = signal.signal(sig, self._handle)
        follow_launcher()

    def training_started(self) -> None:
        if self.accelerator.num_processes > 1 and self._group is None:
            import torch.distributed as dist

            # The vote goes through a CPU (gloo) group: asking it every step never waits for
            # the GPU, unlike an all-reduce on the training process group.
            self._group = dist.new_group(backend="gloo")
        self.training = True

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            # Ctrl-C in a terminal reaches a worker twice: from the terminal and forwarded by
            # torchrun's agent a moment later. Only a later second Ctrl-C means "stop now".
            if signum == signal.SIGINT and time.monotonic() - self._first_at > DUPLICATE_WINDOW_S:
                raise KeyboardInterrupt
            return
        self.signal_name, self._first_at = name, time.monotonic()
        if not self.training:
            raise StoppedBeforeTraining(name)
        print(f"\n{name} received: finishing this step, then writing a checkpoint "
              f"(press Ctrl-C again to stop at once, without one)", file=sys.stderr, flush=True)

    def requested(self) -> bool:
        """Whether any process has been asked to stop (the same answer on every process). A
        process the signal did not reach learns its name from the vote, for the log."""
        local = self.signal_name is not None
        if self._group is None:
            return local
        import torch.distributed as dist

        vote = torch.tensor([int(signal.Signals[self.signal_name]) if local else 0], dtype=torch.int32)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX, group=self._group)
        if vote.item() and not local:
            self.signal_name, self._first_at = signal.Signals(int(vote.item())).name, time.monotonic()
        return bool(vote.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def follow_launcher() -> None:
    """When started by ``accelerate launch`` or ``torchrun``, get SIGTERM if that launcher dies
    (Linux). Not when started from a shell: a run under ``nohup`` must outlive its terminal."""
    parent = os.getppid()
    if not sys.platform.startswith("linux") or not _is_launcher(parent):
        return
    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _is_launcher(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return False
    return any(name in command for name in LAUNCHERS)
