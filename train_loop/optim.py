"""Optimizers: AdamW (default) or Adafactor, with weight decay only on weight matrices."""

from __future__ import annotations

import torch

from .config import TrainingConfig
from .errors import UserError


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; never biases or layer-norm scales (1-D tensors)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, config.weight_decay)
    if config.optim == "adamw":
        return torch.optim.AdamW(groups, lr=config.learning_rate,
                                 betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon)
    if config.optim == "adafactor":
        from transformers.optimization import Adafactor

        # Our schedule sets the learning rate, so Adafactor's own relative step is off.
        return Adafactor(groups, lr=config.learning_rate, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    raise UserError(f"--optim {config.optim}: unknown optimizer")
