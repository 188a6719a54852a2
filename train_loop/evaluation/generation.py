"""Batched autoregressive evaluation: generate, gather from every process once, score.

Separate from training in every way that matters for speed: its own batch size, clips sorted
by length so a batch finishes together, the KV cache on, no gradient, and a capped generation
length. Each process transcribes its own share; predictions travel as (id, text) pairs and
are merged by id, so padding a process's last batch can never count a clip twice.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from accelerate.utils import gather_object

from ..core.console import progress_bar
from ..core.processes import model_input_dtype
from ..data.build import EvalSet
from ..data.features import SkipReport
from ..data.loaders import is_empty_batch
from .metrics import error_rates, utterance_errors

PROMPT_TOKENS = 4  # <|startoftranscript|><|lang|><|task|><|notimestamps|>
MAX_DECODER_POSITIONS = 448


# On CPU the encoder is fastest when one activation (clips x positions x d_model floats) stays
# about this small: the benchmark measured 1.27x with sub-batches of 8 on the 30 s window (6 MB
# each), and a loss when the 4 s window's whole batch of 64 (6.5 MB) was cut into 8s.
CPU_ENCODER_ACTIVATION_BYTES = 6_815_744  # 6.5 MiB


@dataclass
class GenerationSettings:
    language: str
    task: str
    max_length: int  # tokens generated after the prompt (Whisper's generate(max_length=...))
    num_beams: int = 1
    encoder_batch_size: int | None = None  # None: the device's default; 0: the whole batch
    static_cache: bool = False
    compile: bool = True  # with static_cache, where transformers compiles (GPU)

    @classmethod
    def from_config(cls, language: str, task: str, max_length: int, num_beams: int, speed) -> "GenerationSettings":
        """``speed``: an ``EvalSpeedConfig``."""
        return cls(language, task, max_length, num_beams, speed.eval_encoder_batch_size,
                   speed.eval_static_cache, speed.eval_compile)

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs = {"language": self.language, "task": self.task, "num_beams": self.num_beams,
                  "max_length": min(self.max_length, MAX_DECODER_POSITIONS - PROMPT_TOKENS),
                  "use_cache": True}
        if self.static_cache:
            kwargs["cache_implementation"] = "static"
            kwargs["disable_compile"] = not self.compile
        return kwargs

    def encoder_chunk(self, model_config, device: torch.device, synced_gpus: bool) -> int:
        """Clips per encoder call; 0 for the whole batch. Under ZeRO-3 every process must make
        the same number of calls, and its last batch may be shorter: the whole batch then."""
        if synced_gpus:
            return 0
        if self.encoder_batch_size is not None:
            return self.encoder_batch_size
        if device.type != "cpu":
            return 0
        per_clip = model_config.max_source_positions * model_config.d_model * 4
        return max(1, CPU_ENCODER_ACTIVATION_BYTES // per_clip)


def generation_inputs(model, features: torch.Tensor, chunk: int) -> dict[str, Any]:
    """generate()'s inputs: the features, or the encoder's output computed ``chunk`` clips at a
    time (on CPU a small encoder batch is faster, while decoding gains from the whole batch;
    the tokens are the same)."""
    if not chunk or chunk >= len(features):
        return {"input_features": features}
    from transformers.modeling_outputs import BaseModelOutput

    encoder = model.get_encoder()
    hidden = torch.cat([encoder(features[start : start + chunk]).last_hidden_state
                        for start in range(0, len(features), chunk)])
    return {"encoder_outputs": BaseModelOutput(last_hidden_state=hidden)}


def transcribe(model, eval_set: EvalSet, tokenizer, settings: GenerationSettings, accelerator,
               synced_gpus: bool = False, show_progress: bool = True
               ) -> tuple[list[dict[str, str]], SkipReport]:
    """This process's predictions, [{"id", "reference", "prediction"}], not yet gathered, and
    the rows a stream skipped on the way (prepared sets report theirs when prepared)."""
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    results: list[dict[str, str]] = []
    stream_report = SkipReport(split=eval_set.split)
    bar = progress_bar(eval_set.clips_for_process, f"eval {eval_set.split}",
                       enabled=show_progress and accelerator.is_main_process, unit="clip")
    kwargs = settings.generate_kwargs()
    input_dtype = model_input_dtype(accelerator)
    chunk = settings.encoder_chunk(unwrapped.config, accelerator.device, synced_gpus)
    if synced_gpus:
        kwargs["synced_gpus"] = True
    try:
        for batch in eval_set.loader:
            if "skipped" in batch:
                stream_report.merge(batch["skipped"])
            if is_empty_batch(batch):
                continue
            features = batch["input_features"].to(accelerator.device, input_dtype, non_blocking=True)
            with torch.no_grad(), accelerator.autocast():
                tokens = unwrapped.generate(**generation_inputs(unwrapped, features, chunk), **kwargs)
            texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
            limited = reached_limit(tokens, unwrapped.generation_config.eos_token_id, kwargs["max_length"])
            for clip_id, reference, prediction, loop in zip(batch["ids"], batch["texts"], texts, limited):
                results.append({"id": clip_id, "reference": reference, "prediction": prediction.strip(),
                                "reached_limit": loop})
            bar.update(len(texts))
    finally:
        bar.close()
        unwrapped.train(was_training)
    return results, stream_report


def reached_limit(tokens: torch.Tensor, eos_token_id: int | list[int], max_length: int) -> list[bool]:
    """Per clip: generation stopped at the length limit instead of at an end token: ``max_length``
    tokens other than the end token (generate returns the tokens after the prompt; a finished
    row is padded with the end token, which is also Whisper's pad token). Fine-tuned Whisper's
    repetition loops end this way."""
    ends = torch.as_tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id], device=tokens.device)
    return ((~torch.isin(tokens, ends)).sum(dim=1) >= max_length).tolist()


def gather_predictions(results: list[dict[str, str]], accelerator) -> list[dict[str, str]]:
    """Every process's predictions, each clip exactly once, in a stable order (by id)."""
    everything = gather_object(results) if accelerator.num_processes > 1 else results
    unique: dict[str, dict[str, str]] = {}
    for row in everything:
        unique.setdefault(row["id"], row)
    return [unique[key] for key in sorted(unique)]


def score(predictions: list[dict[str, Any]], normalizer: Callable[[str], str]) -> dict[str, Any]:
    """Error rates, edit counts and ``loop_rate``: the % of clips that ran to the length limit."""
    references = [row["reference"] for row in predictions]
    hypotheses = [row["prediction"] for row in predictions]
    result = error_rates(references, hypotheses, normalizer)
    loops = sum(bool(row.get("reached_limit")) for row in predictions)
    result["loop_rate"] = 100.0 * loops / len(predictions) if predictions else None
    return result


def write_predictions(path: str, predictions: list[dict[str, str]], normalizer: Callable[[str], str]) -> None:
    """One JSON line per clip: raw and normalized reference/prediction and its word errors."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        for row in predictions:
            reference, prediction = normalizer(row["reference"]), normalizer(row["prediction"])
            errors, words = utterance_errors(reference, prediction)
            handle.write(json.dumps({
                "id": row["id"], "reference": row["reference"], "prediction": row["prediction"],
                "reference_normalized": reference, "prediction_normalized": prediction,
                "word_errors": errors, "reference_words": words,
                "reached_limit": bool(row.get("reached_limit"))}, ensure_ascii=False) + "\n")
    os.replace(path + ".tmp", path)


def evaluate(model, eval_set: EvalSet, tokenizer, settings: GenerationSettings, accelerator,
             normalizer: Callable[[str], str], predictions_path: str | None,
             synced_gpus: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Generate on every process, merge, score on the main process, share the result.

    Returns {"wer", "cer", "wer_raw", "samples", "empty_references", "seconds", ...}; the
    same dict on every process (so every process agrees on the best checkpoint).
    """
    start = time.perf_counter()
    local, stream_report = transcribe(model, eval_set, tokenizer, settings, accelerator,
                                      synced_gpus, show_progress)
    predictions = gather_predictions(local, accelerator)
    if eval_set.streaming:  # what the stream skipped this time, summed over processes
        reports = gather_object([stream_report]) if accelerator.num_processes > 1 else [stream_report]
        eval_set.report = SkipReport(split=eval_set.split)
        eval_set.report.add_left_out(eval_set.left_out)
        for report in reports:
            eval_set.report.merge(report)
    result: dict[str, Any] = {}
    if accelerator.is_main_process:
        result = score(predictions, normalizer)
        if predictions_path:
            write_predictions(predictions_path, predictions, normalizer)
    result = _broadcast(result, accelerator)
    result["seconds"] = time.perf_counter() - start
    result["samples_per_second"] = result["samples"] / max(result["seconds"], 1e-9)
    return result


def _broadcast(value: dict[str, Any], accelerator) -> dict[str, Any]:
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    holder = [value]
    broadcast_object_list(holder, from_process=0)
    return holder[0]
