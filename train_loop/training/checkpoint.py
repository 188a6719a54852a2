"""Checkpoints: complete or absent, resumable exactly, loadable with ``from_pretrained``.

``checkpoint-N/`` holds
* ``model.safetensors`` + ``config.json``, ``generation_config.json`` and the processor files,
  so ``pipeline("automatic-speech-recognition", model="checkpoint-N")`` works;
* accelerate's state: ``optimizer.bin``, ``scaler.pt`` (fp16),
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
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils.other import load as accelerate_load
from safetensors.torch import load_file, save_file

from ..core.errors import UserError, storage_error
from ..core.model import save_model_folder, save_processor
from ..core.processes import on_main_process, uses_deepspeed
from ..outputs.card import write_model_card
from .precision import full_precision_state_dict
from .rundir import disk_full_error, ensure_free_space, folder_bytes, is_disk_full

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
    audio_seconds_seen: float = 0.0  # seconds of clip audio trained on, over all processes
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


def is_improvement(value: float, best: float | None) -> bool:
    """Whether the error rate ``value`` beats ``best`` (lower is better); a NaN or infinite
    value never does."""
    if value is None or not math.isfinite(value):
        return False
    return best is None or value < best


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


def unreadable_checkpoints(output_dir: str) -> list[str]:
    """Checkpoint folders whose trainer state is there but does not parse (complete_checkpoints
    leaves them out)."""
    if not os.path.isdir(output_dir):
        return []
    readable = {path for _, path in complete_checkpoints(output_dir)}
    return sorted(os.path.join(output_dir, name) for name in os.listdir(output_dir)
                  if _NAME.match(name) and os.path.isfile(os.path.join(output_dir, name, STATE_FILE))
                  and os.path.join(output_dir, name) not in readable)


def incomplete_checkpoints(output_dir: str) -> list[str]:
    if not os.path.isdir(output_dir):
        return []
    return sorted(os.path.join(output_dir, name) for name in os.listdir(output_dir)
                  if name.startswith(PREFIX) and name.endswith(PARTIAL_SUFFIX))


def checkpoint_problem(path: str) -> str | None:
    """Why checkpoint ``path`` cannot be loaded ("<file>: <reason>"), or None if every file reads.

    Reads every byte once: torch's files are zip archives whose CRCs are checked, safetensors
    headers must cover their files, JSON must parse. A truncated copy or a disk error shows here
    with the file's name, instead of deep inside a loader."""
    import zipfile

    from safetensors import safe_open

    for root, _, files in os.walk(path):
        for name in sorted(files):
            file = os.path.join(root, name)
            shown = os.path.relpath(file, os.path.dirname(path))
            try:
                if name.endswith(".safetensors"):
                    with safe_open(file, "pt") as handle:
                        handle.keys()
                elif name.endswith((".bin", ".pt", ".pkl")):
                    with zipfile.ZipFile(file) as archive:
                        bad = archive.testzip()
                    if bad:
                        return f"{shown}: damaged data in {bad}"
                elif name.endswith(".json"):
                    with open(file, encoding="utf-8") as handle:
                        json.load(handle)
            except Exception as err:  # zipfile, safetensors and json each raise their own
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                return f"{shown}: {reason}"
    return None


def resolve_resume(output_dir: str, resume_from: str) -> tuple[str, list[str]]:
    """The checkpoint folder named by ``--resume_from`` ('latest', a name, or a path), and notes.

    ``latest`` is the newest checkpoint that reads (an unreadable newer one is named in a note);
    a checkpoint named explicitly must read, or the error names the damaged file."""
    if resume_from == "latest":
        found = complete_checkpoints(output_dir)
        if not found:
            raise UserError(f"--resume_from latest: no complete checkpoint in {output_dir}; start "
                            "without --resume_from")
        notes = [f"{os.path.basename(path)}/{STATE_FILE} cannot be read: not resuming from {os.path.basename(path)}"
                 for path in unreadable_checkpoints(output_dir)]
        for _, path in reversed(found):
            problem = checkpoint_problem(path)
            if problem is None:
                return path, notes
            notes.append(f"{problem}: cannot resume from {os.path.basename(path)}, trying the one before")
        raise UserError(f"--resume_from latest: no checkpoint in {output_dir} can be read ("
                        f"{'; '.join(note.split(': cannot')[0] for note in notes)})")
    for candidate in (resume_from, os.path.join(output_dir, resume_from)):
        if os.path.isdir(candidate):
            if not os.path.isfile(os.path.join(candidate, STATE_FILE)):
                raise UserError(f"--resume_from {resume_from}: {candidate} has no {STATE_FILE}, so it "
                                "is not a complete checkpoint of this tool")
            problem = checkpoint_problem(candidate)
            if problem is not None:
                raise UserError(f"--resume_from {resume_from}: {problem}. Resume from another checkpoint "
                                "(--resume_from latest picks the newest readable one)")
            return candidate, []
    names = ", ".join(os.path.basename(p) for _, p in complete_checkpoints(output_dir)) or "none"
    raise UserError(f"--resume_from {resume_from}: no such checkpoint (in {output_dir}: {names}); "
                    "use 'latest', a checkpoint name or a path")


# --------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------


DATA_STATE = "data_state_{rank}.pt"
EMA_FILE = "ema.safetensors"  # --ema_decay's average: tensors only, like every file read back
RNG_STATE = "random_states_{rank}.pkl"  # written by accelerate's save_state


def save_final_model(model, processor, output_dir: str, weights: dict[str, Any], dtype: str) -> None:
    """The run's result, for ``from_pretrained`` and ``pipeline`` (main process). Never saved when
    a weight is NaN or infinite, nor half-written on a full disk."""
    import torch


    broken = [name for name, tensor in weights.items()
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:
        raise UserError(f"the final weights contain NaN or infinite values ({len(broken)} tensors, e.g. "
                        f"{broken[0]}): not saved as the final model. The checkpoints before the "
                        "divergence are intact; resume from one with a lower --learning_rate")
    needed = sum(tensor.numel() * getattr(torch, dtype).itemsize for tensor in weights.values())
    ensure_free_space(output_dir, needed, "the final model")
    try:
        save_model_folder(model, output_dir, weights, dtype)
        save_processor(processor, output_dir)
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise disk_full_error(output_dir, needed, "the final model") from None


def save_checkpoint(accelerator, output_dir: str, state: TrainerState, model, processor,
                    run_config: dict[str, Any], manifest: dict[str, Any],
                    data_state: dict[str, Any], frozen_fp32: dict[str, Any] | None = None, ema=None) -> str:
    """Write ``checkpoint-<step>`` atomically; every process must call this.

    Before writing, the disk must have room for about one more checkpoint (the size of the
    newest one); if a write still fails on a full disk, the unfinished folder is removed and
    the error says so. The previous checkpoints are never touched."""

    final = os.path.join(output_dir, f"{PREFIX}{state.step}")
    partial = final + PARTIAL_SUFFIX
    needed = checkpoint_bytes_estimate(output_dir, accelerator.unwrap_model(model))
    on_main_process(accelerator, lambda: _start_partial(output_dir, partial, needed))
    try:
        _write_checkpoint(accelerator, output_dir, partial, final, state, model, processor, run_config,
                          manifest, data_state, frozen_fp32, ema)
    except Exception as err:
        problem = storage_error(err) if isinstance(err, OSError) and not is_disk_full(err) else None
        if not is_disk_full(err) and problem is None:
            raise
        shutil.rmtree(partial, ignore_errors=True)  # no half checkpoint left behind
        if problem is not None:  # the folder turned read-only, or lost its permissions, mid-run
            raise UserError(f"{problem}; {os.path.basename(final)} was not saved (the earlier checkpoints are "
                            "intact): fix the folder, then --resume_from latest") from None
        raise disk_full_error(output_dir, needed, os.path.basename(final)) from None
    return final


def checkpoint_bytes_estimate(output_dir: str, model) -> int:
    """Bytes the next checkpoint will take: the newest one's size, or (for the first) float32
    weights plus AdamW's two float32 moments per parameter."""

    found = complete_checkpoints(output_dir)
    if found:
        return folder_bytes(found[-1][1])
    return 12 * sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())


def _start_partial(output_dir: str, partial: str, needed: int) -> None:

    if os.path.exists(partial):
        shutil.rmtree(partial)
    ensure_free_space(output_dir, needed, f"{os.path.basename(partial)[:-len(PARTIAL_SUFFIX)]}")


def _write_checkpoint(accelerator, output_dir: str, partial: str, final: str, state: TrainerState, model,
                      processor, run_config: dict[str, Any], manifest: dict[str, Any],
                      data_state: dict[str, Any], frozen_fp32: dict[str, Any] | None, ema) -> None:
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
        save_processor(processor, partial)
        write_model_card(partial, run_config, state.evaluations, state.best_step, state.step,
                         name=f"{os.path.basename(os.path.normpath(output_dir))} (step {state.step})")
        _write_json(os.path.join(partial, "run_config.json"), run_config)
        _write_json(os.path.join(partial, "manifest.json"), manifest)
        if ema is not None:
            save_file(ema.tensors(), os.path.join(partial, EMA_FILE), metadata={"decay": repr(ema.decay)})
        missing = [name for rank in range(accelerator.num_processes)
                   for name in (DATA_STATE.format(rank=rank), RNG_STATE.format(rank=rank))
                   if not os.path.isfile(os.path.join(partial, name))]
        if missing:
            raise UserError(f"{partial}: files written by other processes are missing "
                            f"({', '.join(missing[:4])}); every node must write into the same "
                            "output_dir (a shared file system)")
        _fsync_files(partial)  # on disk before the folder gets its final name: survives a power loss
        # The state goes last: its presence is what marks the folder as complete.
        _write_text(os.path.join(partial, STATE_FILE), state.to_json())
        if os.path.exists(final):  # re-saving a step (after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(partial, final)
        _fsync_dir(output_dir)
    accelerator.wait_for_everyone()


def load_checkpoint(accelerator, path: str, lora: bool = False, ema=None) -> TrainerState:
    """Restore model, optimizer, scaler, RNG and the weight average; return the trainer state (its
    schedule numbers give the learning rate of every later step). Every file is read as data
    (safetensors, JSON, ``weights_only`` pickles): a checkpoint from elsewhere cannot run code."""
    # A LoRA checkpoint (without DeepSpeed) holds the adapters only; the frozen base weights are
    # the loaded model's.
    adapters_only = lora and not uses_deepspeed(accelerator)
    rng_file = os.path.join(path, RNG_STATE.format(rank=accelerator.process_index))
    with _refusing_code(path):
        # accelerate would swallow any error reading the random states and resume with the wrong
        # ones: read them first (as it does, tensors and numpy's RNG only), so a bad file stops here.
        if os.path.isfile(rng_file) and "random_state" not in accelerate_load(rng_file):
            raise UserError(f"{rng_file}: holds no random states; the checkpoint is damaged, resume from another")
        try:
            accelerator.load_state(path, **({"strict": False} if adapters_only else {}))
        except (RuntimeError, ValueError, KeyError) as err:
            if not any(sign in str(err) for sign in ("size mismatch", "Missing key", "Unexpected key",
                                                     "parameter group", "state_dict")):
                raise
            first = str(err).strip().splitlines()[0][:200]
            raise UserError(f"--resume_from {path}: what it holds does not fit this run's model ({first}); resume "
                            "with the original run's --model_name_or_path and flags") from None
    if ema is not None:
        load_weight_average(ema, path)
    return TrainerState.from_file(os.path.join(path, STATE_FILE))


def load_weight_average(ema, path: str) -> None:
    file = os.path.join(path, EMA_FILE)
    if not os.path.isfile(file):
        raise UserError(f"{path} holds no weight average ({EMA_FILE}): it was saved without --ema_decay; "
                        "resume without --ema_decay, or start a new run with it")
    ema.load_tensors(load_file(file))


def load_data_state(path: str, rank: int) -> dict[str, Any] | None:
    """This process's data position saved in checkpoint ``path`` (None if it has none)."""
    file = os.path.join(path, DATA_STATE.format(rank=rank))
    if not os.path.isfile(file):
        return None
    with _refusing_code(path):
        return torch.load(file, weights_only=True)  # numbers, strings, tensors: never objects


@contextmanager
def _refusing_code(path: str):
    """A pickle in a checkpoint that holds anything but plain data and tensors (an object whose
    loading would run code) is refused with one line, never executed."""
    try:
        yield
    except pickle.UnpicklingError as err:
        detail = str(err).strip().splitlines()[-1][:200] if str(err).strip() else ""
        raise UserError(f"{path}: refused to load a file that holds more than plain data and tensors (it "
                        f"could run code when loaded; this project never writes such files). Use a checkpoint "
                        f"this project wrote. ({detail})") from None


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


def _fsync_files(folder: str) -> None:
    """fsync every file under ``folder`` (written by accelerate, DeepSpeed, transformers and us)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
