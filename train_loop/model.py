"""Loading Whisper and its processor, and building the tiny random Whisper used offline.

The tiny model has the real multilingual tokenizer and generation settings (bundled in
``assets/whisper-multilingual``, from OpenAI's MIT-licensed Whisper) and a short input
window, so the demo and the tests train on CPU in seconds per step.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import UserError

ASSETS = Path(__file__).parent / "assets" / "whisper-multilingual"


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


def load_model(config: ModelConfig, processor):
    from transformers import WhisperForConditionalGeneration

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


def build_tiny_whisper(output_dir: str, chunk_length: int = 10, d_model: int = 64,
                       layers: int = 2, heads: int = 4, seed: int = 0, dropout: float = 0.0) -> str:
    """Save a randomly initialized tiny Whisper with the real multilingual tokenizer.

    ``chunk_length`` seconds of audio make ``chunk_length * 100`` log-mel frames and
    ``chunk_length * 50`` encoder positions (30 s and 1500 for the real models).
    """
    return build_random_whisper(output_dir, chunk_length=chunk_length, d_model=d_model, encoder_layers=layers,
                                decoder_layers=layers, heads=heads, seed=seed, dropout=dropout)


# The real models' shapes (their config.json), for benchmarks with random weights: no download.
REAL_SHAPES = {
    "whisper-small": dict(d_model=768, encoder_layers=12, decoder_layers=12, heads=12, num_mel_bins=80),
    "whisper-medium": dict(d_model=1024, encoder_layers=24, decoder_layers=24, heads=16, num_mel_bins=80),
    "whisper-large-v3": dict(d_model=1280, encoder_layers=32, decoder_layers=32, heads=20, num_mel_bins=128,
                             vocab_size=51866),  # one more language token (yue) than the others
}


def random_whisper_config(chunk_length: int = 30, d_model: int = 64, encoder_layers: int = 2,
                          decoder_layers: int = 2, heads: int = 4, num_mel_bins: int = 80, dropout: float = 0.0,
                          vocab_size: int | None = None):
    """A WhisperConfig of the given shape with this project's tokenizer and generation config."""
    from transformers import GenerationConfig, WhisperConfig, WhisperTokenizer

    tokenizer = WhisperTokenizer.from_pretrained(ASSETS)
    generation = GenerationConfig.from_pretrained(ASSETS)
    return WhisperConfig(
        vocab_size=vocab_size or len(tokenizer), num_mel_bins=num_mel_bins, d_model=d_model,
        encoder_layers=encoder_layers, decoder_layers=decoder_layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=4 * d_model, decoder_ffn_dim=4 * d_model,
        max_source_positions=chunk_length * 50, max_target_positions=448,
        decoder_start_token_id=generation.decoder_start_token_id,
        pad_token_id=generation.pad_token_id, bos_token_id=generation.bos_token_id,
        eos_token_id=generation.eos_token_id, suppress_tokens=None, begin_suppress_tokens=None,
        apply_spec_augment=False, dropout=dropout)


def build_random_whisper(output_dir: str, chunk_length: int = 30, seed: int = 0, **shape) -> str:
    """Save a randomly initialized Whisper of ``shape`` (see ``random_whisper_config``) with the
    real multilingual tokenizer, ready for ``from_pretrained``; returns ``output_dir``."""
    from transformers import (GenerationConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor, WhisperTokenizer)

    config = random_whisper_config(chunk_length=chunk_length, **shape)
    tokenizer = WhisperTokenizer.from_pretrained(ASSETS)
    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, chunk_length=chunk_length)
    generation = GenerationConfig.from_pretrained(ASSETS)
    generation.alignment_heads = None  # specific to the pretrained model's attention heads
    generation.forced_decoder_ids = None
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = generation
    model.save_pretrained(output_dir)
    from .checkpoint import save_processor

    save_processor(WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer), output_dir)
    return output_dir
