"""Optimizers: AdamW (default; fused kernel or 8-bit states as options) or Adafactor, with
weight decay only on weight matrices."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..core.errors import UserError

if TYPE_CHECKING:  # torch is imported when an optimizer is built: the flags read OPTIMIZERS without it
    import torch


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; never biases or layer-norm scales (1-D tensors)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]  # LoRA adapters have no 1-D tensors


def build_optimizer(model: torch.nn.Module, config, offloaded: bool = False) -> torch.optim.Optimizer:
    """``config``: the training section of the flags (``TrainingConfig``, which lists this
    module's ``OPTIMIZERS`` as its choices). ``offloaded``: DeepSpeed runs the optimizer step on
    the CPU (``offload_optimizer``)."""
    groups = parameter_groups(model, config.weight_decay)
    adam = dict(lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon)
    if offloaded and config.optim in ("adamw", "adamw_fused"):
        return _deepspeed_cpu_adam(groups, adam)
    if offloaded and config.optim == "adamw_8bit":
        raise UserError("--optim adamw_8bit keeps its states on the GPU, which contradicts the "
                        "DeepSpeed config's offload_optimizer; use --optim adamw (DeepSpeed's CPU "
                        "Adam) with offload, or a config without offload")
    return OPTIMIZERS[config.optim](groups, adam)


def _adamw(groups: list[dict], adam: dict):
    import torch

    return torch.optim.AdamW(groups, **adam)


def _adamw_fused(groups: list[dict], adam: dict):
    import torch

    # One kernel for all parameters instead of a loop over them (CPU and GPU).
    return torch.optim.AdamW(groups, fused=True, **adam)


def _adafactor(groups: list[dict], adam: dict):
    from transformers.optimization import Adafactor

    # Our schedule sets the learning rate, so Adafactor's own relative step is off.
    return Adafactor(groups, lr=adam["lr"], scale_parameter=False, relative_step=False, warmup_init=False)


def _adamw_8bit(groups: list[dict], adam: dict):
    """AdamW with 8-bit states (bitsandbytes): a quarter of AdamW's optimizer memory."""
    import torch

    if not torch.cuda.is_available():
        raise UserError("--optim adamw_8bit needs a CUDA GPU (bitsandbytes' 8-bit optimizers have no "
                        "CPU kernels); use --optim adamw or adafactor here")
    try:
        import bitsandbytes
    except ImportError:
        raise UserError("--optim adamw_8bit needs bitsandbytes: pip install '.[8bit]' (or pip install bitsandbytes)") from None
    return bitsandbytes.optim.AdamW8bit(groups, **adam)


def _deepspeed_cpu_adam(groups: list[dict], adam: dict):
    """AdamW as DeepSpeed's CPU kernel (vectorized C++), several times faster than torch's
    AdamW on the CPU, where an offloaded optimizer steps. Built on first use (~40 s)."""
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, adamw_mode=True, **adam)
    except Exception as err:  # a failed JIT build raises RuntimeError, ImportError, CalledProcessError...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"the DeepSpeed config offloads the optimizer to the CPU, but DeepSpeed's CPU Adam could "
            f"not be built ({reason}). Install a C++ compiler and the Python headers (Debian/Ubuntu: "
            "apt-get install g++ python3-dev) and retry, or install DeepSpeed with the op prebuilt: "
            "DS_BUILD_CPU_ADAM=1 pip install deepspeed") from None


# --optim choices: name -> builder(parameter groups, AdamW arguments). One entry adds an optimizer.
OPTIMIZERS: dict[str, Callable[[list[dict], dict], "torch.optim.Optimizer"]] = {
    "adamw_fused": _adamw_fused,
    "adamw": _adamw,
    "adamw_8bit": _adamw_8bit,
    "adafactor": _adafactor,
}
