"""The output folder belongs to one run.

* A fresh run into a folder that holds another run's files (checkpoints, metrics, a final
  model) stops: appending to that run's metrics and resuming its checkpoints later would mix
  two runs. ``--resume_from`` continues it; ``--overwrite_output_dir`` deletes it first.
* While a run is alive its main process holds a lock on ``output_dir/.run.lock`` (``flock``:
  the kernel releases it when the process dies, however it dies). A second run into the same
  folder stops with the first one's pid, host and command. A lock file left by a killed run
  is not held by anyone: it is taken over, and the run says so.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import time

from ..core.errors import UserError

LOCK_NAME = ".run.lock"
# What a run leaves in its folder; any of these means the folder holds a run.
RUN_FILES = ("metrics.jsonl", "train.log", "results.json", "best_checkpoint.json", "model.safetensors",
             "trainer_state.json")


class RunLock:
    """An exclusive lock on ``output_dir`` for this process's lifetime (see module docstring)."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_NAME)
        self.taken_over: dict | None = None  # the holder recorded by a run that died holding it
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(self._read())
            os.close(self._fd)
            raise UserError(f"--output_dir {output_dir} is in use by another run ({holder}); stop that "
                            "run or choose another --output_dir") from None
        self.taken_over = self._read() or None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                        "command": " ".join(sys.argv)}).encode(), 0)

    def _read(self) -> dict:
        try:
            return json.loads(os.pread(self._fd, 1 << 16, 0).decode() or "{}")
        except (ValueError, UnicodeDecodeError):
            return {"pid": "?"}

    def release(self) -> None:
        """Remove the lock file and let go (a clean end leaves nothing to take over)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}: "
            f"{holder.get('command', '?')}")


def other_run_files(output_dir: str) -> list[str]:
    """The files and folders in ``output_dir`` that belong to a run."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(name for name in os.listdir(output_dir)
                  if name in RUN_FILES or name.startswith("checkpoint-"))


def _stopped_before_training(output_dir: str, found: list[str]) -> bool:
    """Whether the folder holds only the log of a start that never reached a training step."""
    if not set(found) <= {"metrics.jsonl", "train.log"}:
        return False
    metrics = os.path.join(output_dir, "metrics.jsonl")
    if os.path.isfile(metrics):
        with open(metrics, encoding="utf-8", errors="replace") as handle:
            if any('"loss"' in line for line in handle):
                return False
    return True


def claim_output_dir(output_dir: str, resuming: bool, overwrite: bool) -> RunLock:
    """Make ``output_dir`` this run's (main process only); returns the lock to release at the end."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"--output_dir {output_dir} is a file; give a folder (it is created if missing)")
    try:
        os.makedirs(output_dir, exist_ok=True)
        lock = RunLock(output_dir)
    except PermissionError:
        raise UserError(f"--output_dir {output_dir}: not writable by this user; choose a folder you can "
                        "write to") from None
    except OSError as err:
        raise UserError(f"--output_dir {output_dir}: cannot write there ({err.strerror or err})") from None
    found = other_run_files(output_dir)
    if found and not resuming and not overwrite and _stopped_before_training(output_dir, found):
        # A start stopped while loading or preparing data leaves only its log: running the same
        # command again must work (there is nothing to resume and nothing to lose).
        print(f"{output_dir} holds only the log of a start that stopped before its first step: starting over",
              flush=True)
        overwrite = True
    if found and not resuming:
        if not overwrite:
            lock.release()
            shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            resumable = any(name.startswith("checkpoint-") and not name.endswith(".partial") for name in found)
            advice = ("Continue it with --resume_from latest, delete it with --overwrite_output_dir, "
                      if resumable else "It has no checkpoint to continue from: delete it with --overwrite_output_dir ")
            raise UserError(f"--output_dir {output_dir} holds another run ({shown}). {advice}or choose another "
                            "--output_dir")
        for name in os.listdir(output_dir):
            if name == LOCK_NAME:
                continue
            path = os.path.join(output_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    return lock


# --------------------------------------------------------------------------------------------
# Disk space
# --------------------------------------------------------------------------------------------

_DISK_FULL_MARKERS = ("No space left", "StorageFull", "file write failed", "Disk quota exceeded")


def folder_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def ensure_free_space(output_dir: str, needed: int, what: str) -> None:
    """Stop before writing ``what`` if the disk cannot hold it (a cheap statvfs, no write)."""
    free = shutil.disk_usage(output_dir).free
    if free < needed:
        raise UserError(f"no space left on {output_dir} for {what}: it needs about {_gb(needed)} and "
                        f"{_gb(free)} are free. Free some space (fewer checkpoints: --save_total_limit) "
                        "or move --output_dir; the run can then continue with --resume_from latest")


def is_disk_full(err: BaseException) -> bool:
    """Whether a write failed because the disk (or quota) is full: OSError ENOSPC/EDQUOT, or the
    messages torch's and safetensors' writers raise for it."""
    import errno

    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(marker in str(err) for marker in _DISK_FULL_MARKERS):
            return True
        err = err.__cause__ or err.__context__
    return False


def disk_full_error(output_dir: str, needed: int, what: str) -> UserError:
    free = shutil.disk_usage(output_dir).free
    return UserError(f"no space left on {output_dir} while writing {what} (it needs about {_gb(needed)}, "
                     f"{_gb(free)} free); the unfinished files were removed and the previous checkpoint is "
                     "intact. Free some space or move --output_dir, then continue with --resume_from latest")


def _gb(size: int) -> str:
    return f"{size / 2**30:.2f} GB" if size >= 2**28 else f"{size / 2**20:.1f} MB"
