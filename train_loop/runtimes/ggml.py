"""Write a Whisper model in transformers format as a whisper.cpp model file (ggml).

No maintained converter is installable from PyPI (whisper.cpp ships its converters as scripts
in its repository), so the format is written here. The file is what whisper.cpp's
``whisper_model_load`` reads:

1. magic ``0x67676d6c`` ("ggml"), then eleven int32 hyper-parameters: n_vocab, n_audio_ctx,
   n_audio_state, n_audio_head, n_audio_layer, n_text_ctx, n_text_state, n_text_head,
   n_text_layer, n_mels and ftype (0 float32, 1 float16);
2. the mel filterbank: n_mels, n_fft, then n_mels x n_fft float32 (the model's own feature
   extractor's filters, Whisper's Slaney-scale bank; ``tests/test_export.py`` checks them
   against a fresh ``WhisperFeatureExtractor``);
3. the byte-level BPE vocabulary: a count, then each token as int32 length + bytes, in id order
   (the special tokens after them are implied by n_vocab, as whisper.cpp expects);
4. every tensor: int32 n_dims, name length, ftype; the dims innermost first; the name; the data.
   Names follow OpenAI's checkpoint (``encoder.blocks.0.attn.query.weight``); matrices are
   float16 unless float32 is asked for, while biases, norms, positional embeddings and conv
   biases stay float32 (what whisper.cpp expects of them).

Only float16 files are offered: whisper.cpp's CPU convolution (im2col) asserts float16 kernels,
and its loader sizes every matrix of a float32 file as float32, so a float32 file aborts at the
first convolution (measured with pywhispercpp 1.5.1). whisper.cpp's ``quantize`` tool turns
the float16 file into q5_0/q8_0.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from ..core.errors import UserError

MAGIC = 0x67676D6C
FILE_NAME = "ggml-model.bin"
QUANTIZATIONS = ("float16",)

# transformers module names -> OpenAI / whisper.cpp names, inside an encoder or decoder block.
_BLOCK_NAMES = {
    "self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln",
}
_TOP_NAMES = {
    "encoder.layer_norm": "encoder.ln_post", "decoder.layer_norm": "decoder.ln",
    "encoder.embed_positions": "encoder.positional_embedding",
    "decoder.embed_positions": "decoder.positional_embedding",
    "decoder.embed_tokens": "decoder.token_embedding",
}
_KEEP_FLOAT32 = ("encoder.conv1.bias", "encoder.conv2.bias", "encoder.positional_embedding",
                 "decoder.positional_embedding")


def whisper_cpp_name(name: str) -> str | None:
    """``model.encoder.layers.0.self_attn.q_proj.weight`` -> ``encoder.blocks.0.attn.query.weight``;
    None for the output projection (tied to the token embedding; whisper.cpp reuses that)."""
    if name.startswith("proj_out."):
        return None
    parts = name.removeprefix("model.").split(".")
    if len(parts) > 3 and parts[1] == "layers":
        module = ".".join(parts[3:-1])
        return ".".join([parts[0], "blocks", parts[2], _BLOCK_NAMES[module], parts[-1]])
    module, leaf = ".".join(parts[:-1]), parts[-1]
    if module in _TOP_NAMES:
        mapped = _TOP_NAMES[module]
        # OpenAI stores the positional embeddings as bare tensors, without ".weight".
        return mapped if mapped.endswith("positional_embedding") else f"{mapped}.{leaf}"
    return ".".join(parts)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte <-> printable-character table, which Whisper's BPE uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in characters)))


def vocabulary_bytes(tokenizer) -> list[bytes]:
    """The byte sequences of the ordinary BPE tokens, in id order (ids below <|endoftext|>)."""
    decode = {character: byte for byte, character in _bytes_to_unicode().items()}
    end_of_text = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    by_id = sorted((index, token) for token, index in tokenizer.get_vocab().items() if index < end_of_text)
    if [index for index, _ in by_id] != list(range(end_of_text)):
        raise ValueError("the tokenizer's ordinary tokens are not the ids 0..<|endoftext|>-1")
    return [bytes(decode[character] for character in token) for _, token in by_id]


def write_ggml(model, processor, path: str, quantization: str = "float16") -> str:
    """Write ``model`` (a WhisperForConditionalGeneration) and ``processor`` to ``path``."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"ggml quantization {quantization!r}: one of {', '.join(QUANTIZATIONS)}")
    config = model.config
    half = quantization == "float16"
    filters = np.asarray(processor.feature_extractor.mel_filters, dtype=np.float32).T  # (n_mels, n_freq)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "wb") as out:
        out.write(struct.pack("i", MAGIC))
        out.write(struct.pack("11i", config.vocab_size, config.max_source_positions, config.d_model,
                              config.encoder_attention_heads, config.encoder_layers, config.max_target_positions,
                              config.d_model, config.decoder_attention_heads, config.decoder_layers,
                              config.num_mel_bins, int(half)))
        out.write(struct.pack("ii", *filters.shape))
        out.write(filters.astype("<f4").tobytes())
        tokens = vocabulary_bytes(processor.tokenizer)
        out.write(struct.pack("i", len(tokens)))
        for token in tokens:
            out.write(struct.pack("i", len(token)))
            out.write(token)
        for name, tensor in model.state_dict().items():
            mapped = whisper_cpp_name(name)
            if mapped is None:
                continue
            data = tensor.detach().float().cpu().numpy()
            if mapped in ("encoder.conv1.bias", "encoder.conv2.bias"):
                data = data.reshape(-1, 1)  # whisper.cpp adds them to a (channels, frames) result
            keep_float32 = not half or data.ndim < 2 or mapped in _KEEP_FLOAT32
            data = data.astype("<f4" if keep_float32 else "<f2")
            encoded = mapped.encode("utf-8")
            out.write(struct.pack("iii", data.ndim, len(encoded), 0 if keep_float32 else 1))
            out.write(struct.pack(f"{data.ndim}i", *reversed(data.shape)))
            out.write(encoded)
            out.write(data.tobytes())
    os.replace(path + ".tmp", path)
    return path


def export(model, processor, output_dir: str, quantization: str) -> str:
    """``output_dir/ggml-model.bin`` for whisper.cpp, and the tokenizer beside it for whoever
    reads the folder; returns the file's path."""
    target = write_ggml(model, processor, os.path.join(output_dir, FILE_NAME), quantization)
    processor.save_pretrained(output_dir)
    return target


def _load(exported: str, language: str, task: str, max_new_tokens: int, num_beams: int, timestamps: bool):
    """whisper.cpp decoding as transformers does here: the same beam width (1: greedy), no
    temperature fallback, no previous-text context; timestamps (sequential long-form) or not."""
    try:
        from pywhispercpp.model import Model
    except ImportError:
        raise UserError("the parity check of a ggml model needs whisper.cpp's Python bindings: pip install "
                        "'.[export]' (or pip install pywhispercpp)") from None
    beams = {"params_sampling_strategy": 1, "beam_search": {"beam_size": num_beams, "patience": -1.0}} \
        if num_beams > 1 else {}
    return Model(exported, n_threads=os.cpu_count() or 1, print_realtime=False, print_progress=False,
                 redirect_whispercpp_logs_to=None, language=language, translate=task == "translate",
                 no_context=True, no_timestamps=not timestamps, single_segment=not timestamps, temperature=0.0,
                 temperature_inc=0.0, max_tokens=max_new_tokens, suppress_blank=True, **beams)


def transcriber(exported: str, language: str, task: str, max_new_tokens: int, num_beams: int = 1):
    """waveform -> text with whisper.cpp (pywhispercpp), no timestamps (see ``_load``)."""
    model = _load(exported, language, task, max_new_tokens, num_beams, timestamps=False)

    def transcribe_whisper_cpp(waveform) -> str:
        return "".join(segment.text for segment in model.transcribe(waveform)).strip()

    return transcribe_whisper_cpp


def long_form_transcriber(exported: str, language: str, task: str, max_new_tokens: int, num_beams: int = 1):
    """waveform -> (text, segments) with whisper.cpp's sequential long-form decoding and
    timestamps (the export check on a long file)."""
    model = _load(exported, language, task, max_new_tokens, num_beams, timestamps=True)

    def transcribe_long(waveform):
        # whisper.cpp's segment times are in units of 10 ms
        found = [{"start": segment.t0 / 100, "end": segment.t1 / 100, "text": segment.text.strip()}
                 for segment in model.transcribe(waveform)]
        found = [segment for segment in found if segment["text"]]
        return " ".join(segment["text"] for segment in found).strip(), found

    return transcribe_long
