"""Randomly initialized Whispers with the real multilingual tokenizer: the tiny ones the tests
and the demo train on CPU in seconds, and the real models' shapes for throughput benchmarks
(no download). Nothing in a real run needs them.

The tokenizer and generation settings are bundled in ``assets/whisper-multilingual`` (from
OpenAI's MIT-licensed Whisper).
"""

from __future__ import annotations

import torch

from ..core.model import ASSETS, follow_umask, save_processor


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
    from transformers import (
        GenerationConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

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
    save_processor(WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer), output_dir)
    follow_umask(output_dir)
    return output_dir
