"""LoRA adapters with PEFT (``--use_lora``): only the adapters train, checkpoints hold only them,
and the final model is merged back into a plain Whisper folder.

* Training: ``peft.get_peft_model`` wraps the target linear layers (``--lora_target_modules``);
  every other weight is frozen. The log says how many parameters train and what share.
* Checkpoints (single process and DDP): the model part of a checkpoint is the adapter weights
  alone (what requires grad), so it is megabytes, not the whole model; resuming loads them
  over the base model that ``--model_name_or_path`` gives again, with the optimizer, RNG and
  data position as usual, so it continues exactly. Under DeepSpeed the engine writes its own
  (whole-model) checkpoint format.
* The final model: ``W + scaling * B @ A`` for every adapted layer, written as an ordinary
  Whisper folder (``--lora_merge``, the default), so ``pipeline``, ``train_loop.evaluate``,
  ``transcribe`` and ``export`` read it unchanged; ``--lora_merge false`` writes PEFT's adapter
  folder instead (``PeftModel.from_pretrained(base, OUT)``).
"""

from __future__ import annotations

import torch

from ..core.errors import UserError
from ..core.model import save_processor

ADAPTER = "default"  # PEFT's name for the one adapter


class Adapters:
    """What ``--use_lora`` made of the model, and what the rest of the run asks of it: the plain
    Whisper inside, the merged weights, the adapter folder. A run without LoRA has none (None)."""

    def __init__(self, peft_model):
        self.peft_model = peft_model

    def whisper(self):
        """The Whisper module inside the PEFT wrapper (its config and generation config)."""
        return self.peft_model.get_base_model()

    def merged(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return merged_whisper_weights(self.peft_model, weights)

    def save(self, processor, output_dir: str) -> None:
        save_adapters(self.peft_model, processor, output_dir)


def apply_lora(model, config, freeze_encoder: bool = False) -> tuple[torch.nn.Module, Adapters]:
    """``model`` wrapped by PEFT with LoRA on ``config.lora_target_modules`` (a ``LoraConfig``
    section of this project's flags), and its ``Adapters``. With ``freeze_encoder`` the encoder's
    adapters stay frozen too: only the decoder adapts."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("--use_lora needs PEFT: pip install '.[lora]' (or pip install peft)") from None
    targets = [name.strip() for name in config.lora_target_modules.split(",") if name.strip()]
    present = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    unknown = [name for name in targets if name not in present]
    if not targets or unknown:
        raise UserError(f"--lora_target_modules {config.lora_target_modules}: "
                        f"{'no module named ' + ', '.join(unknown) if unknown else 'empty'} in this model; "
                        f"Whisper's linear layers are {', '.join(sorted(present))}")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, bias="none")
    wrapped = get_peft_model(model, lora)
    if freeze_encoder:
        wrapped.get_base_model().model.encoder.requires_grad_(False)
    return wrapped, Adapters(wrapped)


def parameter_summary(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if trainable == total:
        return f"{trainable / 1e6:.1f}M trainable parameters"
    return f"{trainable / 1e6:.2f}M of {total / 1e6:.1f}M parameters train ({100 * trainable / total:.2f}%)"


def keep_only_adapters_in_checkpoints(accelerator) -> None:
    """Make ``accelerator.save_state`` write only the trainable (adapter) tensors of the model."""

    def adapters_only(models, weights, output_dir) -> None:
        for index, (model, state) in enumerate(zip(models, weights)):
            trainable = {name for name, param in model.named_parameters() if param.requires_grad}
            weights[index] = {name: tensor for name, tensor in state.items() if name in trainable}

    accelerator.register_save_state_pre_hook(adapters_only)


def merged_whisper_weights(peft_model, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain Whisper state dict from a PEFT state dict (``base_model.model.*`` names): each
    adapted weight becomes ``W + scaling * B @ A``; the adapters themselves are dropped."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    scaling = {name: module.scaling[ADAPTER] for name, module in peft_model.get_base_model().named_modules()
               if isinstance(module, LoraLayer)}
    merged: dict[str, torch.Tensor] = {}
    for key, tensor in weights.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        if ".lora_" in name:
            continue
        if ".base_layer." in name:
            module, leaf = name.split(".base_layer.")
            name = f"{module}.{leaf}"
            if leaf == "weight" and module in scaling:
                a = weights[f"{prefix}{module}.lora_A.{ADAPTER}.weight"].double()
                b = weights[f"{prefix}{module}.lora_B.{ADAPTER}.weight"].double()
                tensor = (tensor.double() + scaling[module] * (b @ a)).to(tensor.dtype)
        merged[name] = tensor
    return merged


def save_adapters(peft_model, processor, output_dir: str) -> None:
    """--lora_merge false: PEFT's adapter folder (adapter_config.json, adapter_model.safetensors)
    with the processor, to load with ``PeftModel.from_pretrained(base, output_dir)``."""

    peft_model.save_pretrained(output_dir)
    save_processor(processor, output_dir)
