"""An exponential moving average of the weights (``--ema_decay``).

After every applied optimizer step, ``average = decay * average + (1 - decay) * weights`` for
every trainable parameter, kept in float32 beside the model. Every checkpoint saves it
(``ema.safetensors``) and a resume restores it exactly. At the end it is
written as its own Whisper folder (``output_dir/ema``), or, with ``--eval_with_ema``, every
evaluation (hence the best checkpoint) and the final model use it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from ..core.errors import UserError


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.average = {name: param.detach().float().clone()
                        for name, param in model.named_parameters() if param.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            if name in self.average:
                self.average[name].lerp_(param.detach().float(), 1.0 - self.decay)

    @contextmanager
    @torch.no_grad()
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own ones again after."""
        saved = {}
        for name, param in model.named_parameters():
            if name in self.average:
                saved[name] = param.detach().clone()
                param.copy_(self.average[name])
        try:
            yield
        finally:
            for name, param in model.named_parameters():
                if name in saved:
                    param.copy_(saved[name])

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            if name in self.average:
                param.copy_(self.average[name])

    def averaged_weights(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``weights`` (a full float32 state dict) with the averaged parameters put in; a name
        that shares its tensor with an averaged one (Whisper's tied output projection) follows."""
        out = dict(weights)
        by_storage: dict[tuple, list[str]] = {}
        for name, tensor in weights.items():
            by_storage.setdefault((tensor.data_ptr(), tuple(tensor.shape)), []).append(name)
        for name, average in self.average.items():
            if name not in weights:
                continue
            tensor, value = weights[name], average.to("cpu", torch.float32)
            for alias in by_storage[(tensor.data_ptr(), tuple(tensor.shape))]:
                out[alias] = value
        return out

    # Saved in every checkpoint as safetensors (checkpoint.EMA_FILE), restored on resume.
    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach().to("cpu").contiguous() for name, tensor in self.average.items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        mismatch = set(self.average) ^ set(tensors)
        if mismatch:
            raise UserError(f"the checkpoint's weight average (--ema_decay) covers other parameters "
                            f"({sorted(mismatch)[:3]}); resume with the flags of the original run")
        for name, tensor in tensors.items():
            self.average[name].copy_(tensor)
