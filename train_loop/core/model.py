"""Whisper and its processor: the model section of the flags, loading with clear errors,
the generation settings a saved model keeps, and saving a model folder others can load.

torch and transformers are imported inside the functions: the flag sections of every command
import this module, and ``--help`` should not wait for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .flags import at_least, between, flag

ASSETS = Path(__file__).parent.parent / "assets" / "whisper-multilingual"


@dataclass
class ModelConfig:
    """Which Whisper to fine-tune and how."""
    _argument_group_name = "Which Whisper to fine-tune and how (model)"

    model_name_or_path: str = flag(
        "openai/whisper-small", "Model to fine-tune: a Hub id or a local folder "
        "(save_pretrained format, e.g. a previous run's output_dir).")
    language: str = flag("be", "Language token forced in labels and generation (code or name).")
    language_token_from: str | None = flag(
        None, "For a language Whisper does not know: reuse this known language's token for --language "
        "(e.g. --language xx --language_token_from uk). Saved in generation_config.json "
        "(trained_language), so evaluate, transcribe and export accept --language xx afterwards.")
    task: str = flag("transcribe", "Whisper task.", ("transcribe", "translate"))
    attn_implementation: str = flag(
        "sdpa", "Attention kernel.", ("eager", "sdpa", "flash_attention_2"))
    gradient_checkpointing: bool = flag(
        False, "Recompute activations in backward to save memory (use_cache is switched off "
        "for training and back on for generation).")
    freeze_encoder: bool = flag(False, "Train only the decoder.")
    apply_spec_augment: bool = flag(
        False, "SpecAugment during training: mask random time steps / mel channels of the input "
        "(regularizes long fine-tuning; never applied in evaluation).")
    mask_time_prob: float = flag(0.05, "SpecAugment: fraction of time steps masked (with --apply_spec_augment).",
                                 check=between(0, 1))
    mask_time_length: int = flag(10, "SpecAugment: frames per time mask.", check=at_least(1))
    mask_time_min_masks: int = flag(2, "SpecAugment: at least this many time masks per clip.", check=at_least(0))
    mask_feature_prob: float = flag(0.0, "SpecAugment: fraction of mel channels masked.", check=between(0, 1))
    mask_feature_length: int = flag(10, "SpecAugment: channels per feature mask.", check=at_least(1))

    def token_language(self) -> str:
        """The language whose token prefixes the labels and is forced in generation."""
        return self.language_token_from or self.language


def load_processor(name_or_path: str, language: str, task: str):
    from transformers import WhisperProcessor

    try:
        processor = WhisperProcessor.from_pretrained(name_or_path)
    except Exception as err:
        raise UserError(_load_hint(name_or_path, "processor", err)) from None
    tokenizer = processor.tokenizer
    start = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    if start is None or start == tokenizer.unk_token_id:
        # transformers builds an empty tokenizer from a folder without tokenizer files.
        raise UserError(f"--model_name_or_path {name_or_path}: no Whisper tokenizer there (tokenizer.json, "
                        "tokenizer_config.json); copy those files from the model it was trained from")
    try:
        tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
    except ValueError as err:
        raise UserError(f"--language {language}: not a language Whisper has a token for ({err}). For a "
                        "new language, add --language_token_from CODE: the token of a related language "
                        "Whisper knows (e.g. uk or ru for a Slavic language) is reused for it") from None
    return processor


def decoding_language(generation, language: str | None) -> str | None:
    """The language token to decode with, from a model's generation config: a model trained with
    --language_token_from keeps ``trained_language`` and ``language`` (the borrowed token), so
    asking for ``trained_language`` decodes with that token. No language given: the config's."""
    token = (getattr(generation, "language", None) or "").strip("<|>") or None
    trained = getattr(generation, "trained_language", None)
    return token if language is None or (trained and language == trained) else language


def model_language(name_or_path: str, language: str | None) -> str | None:
    """``decoding_language`` for a model folder (or Hub id) not loaded yet."""
    from transformers import GenerationConfig

    try:
        return decoding_language(GenerationConfig.from_pretrained(name_or_path), language)
    except OSError:
        return language


def refuse_adapters_only(path: str, flag: str) -> None:
    """A LoRA run's checkpoint-N holds only the adapters: loaded as a Whisper, every base weight
    would be random (WER 200%, an 8 MB "export") while the command exits 0. One line instead."""
    weights = os.path.join(path, "model.safetensors")
    if not os.path.isfile(weights):
        return
    from safetensors import safe_open

    with safe_open(weights, framework="pt") as handle:
        names = list(handle.keys())
    if names and all(".lora_" in name for name in names):
        raise UserError(f"{flag} {path} holds only LoRA adapters (a checkpoint of a --use_lora run), not a whole "
                        "Whisper. Give the run's --output_dir (its final model, adapters merged), or finish the run "
                        "with --resume_from to get one")


def load_model(config: ModelConfig, processor):
    import torch
    from transformers import WhisperForConditionalGeneration

    refuse_adapters_only(config.model_name_or_path, "--model_name_or_path")
    try:
        model = WhisperForConditionalGeneration.from_pretrained(
            config.model_name_or_path, attn_implementation=config.attn_implementation,
            dtype=torch.float32)  # fp32 master weights; autocast provides bf16/fp16 compute
    except Exception as err:
        raise UserError(_load_hint(config.model_name_or_path, "model", err)) from None
    configure_generation(model, config.token_language(), config.task,
                         trained_language=config.language if config.language_token_from else None)
    # SpecAugment lives in the model config: Whisper's encoder applies it in training mode only.
    model.config.apply_spec_augment = config.apply_spec_augment
    for name in ("mask_time_prob", "mask_time_length", "mask_time_min_masks", "mask_feature_prob",
                 "mask_feature_length"):
        setattr(model.config, name, getattr(config, name))
    if config.freeze_encoder:
        model.model.encoder.requires_grad_(False)
    if config.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.20
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False  # a KV cache is useless in training and conflicts with recomputation
    frames = processor.feature_extractor.nb_max_frames
    if model.config.max_source_positions * 2 != frames:
        raise UserError(
            f"{config.model_name_or_path}: the model takes {model.config.max_source_positions * 2} "
            f"input frames but its feature extractor makes {frames}; save a matching processor "
            f"(chunk_length) with the model")
    return model


def configure_generation(model, language: str, task: str, trained_language: str | None = None) -> None:
    """Make the saved model transcribe ``language`` by default (pipeline, generate).
    ``trained_language``: the language's own code when its token is borrowed (``language``)."""
    generation = model.generation_config
    generation.language = language
    generation.task = task
    if trained_language:
        generation.trained_language = trained_language  # saved in generation_config.json
    generation.forced_decoder_ids = None  # superseded by language/task; both set warns
    # Generation settings belong in generation_config; keeping them in config as well makes
    # transformers warn on every generate() call.
    for name in ("suppress_tokens", "begin_suppress_tokens", "forced_decoder_ids"):
        if getattr(model.config, name, None) is not None:
            setattr(model.config, name, None)


def _load_hint(name_or_path: str, what: str, err: Exception) -> str:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if os.path.isdir(name_or_path):
        return (f"--model_name_or_path {name_or_path}: cannot load the Whisper {what} from this "
                f"folder ({reason}); it must hold save_pretrained files (config.json, weights, "
                f"tokenizer and preprocessor files)")
    return (f"--model_name_or_path {name_or_path}: cannot load the Whisper {what} ({reason}). "
            f"Check the Hub id and your connection; offline, pass a local folder")


def save_model_folder(model, folder: str, weights: dict[str, Any], dtype: str = "float32") -> None:
    """``save_pretrained`` with ``weights`` cast to ``dtype``, and a config.json that says so.

    transformers records the dtype of the *module* in config.json, and ``from_pretrained``
    loads in that dtype by default; under DeepSpeed bf16 the module is bf16 while the weights
    saved here are the float32 masters, so the recorded dtype is corrected after the save."""
    import torch

    target = getattr(torch, dtype)
    cast: dict[tuple, Any] = {}  # tied weights (one tensor, two names) stay one tensor, saved once
    weights = dict(weights)
    for name, tensor in list(weights.items()):
        if tensor.is_floating_point():
            key = (tensor.data_ptr(), tuple(tensor.shape))
            weights[name] = cast.setdefault(key, tensor.to(target))
    model.save_pretrained(folder, state_dict=weights)
    model.config.dtype = dtype
    model.config.save_pretrained(folder)
    follow_umask(folder)


def follow_umask(folder: str) -> None:
    """transformers writes model.safetensors readable by its owner only (0600) while every other
    file follows the umask (0644 usually): a shared model folder would be half unreadable."""
    mask = os.umask(0)
    os.umask(mask)
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not os.path.islink(path) and os.stat(path).st_mode & 0o777 == 0o600:
            os.chmod(path, 0o666 & ~mask)


def save_processor(processor, folder: str) -> None:
    """The processor's files plus ``preprocessor_config.json``: transformers 5 keeps the feature
    extractor inside ``processor_config.json``, while CTranslate2's converter, faster-whisper and
    older transformers read ``preprocessor_config.json``."""
    processor.save_pretrained(folder)
    processor.feature_extractor.save_pretrained(folder)
