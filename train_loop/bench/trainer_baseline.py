"""The baseline: Hugging Face ``Seq2SeqTrainer`` set up as the 2022 Whisper event script did.

``run_speech_recognition_seq2seq_streaming.py`` (huggingface/community-events) streamed the
rows, decoded, resampled and computed log-mels in ``IterableDataset.map`` on the fly in the
main process (no DataLoader workers set), padded with ``DataCollatorSpeechSeq2SeqWithPadding``
and evaluated with ``predict_with_generate``. This module rebuilds that pipeline (written
here, not copied) so the benchmark can run it side by side with this project's loop on the
same model, data, batch size and precision. One difference: audio is decoded with this
project's soundfile decoder, because datasets 5's own decoder needs torchcodec and FFmpeg.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..data.audio import decode_audio
from ..data.config import SourceConfig
from ..data.sources import load_rows


def event_stream(data_dir: str, split: str, processor, max_rows: int | None = None):
    """Rows decoded and featurized on the fly, as the event script's ``prepare_dataset``."""
    rows = load_rows(SourceConfig(data_dir=data_dir), split).rows
    if max_rows is not None:
        rows = rows.select(range(min(max_rows, len(rows))))
    extractor, tokenizer = processor.feature_extractor, processor.tokenizer

    def prepare(row: dict[str, Any]) -> dict[str, Any]:
        audio = decode_audio(row["audio"])
        return {"input_features": extractor(audio, sampling_rate=16000).input_features[0],
                "labels": tokenizer(row["text"]).input_ids, "reference": row["text"]}

    return rows.to_iterable_dataset().map(prepare, remove_columns=["id", "audio", "text"])


class EventCollator:
    """The event's ``DataCollatorSpeechSeq2SeqWithPadding``."""

    def __init__(self, processor, decoder_start_token_id: int):
        self.processor = processor
        self.decoder_start_token_id = decoder_start_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.processor.feature_extractor.pad(
            [{"input_features": f["input_features"]} for f in features], return_tensors="pt")
        labels_batch = self.processor.tokenizer.pad([{"input_ids": f["labels"]} for f in features],
                                                    return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
            labels = labels[:, 1:]
        batch["labels"] = labels
        return batch


class _StepClock:
    """Trainer callback: the wall time at the end of every optimizer step."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.times.append(time.perf_counter())

        self.times: list[float] = []
        self.callback = Callback()


def _trainer(model, processor, output_dir: str, batch_size: int, steps: int, eval_batch_size: int,
             generation_max_length: int, learning_rate: float, gradient_checkpointing: bool,
             precision: str = "no"):
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    args = Seq2SeqTrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=batch_size, max_steps=max(1, steps),
        learning_rate=learning_rate, warmup_steps=0, gradient_checkpointing=gradient_checkpointing,
        per_device_eval_batch_size=eval_batch_size, predict_with_generate=True,
        generation_max_length=generation_max_length, logging_steps=10**9, save_strategy="no",
        eval_strategy="no", report_to=[], disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False, dataloader_num_workers=0, seed=0,
        bf16=precision == "bf16", fp16=precision == "fp16")
    start = processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    return Seq2SeqTrainer(model=model, args=args, data_collator=EventCollator(processor, start))


def train_throughput(model_dir: str, data_dir: str, output_dir: str, batch_size: int, steps: int,
                     warmup_steps: int, learning_rate: float, gradient_checkpointing: bool = False,
                     precision: str = "no") -> float:
    """Samples/s of the Trainer over steps ``warmup_steps+1 .. steps``."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir)
    if gradient_checkpointing:
        model.config.use_cache = False
    trainer = _trainer(model, processor, output_dir, batch_size, steps, batch_size, 8, learning_rate,
                       gradient_checkpointing, precision)
    trainer.train_dataset = event_stream(data_dir, "train", processor).shuffle(seed=0, buffer_size=500)
    clock = _StepClock()
    trainer.add_callback(clock.callback)
    trainer.train()
    times = clock.times
    return (len(times) - warmup_steps) * batch_size / (times[-1] - times[warmup_steps - 1])


def eval_throughput(model_dir: str, data_dir: str, output_dir: str, split: str, batch_size: int,
                    generation_max_length: int, max_rows: int | None = None,
                    precision: str = "no") -> tuple[float, list[dict[str, str]]]:
    """(samples/s, predictions) of ``predict_with_generate`` on the event's streamed eval split."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir)
    trainer = _trainer(model, processor, output_dir, 1, 1, batch_size, generation_max_length, 1e-5, False,
                       precision)
    stream = event_stream(data_dir, split, processor, max_rows)
    references = [row["reference"] for row in stream]
    started = time.perf_counter()
    output = trainer.predict(stream)
    seconds = time.perf_counter() - started
    tokens = np.where(output.predictions != -100, output.predictions, processor.tokenizer.pad_token_id)
    texts = processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    predictions = [{"reference": ref, "prediction": text.strip()} for ref, text in zip(references, texts)]
    return len(predictions) / seconds, predictions
