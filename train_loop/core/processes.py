"""Which process does what, shared by training, evaluation and the tools: how the Accelerator is
built on this machine, main-process-only actions whose errors reach every process, work done
once per node, and what DeepSpeed changes about the model's inputs.

Without a GPU, several processes join one gloo group only when asked to: ``cpu=True`` for DDP,
and for DeepSpeed an explicit gloo process group (``--cpu`` and DeepSpeed exclude each other;
without it every rank believes it is alone).
"""

from __future__ import annotations

import os
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


def model_input_dtype(accelerator) -> torch.dtype:
    """The dtype of the model's float inputs (log-mel features).

    Without DeepSpeed the weights stay float32 and autocast runs each op in bf16/fp16, so the
    inputs stay float32. DeepSpeed instead casts the weights themselves to bf16/fp16 and runs no
    autocast: a float32 input then meets a 16-bit bias in the first convolution and fails."""
    if not uses_deepspeed(accelerator):
        return torch.float32
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    if ds.get("bf16", {}).get("enabled") is True:
        return torch.bfloat16
    if ds.get("fp16", {}).get("enabled") is True:
        return torch.float16
    return torch.float32
