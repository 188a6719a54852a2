"""Processes and DeepSpeed: one Accelerator for one GPU, a node, several nodes, or ZeRO.

* Without a GPU, several processes join one gloo group only when asked to: ``cpu=True`` for
  DDP, and for DeepSpeed an explicit gloo process group (``--cpu`` and DeepSpeed exclude
  each other; without it every rank believes it is alone).
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

import torch

from .errors import UserError


def deepspeed_requested() -> bool:
    """Whether ``accelerate launch`` was told to use DeepSpeed (config file or --use_deepspeed)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes")


def accelerator_kwargs(timeout_seconds: int = 7200) -> dict[str, Any]:
    """How the Accelerator must be built on this machine to form one process group, whose
    collectives wait ``timeout_seconds`` (--ddp_timeout) for a slow process before failing."""
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    timeout = timedelta(seconds=timeout_seconds)
    if torch.cuda.is_available():
        return {"kwargs_handlers": [InitProcessGroupKwargs(timeout=timeout)]}
    if deepspeed_requested():
        return {"kwargs_handlers": [InitProcessGroupKwargs(backend="gloo", timeout=timeout)]}
    return {"cpu": True, "kwargs_handlers": [InitProcessGroupKwargs(timeout=timeout)]}


def uses_deepspeed(accelerator) -> bool:
    return getattr(accelerator.state, "deepspeed_plugin", None) is not None


def reset_accelerator_settings() -> None:
    """Let this process build an Accelerator with other settings than its previous one.

    accelerate keeps precision and plugins in a process-wide singleton that refuses a change
    ("AcceleratorState has already been initialized"), but ``main()`` may run several times in
    one process (the demo, the benchmarks, tests). The process group itself is kept."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)


def zero_stage(accelerator) -> int:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return 0
    return int(plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0))


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
# Several nodes: shared output folder, caches prepared once per node
# --------------------------------------------------------------------------------------------


def once_per_node(accelerator, prepare):
    """Run ``prepare`` (which fills a cache on disk) on every process, in three turns: the main
    process, then the first process of every other node, then all the others.

    A cache on a disk that all nodes share is then built once and read by everyone; a cache on
    each node's local disk is built by that node's first process while the other processes of
    the node wait. No two processes ever write the same cache at once."""
    turn = 0 if accelerator.is_main_process else 1 if accelerator.is_local_main_process else 2
    result = None
    for current in range(3):
        if current == turn:
            result = prepare()
        accelerator.wait_for_everyone()
    return result


def on_main_process(accelerator, action, share_result: bool = False):
    """Run ``action`` on the main process only; a UserError it raises is raised on every process
    (the others would otherwise wait for the main process forever). With ``share_result`` every
    process gets the result; otherwise the others get None."""
    result, message = None, None
    if accelerator.is_main_process:
        try:
            result = action()
        except UserError as err:
            message = str(err)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        holder = [message, result if share_result else None]
        broadcast_object_list(holder, from_process=0)
        message = holder[0]
        if share_result:
            result = holder[1]
    if message is not None:
        raise UserError(message)
    return result


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
