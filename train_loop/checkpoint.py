"""Checkpoints: complete or absent, resumable exactly, loadable with ``from_pretrained``.

``checkpoint-N/`` holds
* ``model.safetensors`` + ``config.json``, ``generation_config.json`` and the processor files,
  so ``pipeline("automatic-speech-recognition", model="checkpoint-N")`` works;
* accelerate's state: ``optimizer.bin``, ``scheduler.bin``, ``scaler.pt`` (fp16),
  ``random_states_<rank>.pkl`` (python, numpy, torch, cuda RNG of every process);
* ``data_state_<rank>.pt``: every process's data position (for a stream, its readers' shard,
  row, shuffle buffer and generator);
* ``trainer_state.json``: step, data position, best metric, evaluation and log history;
* ``run_config.json`` (every flag) and ``manifest.json`` (versions, git commit, data
  fingerprint, world size).

It is written under a temporary name and renamed only when every file is there, so a kill
during a save leaves no half checkpoint under a real name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

PREFIX = "checkpoint-"
PARTIAL_SUFFIX = ".partial"
STATE_FILE = "trainer_state.json"
BEST_POINTER = "best_checkpoint.json"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


@dataclass
class TrainerState:
    """Everything about the run's progress that is not a tensor."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # data position: the epoch being read ...
    batches_in_epoch: int = 0  # ... and how many of its micro-batches this process consumed
    samples_seen: int = 0  # over all processes
    skipped_steps: int = 0  # steps whose update the fp16 loss scaler skipped (counted in step)
    train_seconds: float = 0.0  # time in training steps (evaluation and saving excluded)
    best_metric: float | None = None
    best_step: int | None = None
    best_checkpoint: str | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # streaming: rows skipped so far, by reason
    schedule: dict[str, Any] = field(default_factory=dict)  # the LR schedule that produced these steps
    layout: dict[str, Any] = field(default_factory=dict)  # processes, batch size, accumulation
    log_history: list[dict[str, Any]] = field(default_factory=list)  # every metrics.jsonl record

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_file(cls, path: str) -> "TrainerState":
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def is_improvement(value: float, best: float | None, greater_is_better: bool) -> bool:
    if best is None:
        return True
    return value > best if greater_is_better else value < best


# --------------------------------------------------------------------------------------------
# Finding checkpoints
# --------------------------------------------------------------------------------------------


def complete_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every complete checkpoint, oldest first; the step is read from its state."""
    found = []
    if not os.path.isdir(output_dir):
        return found
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        state_path = os.path.join(path, STATE_FILE)
        if _NAME.match(name) and os.path.isfile(state_path):
            try:
                found.append((TrainerState.from_file(state_path).step, path))
            except (ValueError, TypeError):
                continue  # unreadable state: not a checkpoint we can resume from
    return sorted(found)


def incomplete_checkpoints(output_dir: str) -> list[str]:
    if not os.path.isdir(output_dir):
        return []
    return sorted(os.path.join(output_dir, name) for name in os.listdir(output_dir)
                  if name.startswith(PREFIX) and name.endswith(PARTIAL_SUFFIX))


def resolve_resume(output_dir: str, resume_from: str) -> str:
    """The checkpoint folder named by ``--resume_from`` ('latest', a name, or a path)."""
    if resume_from == "latest":
        found = complete_checkpoints(output_dir)
        if not found:
            raise UserError(f"--resume_from latest: no complete checkpoint in {output_dir}; start "
                            "without --resume_from")
        return found[-1][1]
    for candidate in (resume_from, os.path.join(output_dir, resume_from)):
        if os.path.isdir(candidate):
            if not os.path.isfile(os.path.join(candidate, STATE_FILE)):
                raise UserError(f"--resume_from {resume_from}: {candidate} has no {STATE_FILE}, so it "
                                "is not a complete checkpoint of this tool")
            return candidate
    names = ", ".join(os.path.basename(p) for _, p in complete_checkpoints(output_dir)) or "none"
    raise UserError(f"--resume_from {resume_from}: no such checkpoint (in {output_dir}: {names}); "
                    "use 'latest', a checkpoint name or a path")


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------


DATA_STATE = "data_state_{rank}.pt"
RNG_STATE = "random_states_{rank}.pkl"  # written by accelerate's save_state


def save_model_folder(model, folder: str, weights: dict[str, Any], dtype: str = "float32") -> None:
    """``save_pretrained`` with ``weights`` cast to ``dtype``, and a config.json that says so.

    transformers records the dtype of the *module* in config.json, and ``from_pretrained``
    loads in that dtype by default; under DeepSpeed bf16 the module is bf16 while the weights
    saved here are the float32 masters, so the recorded dtype is corrected after the save."""
    import torch

    target = getattr(torch, dtype)
    weights = {name: (tensor.to(target) if tensor.is_floating_point() else tensor)
               for name, tensor in weights.items()}
    model.save_pretrained(folder, state_dict=weights)
    model.config.dtype = dtype
    model.config.save_pretrained(folder)


def save_checkpoint(accelerator, output_dir: str, state: TrainerState, model, processor,
                    run_config: dict[str, Any], manifest: dict[str, Any],
                    data_state: dict[str, Any], frozen_fp32: dict[str, Any] | None = None) -> str:
    """Write ``checkpoint-<step>`` atomically; every process must call this."""
    import torch

    from .distributed import uses_deepspeed
    from .precision import full_precision_state_dict

    name = f"{PREFIX}{state.step}"
    final = os.path.join(output_dir, name)
    partial = final + PARTIAL_SUFFIX
    if accelerator.is_main_process and os.path.exists(partial):
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial, safe_serialization=True)
    torch.save(data_state, os.path.join(partial, DATA_STATE.format(rank=accelerator.process_index)))
    consolidated = None
    if uses_deepspeed(accelerator):
        # DeepSpeed saved its shards; add whole float32 weights so the checkpoint loads with
        # from_pretrained (every process takes part in gathering them).
        consolidated = full_precision_state_dict(accelerator, model, frozen_fp32 or {})
    accelerator.wait_for_everyone()  # every process has written its RNG and data state (and shards)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if consolidated is not None:
            save_model_folder(unwrapped, partial, consolidated)
        else:
            unwrapped.config.save_pretrained(partial)
        unwrapped.generation_config.save_pretrained(partial)
        processor.save_pretrained(partial)
        _write_json(os.path.join(partial, "run_config.json"), run_config)
        _write_json(os.path.join(partial, "manifest.json"), manifest)
        missing = [name for rank in range(accelerator.num_processes)
                   for name in (DATA_STATE.format(rank=rank), RNG_STATE.format(rank=rank))
                   if not os.path.isfile(os.path.join(partial, name))]
        if missing:
            raise UserError(f"{partial}: files written by other processes are missing "
                            f"({', '.join(missing[:4])}); every node must write into the same "
                            "output_dir (a shared file system)")
        # The state goes last: its presence is what marks the folder as complete.
        _write_text(os.path.join(partial, STATE_FILE), state.to_json())
        if os.path.exists(final):  # re-saving a step (after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(partial, final)
        _fsync_dir(output_dir)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str) -> TrainerState:
    """Restore model, optimizer, scheduler, scaler and RNG; return the trainer state."""
    accelerator.load_state(path)
    return TrainerState.from_file(os.path.join(path, STATE_FILE))


def load_data_state(path: str, rank: int) -> dict[str, Any] | None:
    """This process's data position saved in checkpoint ``path`` (None if it has none)."""
    import torch

    file = os.path.join(path, DATA_STATE.format(rank=rank))
    if not os.path.isfile(file):
        return None
    return torch.load(file, weights_only=False)  # our own file: python RNG states and rows


def read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def rotate_checkpoints(output_dir: str, limit: int | None, protected: set[str]) -> list[str]:
    """Keep the ``limit`` newest checkpoints and every one in ``protected`` (the best); delete
    the rest. With limit 1 and an older best, two remain: the newest (to resume) and the best."""
    if limit is None:
        return []
    found = [path for _, path in complete_checkpoints(output_dir)]
    newest = set(found[-limit:])
    deleted = []
    for path in found:
        if path not in newest and os.path.basename(path) not in protected:
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
    return deleted


def write_best_pointer(output_dir: str, state: TrainerState, metric: str) -> None:
    _write_json(os.path.join(output_dir, BEST_POINTER), {
        "checkpoint": state.best_checkpoint, "step": state.best_step, "metric": metric,
        "value": state.best_metric})


def run_manifest(argv: list[str], data_fingerprint: str, num_processes: int) -> dict[str, Any]:
    import accelerate
    import datasets
    import torch
    import transformers

    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": argv,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__, "accelerate": accelerate.__version__,
                     "datasets": datasets.__version__},
        "git_commit": _git_commit(),
        "data_fingerprint": data_fingerprint,
        "num_processes": num_processes,
    }


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain"], capture_output=True,
                           text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def _write_text(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(path + ".tmp", path)


def _write_json(path: str, value: Any) -> None:
    _write_text(path, json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
