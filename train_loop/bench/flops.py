"""Model FLOPs per training sample, counted from the architecture (for MFU).

Never the Trainer's ``total_flos``: it multiplies 6 x parameters by the number of input
*features* (80 x 3000 per clip), overcounting Whisper about 240x. Here: 2 FLOPs per
multiply-add; forward = encoder over its positions + decoder over the label tokens; training
= 3 x forward (backward costs twice the forward).
"""

from __future__ import annotations


def forward_flops(config, label_tokens: int) -> float:
    d, mels = config.d_model, config.num_mel_bins
    positions, frames = config.max_source_positions, 2 * config.max_source_positions
    enc_layers, dec_layers, vocab = config.encoder_layers, config.decoder_layers, config.vocab_size
    enc_ffn, dec_ffn = config.encoder_ffn_dim, config.decoder_ffn_dim
    length = label_tokens
    conv = 2 * mels * 3 * d * frames + 2 * d * 3 * d * positions
    encoder = enc_layers * (2 * (4 * d * d + 2 * d * enc_ffn) * positions + 4 * positions * positions * d)
    per_decoder_layer = (
        2 * 4 * d * d * length + 4 * length * length * d  # self-attention: projections, scores
        + 2 * 2 * d * d * length + 2 * 2 * d * d * positions  # cross-attention q,o / k,v
        + 4 * length * positions * d  # cross-attention scores and values
        + 2 * 2 * d * dec_ffn * length)  # MLP
    head = 2 * d * vocab * length
    return conv + encoder + dec_layers * per_decoder_layer + head


def train_flops_per_sample(config, label_tokens: int) -> float:
    return 3 * forward_flops(config, label_tokens)


# Dense bf16 peak FLOP/s (no sparsity) of GPUs this may run on, by name fragment.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12,
             "RTX 4090": 165e12, "V100": 125e12}


def peak_flops(device_name: str) -> float | None:
    for fragment, peak in PEAK_BF16.items():
        if fragment.lower() in device_name.lower():
            return peak
    return None
