"""Resuming a run: restore its state, and check that continuing is exact or say why it is not.

A checkpoint records the layout that produced it (processes, batch size, accumulation,
workers, seed, streaming), the identity of its training rows and its LR schedule. Resuming
with the same flags continues exactly. Anything else is named, one line per difference:

* ``--max_steps`` changed: the schedule is extended (see ``LRSchedule.extended``) and the run
  says how the rate continues;
* another batch layout on prepared data: the position is converted by clips, so the clip order
  goes on where it stopped (only the grouping into steps changes);
* different training rows, streaming on/off, or a stream read by a different number of
  processes x workers: continuing the saved position would be wrong, so this is an error
  unless ``--reset_data_position`` starts a fresh epoch (weights, optimizer and step kept);
* flags that decide what the checkpoint holds (LoRA and its shape, the weight average, a frozen
  encoder, the optimizer, for LoRA the base model): one line naming the flag, before anything
  is loaded (``check_saved_flags``).
"""

from __future__ import annotations

import os
from typing import Any

from ..core.errors import UserError
from ..data.loaders import TrainBatches, loader_workers
from .checkpoint import TrainerState, load_checkpoint, load_data_state, read_json
from .schedule import LRSchedule

LAYOUT_FLAGS = {
    "num_processes": "number of processes",
    "per_device_train_batch_size": "--per_device_train_batch_size",
    "gradient_accumulation_steps": "--gradient_accumulation_steps",
    "dataloader_num_workers": "--dataloader_num_workers",
    "seed": "--seed",
    "streaming": "--streaming",
    "group_by_length": "--group_by_length",
    "timestamp_probability": "--timestamp_probability",
    "prev_text_probability": "--prev_text_probability",
    "no_speech_probability": "--no_speech_probability",
    "speech_bounds": "--speech_bounds",
}
# Packing flags shape every window (which clips, gaps, labels): a change reorders the epoch.
PACKING_FLAGS = ("timestamp_probability", "prev_text_probability", "no_speech_probability", "speech_bounds")


# Flags whose change makes the checkpoint's weights or optimizer state not fit the model: a
# resume with another value would fail deep inside a load (size mismatch, parameter groups).
STATE_FLAGS = ("use_lora", "lora_r", "lora_target_modules", "freeze_encoder", "optim")


def check_saved_flags(path: str, flags: dict[str, Any]) -> None:
    """Refuse, in one line, a resume whose flags no longer fit what checkpoint ``path`` holds."""
    saved = read_json(os.path.join(path, "run_config.json"))
    changed = [name for name in STATE_FLAGS if name in saved and saved[name] != flags.get(name)]
    if "ema_decay" in saved and (saved["ema_decay"] is None) != (flags.get("ema_decay") is None):
        changed.append("ema_decay")
    if flags.get("use_lora") and saved.get("use_lora") and saved.get("model_name_or_path") != flags.get(
            "model_name_or_path"):
        changed.append("model_name_or_path")  # adapters belong to the base model they were trained on
    if changed:
        differences = "; ".join(f"--{name} {_shown(flags.get(name))} (the checkpoint: {_shown(saved.get(name))})"
                                for name in changed)
        raise UserError(f"--resume_from {path}: {differences}. What the checkpoint holds fits its own flags; resume "
                        "with those, or start a new run in another --output_dir")


def _shown(value: Any) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def run_layout(config, accelerator, train_batches: TrainBatches) -> dict[str, Any]:
    """What must match for a resume to be exact; stored in every checkpoint's state."""
    return {
        "num_processes": accelerator.num_processes,
        "per_device_train_batch_size": config.training.per_device_train_batch_size,
        "gradient_accumulation_steps": config.training.gradient_accumulation_steps,
        "dataloader_num_workers": loader_workers(config.data, config.source.streaming, accelerator),
        "seed": config.training.seed,
        "streaming": config.source.streaming,
        "group_by_length": config.data.group_by_length,
        "train_rows": train_batches.rows_key,  # with packing: of the indexed clips ("packed" + ids)
        **({name: getattr(config.packing, name) for name in PACKING_FLAGS} if config.packing.pack_to_window else {}),
    }


def resume(path: str, accelerator, train_batches: TrainBatches, layout: dict[str, Any],
           schedule: LRSchedule, reset_data_position: bool,
           lora: bool = False, ema=None) -> tuple[TrainerState, LRSchedule, list[str]]:
    """Load checkpoint ``path`` into the prepared objects and place the data where it stopped.

    Returns the trainer state, the schedule to continue with, and the notes to print.
    """
    state = load_checkpoint(accelerator, path, lora, ema)
    notes: list[str] = []
    schedule, schedule_notes = continue_schedule(state.schedule, schedule, state.step)
    notes += schedule_notes
    saved_fingerprint = read_json(os.path.join(path, "manifest.json")).get("data_fingerprint")
    if saved_fingerprint and saved_fingerprint != train_batches.fingerprint:
        notes.append("the training files differ from the checkpoint's (moved, copied or "
                     "modified since); the rows are the same, so the position still applies")
    notes += place_data(train_batches, state, state.layout, layout, reset_data_position,
                        load_data_state(path, accelerator.process_index))
    return state, schedule, notes


def continue_schedule(saved: dict[str, Any], current: LRSchedule, step: int) -> tuple[LRSchedule, list[str]]:
    if current.total_steps < step:
        raise UserError(f"--max_steps {current.total_steps}: the checkpoint is already at step {step}; "
                        f"give --max_steps {step} to finish the run, or a larger one to train further")
    if current.total_steps == step:
        # Trained to the end; what comes after (the final model, the test split) may not have:
        # a kill during the final save leaves a folder without weights. Finish it now.
        return (LRSchedule(**saved) if saved else current), [
            f"the checkpoint is at the last step ({step}): no training; the run saves the final model and "
            "evaluates the test split"]
    if not saved:
        return current, []
    old = LRSchedule(**saved)
    shape = ("kind", "peak", "warmup_steps", "min_lr")
    if all(getattr(old, name) == getattr(current, name) for name in shape):
        if old.total_steps == current.total_steps:
            return old, []  # exactly the saved schedule (an earlier extension included)
        new = old.extended(current.total_steps, step)
        if current.kind == "constant":
            how = f"the constant rate {new(step + 1):.3g} continues"
        elif step <= current.warmup_steps:
            how = f"warmup is unchanged; the {current.kind} decay now ends at step {current.total_steps}"
        else:
            how = (f"the rate continues from {new(step):.3g} at step {step} and decays ({current.kind}) "
                   f"to {current.min_lr:g} at step {current.total_steps}, without jumping back up")
        return new, [f"--max_steps changed from {old.total_steps} to {current.total_steps}: {how}"]
    names = {"kind": "--lr_scheduler_type", "peak": "--learning_rate", "warmup_steps": "--warmup_steps",
             "min_lr": "--min_learning_rate"}
    changed = ", ".join(f"{names[name]} {getattr(old, name)} -> {getattr(current, name)}"
                        for name in shape if getattr(old, name) != getattr(current, name))
    return current, [f"the learning-rate schedule differs from the checkpoint's ({changed}): step "
                     f"{step + 1} uses {current(step + 1):.3g} (the old schedule: {old(step + 1):.3g})"]


def place_data(batches: TrainBatches, state: TrainerState, saved: dict[str, Any],
               current: dict[str, Any], reset: bool, data_state: dict[str, Any] | None) -> list[str]:
    """Seek ``batches`` to the checkpoint's position (or a fresh epoch with ``reset``)."""
    if reset:
        batches.seek(state.epoch + 1, 0)
        return [f"--reset_data_position: training data starts afresh at epoch {state.epoch + 1}"]
    differences = {key: (saved.get(key), current[key]) for key in LAYOUT_FLAGS
                   if key in saved and saved[key] != current[key]}
    described = "; ".join(f"{LAYOUT_FLAGS[key]} {old} -> {new}" for key, (old, new) in differences.items())
    wrong = []
    if "streaming" not in differences and saved.get("train_rows") and saved["train_rows"] != current["train_rows"]:
        wrong.append("the training rows differ from the checkpoint's (other data, filters or "
                     "--max_train_samples)")
    if "streaming" in differences:
        wrong.append(f"{LAYOUT_FLAGS['streaming']} changed")
    elif current["streaming"] and ({"num_processes", "dataloader_num_workers"} & differences.keys()):
        wrong.append("a stream's position belongs to its readers (processes x --dataloader_num_workers), "
                     f"which changed ({described})")
    if current["streaming"] and data_state is None and not wrong:
        wrong.append("the checkpoint has no stream position for this process")
    if wrong:
        raise UserError(f"cannot continue the checkpoint's data position: {'; '.join(wrong)}. Resume "
                        "with the original flags and data, or pass --reset_data_position to keep the "
                        "weights, optimizer and step and start the data at a fresh epoch")

    notes = []
    if current["streaming"]:
        batches.load_state_dict(data_state)
    else:
        epoch, done, note = convert_position(state, saved, current)
        batches.seek(epoch, done)
        notes += [note] if note else []
    if differences:
        notes.insert(0, f"not an exact continuation, the layout changed: {described}")
        reordered = [LAYOUT_FLAGS[key] for key in ("seed", "group_by_length", *PACKING_FLAGS) if key in differences]
        if current.get("group_by_length") and {"per_device_train_batch_size", "num_processes"} & differences.keys():
            reordered.append("the global batch size (with --group_by_length the groups depend on it)")
        if reordered:
            notes.append(f"{' and '.join(reordered)} changed: the rest of epoch {state.epoch} follows "
                         "the new order, so some of its clips repeat and others are not seen")
    return notes


def convert_position(state: TrainerState, saved: dict[str, Any], current: dict[str, Any]) -> tuple[int, int, str]:
    """Prepared data: (epoch, batches done) in the current layout. Every layout walks the same
    clip order of an epoch, so the position converts by clips consumed."""
    old_batch = saved.get("per_device_train_batch_size", 0) * saved.get("num_processes", 0)
    new_batch = current["per_device_train_batch_size"] * current["num_processes"]
    if not old_batch or old_batch == new_batch:
        return state.epoch, state.batches_in_epoch, ""
    clips = state.batches_in_epoch * old_batch
    done, remainder = divmod(clips, new_batch)
    note = (f"data position converted: {clips} clips of epoch {state.epoch} were used, which is "
            f"{done} batches of {new_batch}")
    if remainder:
        note += f"; the last {remainder} of those clips are seen again"
    return state.epoch, done, note


def describe(state: TrainerState) -> str:
    best = (f", best {state.best_metric:.3f} at step {state.best_step}" if state.best_metric is not None
            else "")
    return f"step {state.step} (epoch {state.epoch}, batch {state.batches_in_epoch}{best})"

