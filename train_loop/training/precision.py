"""Precision: what the model is fed, what is saved, and which fp16 steps were skipped.

* Without DeepSpeed the weights stay float32 and autocast runs each op in bf16/fp16; with
  DeepSpeed the engine itself holds 16-bit weights (and float32 masters in its optimizer).
* Whatever trained in 16 bits, saved models hold the float32 master weights.
* fp16 steps whose update the loss scaler skipped are counted without a host sync.
"""

from __future__ import annotations

import torch

from ..core.errors import UserError
from ..core.processes import model_input_dtype, uses_deepspeed


def frozen_weights_fp32(model) -> dict[str, torch.Tensor]:
    """float32 copies (CPU) of the parameters that do not train, taken before ``prepare``.

    DeepSpeed keeps float32 master copies only of trainable parameters; a frozen encoder is
    held in bf16/fp16 alone. It never changes, so this copy is its exact full-precision value."""
    return {name: param.detach().to("cpu", torch.float32, copy=True)
            for name, param in model.named_parameters() if not param.requires_grad}


def full_precision_state_dict(accelerator, model, frozen_fp32: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The model's weights in float32 (on the main process; None elsewhere); every process must call.

    Without DeepSpeed the model's own weights are the float32 masters. Under DeepSpeed with
    bf16/fp16 they are 16-bit copies, and ``accelerator.get_state_dict`` would save those; the
    float32 masters live in the optimizer's partitions (ZeRO-2: a slice per process; ZeRO-3: the
    parameters too) and are gathered here one parameter at a time, then moved to the CPU."""
    if not uses_deepspeed(accelerator):
        weights = accelerator.get_state_dict(model)
        return weights if accelerator.is_main_process else None
    from deepspeed.utils import safe_get_full_fp32_param

    unwrapped = accelerator.unwrap_model(model)
    weights: dict[str, torch.Tensor] = {}
    for name, param in unwrapped.named_parameters():  # the same order on every process
        full = frozen_fp32.get(name)
        if full is None:
            full = safe_get_full_fp32_param(param)  # a collective: every process takes part
            if full is None:  # no master copy: the engine trains in float32
                full = param.detach()
            full = full.to("cpu", torch.float32)
        if accelerator.is_main_process:
            weights[name] = full.clone()
    if not accelerator.is_main_process:
        return None
    for name, buffer in unwrapped.named_buffers():
        weights[name] = buffer.detach().to("cpu")
    return weights


def loss_scale(accelerator, optimizer) -> float | None:
    """The fp16 loss scale now (None without fp16). Reading it syncs with the device: log time only."""
    if accelerator.scaler is not None:
        return float(accelerator.scaler.get_scale())
    if model_input_dtype(accelerator) == torch.float16:  # DeepSpeed's own dynamic loss scaler
        inner = getattr(optimizer, "optimizer", optimizer)
        scale = getattr(inner, "loss_scale", None) or getattr(inner, "cur_scale", None)
        return float(scale) if scale is not None else None
    return None


def step_unless_nonfinite(accelerator, optimizer, grad_norm: torch.Tensor) -> bool:
    """Apply the optimizer step unless a gradient is NaN or infinite; True when it was skipped.

    Whoever owns the update skips it: DeepSpeed (its engine stepped inside the last backward and
    drops a non-finite update itself), the fp16 GradScaler (which also lowers its scale), or,
    otherwise, this function (one host sync per step to read the gradient norm). accelerate's
    ``step_was_skipped`` misses the skips of fused optimizers with a GradScaler (accelerate#4242:
    their step() runs even when their kernel skips the update), so those are read from the
    scaler's backoff, which happens exactly when a gradient overflowed."""
    if uses_deepspeed(accelerator):
        optimizer.step()  # accelerate's no-op: the engine has stepped
        return bool(optimizer.step_was_skipped)
    scaler = accelerator.scaler
    if scaler is not None:
        scale_before = scaler._scale.clone()
        optimizer.step()
        return bool(scaler._scale < scale_before)
    if not torch.isfinite(grad_norm):
        return True
    optimizer.step()
    return False


def check_precision_supported(accelerator) -> None:
    """fp16 needs a GPU: on CPU accelerate runs neither autocast nor a loss scaler for it (the
    run would silently train in float32), and DeepSpeed's CPU backend rejects it."""
    if accelerator.mixed_precision != "fp16":
        return
    if uses_deepspeed(accelerator) and accelerator.device.type != "cpu":
        return  # DeepSpeed's fp16 engine with its own loss scaler
    if not uses_deepspeed(accelerator) and accelerator.scaler is not None:
        return  # autocast to fp16 with a GradScaler
    raise UserError("--mixed_precision fp16 needs a GPU: on a CPU accelerate neither casts to fp16 "
                    "nor scales the loss (the run would silently train in float32) and DeepSpeed's CPU "
                    "backend rejects it. Use --mixed_precision bf16 (or no) on a CPU")
