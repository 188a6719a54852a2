"""DeepSpeed and several nodes: the DeepSpeed config filled from the flags, ZeRO-3 loading, one
output folder every process sees. (How the Accelerator forms its process group on any machine
is ``core/processes.py``.)

* A DeepSpeed JSON may say ``"auto"``; here every ``auto`` is filled from this run's flags,
  and a number that disagrees with a flag is an error naming both, so a run never has two
  batch sizes, accumulations or clipping thresholds. The JSON must not carry an
  ``optimizer`` or ``scheduler``: the project's own optimizer and LR schedule (exact across
  resume, one step per optimizer step) stay in charge.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any

from ..core.errors import UserError
from ..core.processes import uses_deepspeed, zero_stage


@contextmanager
def load_whole_model(accelerator):
    """Under ZeRO-3, load the model whole and let ``prepare`` partition it: transformers would
    otherwise build it inside ``deepspeed.zero.Init``, where Whisper's sinusoidal position
    initialisation fails. Costs one full copy of the weights in CPU memory per process while
    loading (6 GB for whisper-large in fp32)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or zero_stage(accelerator) != 3:
        yield
        return
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def fill_deepspeed_config(accelerator, training) -> None:
    """Fill the DeepSpeed config's ``auto`` values from the flags before ``prepare``."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    source = getattr(plugin, "hf_ds_config", None)
    name = getattr(source, "config_file", None) or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") \
        or "the DeepSpeed config"
    for section in ("optimizer", "scheduler"):
        if section in ds:
            raise UserError(
                f"{name}: remove the '{section}' section; the optimizer comes from --optim and the "
                "learning-rate schedule from --lr_scheduler_type/--learning_rate/--warmup_steps, "
                "the same with or without DeepSpeed")
    micro = training.per_device_train_batch_size
    accumulation = training.gradient_accumulation_steps
    values = {
        "train_micro_batch_size_per_gpu": (micro, "--per_device_train_batch_size"),
        "gradient_accumulation_steps": (accumulation, "--gradient_accumulation_steps"),
        "train_batch_size": (micro * accumulation * accelerator.num_processes,
                             "--per_device_train_batch_size x --gradient_accumulation_steps x processes"),
        "gradient_clipping": (training.max_grad_norm, "--max_grad_norm"),
    }
    for key, (value, flag) in values.items():
        _fill(ds, [key], value, flag, name)
    precision = accelerator.mixed_precision
    _fill(ds, ["bf16", "enabled"], precision == "bf16", "--mixed_precision", name)
    _fill(ds, ["fp16", "enabled"], precision == "fp16", "--mixed_precision", name)


def _fill(config: dict[str, Any], path: list[str], value: Any, flag: str, name: str) -> None:
    node = config
    for key in path[:-1]:
        if key not in node:
            return
        node = node[key]
    key = path[-1]
    current = node.get(key, "auto")
    if current == "auto":
        node[key] = value
    elif current != value and not (isinstance(value, float) and float(current) == value):
        raise UserError(f"{name}: {'.'.join(path)} is {current} but {flag} gives {value}; set it to "
                        "\"auto\" (filled from the flags) or make the flag agree")


# --------------------------------------------------------------------------------------------
# Several nodes: one output folder every process sees
# --------------------------------------------------------------------------------------------


def check_shared_output_dir(accelerator, output_dir: str) -> None:
    """Every process must see the files the main process writes in ``output_dir``: checkpoints
    are completed by the main process with files written by every rank, and every rank resumes
    from them. Checked once at start with a file only the main process writes."""
    if accelerator.num_processes == 1:
        return
    import socket
    import uuid

    from accelerate.utils import broadcast_object_list, gather_object

    token = [uuid.uuid4().hex if accelerator.is_main_process else None]
    broadcast_object_list(token, from_process=0)
    probe = os.path.join(output_dir, f".shared-check-{token[0]}")
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as handle:
            handle.write(token[0])
    accelerator.wait_for_everyone()
    try:
        with open(probe, encoding="utf-8") as handle:
            seen = handle.read() == token[0]
    except OSError:
        seen = False
    blind = [entry for entry in gather_object([(accelerator.process_index, socket.gethostname(), seen)])
             if not entry[2]]
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        os.remove(probe)
    if blind:
        who = ", ".join(f"process {rank} on {host}" for rank, host, _ in blind)
        raise UserError(
            f"--output_dir {output_dir}: {who} cannot see the files the main process writes there. "
            "Every node must see the same output_dir (a shared file system such as NFS or Lustre, "
            "mounted at the same path): checkpoints hold files of every process")


def optimizer_offloaded(accelerator) -> bool:
    """Whether the DeepSpeed config keeps the optimizer states (and step) in CPU memory."""
    if not uses_deepspeed(accelerator):
        return False
    zero = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
    return (zero.get("offload_optimizer") or {}).get("device") in ("cpu", "nvme")
