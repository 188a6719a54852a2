"""The training loop, readable top to bottom.

One optimizer step = ``gradient_accumulation_steps`` micro-batches on every process. Its loss is
the sum of token cross-entropies divided by the number of label tokens in the *whole* step (all
micro-batches, all processes), so batch 4, batch 2 x accumulation 2 and 2 processes x batch 2
produce the same gradient even when transcripts differ in length (averaging per micro-batch,
then over micro-batches, would weight the tokens of short transcripts up).
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..core.console import format_duration, progress_bar
from ..core.errors import UserError
from ..core.processes import model_input_dtype, zero_stage
from ..data.build import EvalSet
from ..data.collator import IGNORE_INDEX
from ..data.features import SkipReport
from ..data.loaders import TrainBatches
from ..data.longform import LongFormSet
from ..evaluation.generation import GenerationSettings, evaluate
from ..evaluation.longform import evaluate_long_form
from ..outputs.logger import RunLogger
from .checkpoint import (
    TrainerState,
    complete_checkpoints,
    is_improvement,
    rotate_checkpoints,
    save_checkpoint,
    write_best_pointer,
)
from .config import TrainConfig
from .precision import loss_scale, step_unless_nonfinite
from .schedule import LRSchedule, set_learning_rate


@dataclass
class EvalTarget:
    """One set evaluated at every evaluation: its clips, how they are transcribed and scored."""

    name: str  # in its metric keys: eval_<name>_wer
    eval_set: EvalSet | LongFormSet
    generation: GenerationSettings
    normalizer: Callable[[str], str]


@dataclass
class Run:
    """What the loop works with, wired once by ``main`` (nothing here changes while training)."""

    config: TrainConfig
    accelerator: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    processor: Any
    train_batches: TrainBatches
    eval_targets: list[EvalTarget]  # the first picks the best checkpoint (eval_wer) by default
    generation: GenerationSettings  # how the run's language is decoded (the test split too)
    normalizer: Callable[[str], str]  # and scored
    logger: RunLogger
    manifest: dict[str, Any]
    frozen_fp32: dict[str, torch.Tensor] = field(default_factory=dict)  # see frozen_weights_fp32
    stop_requested: Callable[[], bool] = lambda: False
    hub: Any = None  # HubUpload on the main process with --push_to_hub
    ema: Any = None  # ema.WeightAverage with --ema_decay
    adapters: Any = None  # lora.Adapters with --use_lora

    @property
    def synced_gpus(self) -> bool:  # generation under ZeRO-3 must step all processes together
        return zero_stage(self.accelerator) == 3

    @property
    def input_dtype(self) -> torch.dtype:  # of the features (16-bit under DeepSpeed bf16/fp16)
        return model_input_dtype(self.accelerator)


@dataclass
class Progress:
    """What changes every step: the state a checkpoint keeps, and this process's own counters."""

    state: TrainerState
    start_step: int = 0  # where this process started (after a resume), for the ETA
    seconds_this_run: float = 0.0  # training time since start_step
    reported_skips: int = 0  # streaming: skipped rows already reported
    nonfinite_streak: int = 0  # consecutive steps whose update was skipped


def train(run: Run, progress: Progress) -> bool:
    """Train up to the schedule's last step; False when stopped early on request (SIGTERM)."""
    cfg, accelerator, state = run.config, run.accelerator, progress.state
    max_steps = run.schedule.total_steps
    accumulation = cfg.training.gradient_accumulation_steps
    if cfg.eval.eval_at_start and state.step == 0 and run.eval_targets:
        run_evaluations(run, progress)

    window = LogWindow(accelerator.device)
    bar = progress_bar(max_steps, "train", enabled=accelerator.is_main_process, initial=state.step, unit="step")
    last_eval_seconds = 0.0
    eval_due = save_due = False
    while state.step < max_steps:
        micro_batches = [next(run.train_batches) for _ in range(accumulation)]
        learning_rate = run.schedule(state.step + 1)  # a pure function of the step
        set_learning_rate(run.optimizer, learning_rate)
        loss_sum, tokens, audio_seconds, grad_norm, skipped = optimizer_step(run, micro_batches)
        if run.ema is not None and not skipped:
            run.ema.update(accelerator.unwrap_model(run.model))

        state.step += 1
        state.skipped_steps += skipped
        progress.nonfinite_streak = progress.nonfinite_streak + 1 if skipped else 0
        diverged = progress.nonfinite_streak >= cfg.training.max_nonfinite_steps
        state.epoch, state.batches_in_epoch = run.train_batches.epoch, run.train_batches.batches_done
        samples = sum(len(batch["ids"]) for batch in micro_batches) * accelerator.num_processes
        state.samples_seen += samples
        window.add(loss_sum, tokens, samples, audio_seconds)
        if cfg.training.log_sample_ids:
            log_sample_ids(run, progress, micro_batches)
        bar.update(1)

        if state.step % cfg.training.logging_steps == 0 or state.step == max_steps or diverged:
            seconds = window.seconds()
            state.train_seconds += seconds
            progress.seconds_this_run += seconds
            log_training(run, progress, window, learning_rate, grad_norm, max_steps, last_eval_seconds)
            window = LogWindow(accelerator.device)
        if diverged:
            raise_diverged(run, progress, learning_rate)

        # Evaluations and checkpoints that fall due while updates are being skipped wait for the
        # next applied update: the weights that produced a NaN gradient are never "best" or
        # "latest".
        eval_due = eval_due or (_due(state.step, cfg.eval.eval_steps, max_steps) and bool(run.eval_targets))
        save_due = save_due or _due(state.step, cfg.checkpoint.save_steps, max_steps)
        healthy = progress.nonfinite_streak == 0
        new_best = False
        if eval_due and healthy:
            window.pause()
            result = run_evaluations(run, progress)
            last_eval_seconds = result["eval_seconds_all"]
            new_best = track_best(run, progress, result)
            eval_due = False
            window.resume()
        stopping = run.stop_requested()
        if (save_due or new_best or stopping) and healthy:
            window.pause()
            state.audio_seconds_seen += window.take_unsaved_audio()  # the checkpoint holds every trained second
            save(run, progress)
            save_due = False
            window.resume()
        if stopping:
            bar.close()
            return False
    bar.close()
    return True


def raise_diverged(run: Run, progress: Progress, learning_rate: float) -> None:
    """Stop after --max_nonfinite_steps skipped updates in a row: the run is not recovering."""

    state, streak = progress.state, progress.nonfinite_streak
    found = complete_checkpoints(run.config.training.output_dir)
    latest = (f"the newest checkpoint, {os.path.basename(found[-1][1])}, is from before (nothing was "
              "saved since)") if found else "no checkpoint was saved"
    raise UserError(
        f"stopped at step {state.step}: the last {streak} steps had NaN or infinite gradients (their "
        f"updates were skipped; the last applied update was at step {state.step - streak}); {latest}. "
        f"Lower --learning_rate (it was {learning_rate:.3g} at that step) or --max_grad_norm, then "
        + ("resume with --resume_from latest" if found else "start again with --overwrite_output_dir")
        + " (--max_nonfinite_steps sets how many such steps are tolerated)")


def log_sample_ids(run: Run, progress: Progress, micro_batches: list[dict[str, Any]]) -> None:
    ids = [clip for batch in micro_batches for clip in batch["ids"]]
    if run.accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        ids = gather_object(ids)
    run.logger.samples(progress.state.step, ids)


def optimizer_step(run: Run, micro_batches: list[dict[str, Any]]):
    """Forward and backward every micro-batch, then clip and step."""
    accelerator, model = run.accelerator, run.model
    model.train()
    local_tokens = sum(int((batch["labels"] != IGNORE_INDEX).sum()) for batch in micro_batches)
    local_audio = sum(batch.get("audio_seconds", 0.0) for batch in micro_batches)
    # One collective for both: the step's label tokens (exact in float64) and seconds of audio.
    counts = accelerator.reduce(torch.tensor([local_tokens, local_audio], dtype=torch.float64,
                                             device=accelerator.device), reduction="sum")
    step_tokens, step_audio = counts[0].long(), counts[1]
    # accelerator.backward divides by the accumulation steps and DDP averages over processes;
    # undo both, so the gradient is exactly d(sum of token losses)/d(weights) / step_tokens.
    scale = accelerator.num_processes * accelerator.gradient_accumulation_steps / step_tokens.float()
    loss_sum = torch.zeros((), device=accelerator.device)
    for batch in micro_batches:
        with accelerator.accumulate(model):
            batch_loss = token_loss_sum(model, batch, accelerator.device, run.input_dtype)
            accelerator.backward(batch_loss * scale)
        loss_sum += batch_loss.detach()
    max_norm = run.config.training.max_grad_norm or math.inf  # 0: report the norm, do not clip
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
    # A NaN/inf gradient (an fp16 overflow, or a diverging run) skips the update. The step still
    # counts: its batch was consumed and the schedule moves on (docs/scaling.md).
    skipped = step_unless_nonfinite(accelerator, run.optimizer, grad_norm)
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum, step_tokens, step_audio, grad_norm, skipped


def token_loss_sum(model, batch: dict[str, Any], device: torch.device,
                   input_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Summed cross-entropy over the label tokens of one micro-batch."""
    labels = batch["labels"].to(device, non_blocking=True)
    logits = model(
        input_features=batch["input_features"].to(device, input_dtype, non_blocking=True),
        decoder_input_ids=batch["decoder_input_ids"].to(device, non_blocking=True),
        use_cache=False,
    ).logits
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


# --------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------


class LogWindow:
    """Sums between two log lines, kept on the device: no host sync until the line is printed."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.tokens = torch.zeros((), device=device, dtype=torch.long)
        self.audio_seconds = torch.zeros((), device=device, dtype=torch.float64)  # over all processes
        self.unsaved_audio = torch.zeros((), device=device, dtype=torch.float64)  # not yet in the state
        self.samples = 0
        self.steps = 0
        self.started = time.perf_counter()
        self.paused_seconds = 0.0
        self._paused_at: float | None = None

    def add(self, loss_sum: torch.Tensor, tokens: torch.Tensor, samples: int, audio_seconds: torch.Tensor) -> None:
        self.loss_sum += loss_sum
        self.tokens += tokens
        self.audio_seconds += audio_seconds
        self.unsaved_audio += audio_seconds
        self.samples += samples
        self.steps += 1

    def take_unsaved_audio(self) -> float:
        """Seconds of audio trained since the last call, for ``TrainerState.audio_seconds_seen``."""
        seconds = float(self.unsaved_audio)
        self.unsaved_audio.zero_()
        return seconds

    def pause(self) -> None:  # evaluation and saving do not count as training time
        self._paused_at = time.perf_counter()

    def resume(self) -> None:
        if self._paused_at is not None:
            self.paused_seconds += time.perf_counter() - self._paused_at
            self._paused_at = None

    def seconds(self) -> float:
        return time.perf_counter() - self.started - self.paused_seconds


def log_training(run: Run, progress: Progress, window: LogWindow, learning_rate: float, grad_norm: torch.Tensor,
                 max_steps: int, last_eval_seconds: float) -> None:
    accelerator, state, cfg = run.accelerator, progress.state, run.config
    loss_sum = accelerator.reduce(window.loss_sum.clone(), reduction="sum")
    loss = (loss_sum / window.tokens.clamp(min=1)).item()  # window.tokens is already global
    seconds = max(window.seconds(), 1e-9)
    samples_per_second = window.samples / seconds
    audio_seconds = float(window.audio_seconds)
    state.audio_seconds_seen += window.take_unsaved_audio()
    seconds_per_step = progress.seconds_this_run / max(1, state.step - progress.start_step)
    remaining_evals = _remaining(state.step, cfg.eval.eval_steps, max_steps) if run.eval_targets else 0
    eta = (max_steps - state.step) * seconds_per_step + remaining_evals * last_eval_seconds
    record = {
        "epoch": round(epoch_progress(run, progress), 4),
        "loss": round(loss, 6),
        "learning_rate": learning_rate,
        "grad_norm": round(float(grad_norm), 6) if grad_norm is not None else None,
        "samples_per_second": round(samples_per_second, 3),
        # Seconds of clip audio trained since the previous row (one step at --logging_steps 1);
        # padding, packing gaps and windows without speech are not counted.
        "audio_seconds": round(audio_seconds, 2),
        "audio_seconds_per_second": round(audio_seconds / seconds, 2),
        "elapsed_seconds": round(state.train_seconds, 1),
        "eta_seconds": round(eta, 1),
    }
    mix_clips = run.train_batches.mix_clips()
    if mix_clips is not None:
        record["mix_clips"] = mix_clips  # source -> clips drawn so far (--mix_data_dir)
    scale = loss_scale(accelerator, run.optimizer)
    record["skipped_steps"] = state.skipped_steps
    if scale is not None:
        record["loss_scale"] = scale
    if torch.cuda.is_available():
        record["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    run.logger.metrics(record, state.step)
    state.log_history.append({"step": state.step, **record})
    line = (f"step {state.step}/{max_steps} | epoch {record['epoch']:.2f} | loss {loss:.4f} | "
            f"lr {learning_rate:.3e} | grad_norm {_num(record['grad_norm'])} | "
            f"{samples_per_second:.1f} samples/s | {audio_seconds / seconds:.1f} s audio/s | elapsed {format_duration(state.train_seconds)} | "
            f"eta {format_duration(eta)}")
    if scale is not None or state.skipped_steps:
        line += f" | skipped steps {state.skipped_steps}"
    if scale is not None:
        line += f" | loss scale {scale:g}"
    if "peak_memory_gb" in record:
        line += f" | peak_mem {record['peak_memory_gb']:.1f} GB"
    run.logger.info(line)
    report_stream_skips(run, progress)


def report_stream_skips(run: Run, progress: Progress) -> None:
    """A stream reveals bad rows as it reads them: print the running count when it grows."""
    batches = run.train_batches
    if batches.stream is None:
        return
    report = batches.report
    if run.accelerator.num_processes > 1:  # every process reads its own part of the stream
        from accelerate.utils import gather_object

        report = SkipReport(split=batches.report.split)
        for part in gather_object([batches.report]):
            report.merge(part)
    skipped = sum(report.skipped.values())
    if skipped != progress.reported_skips:
        progress.reported_skips = skipped
        run.logger.info(f"  streamed so far: {report.summary()}")


def epoch_progress(run: Run, progress: Progress) -> float:
    state, batches = progress.state, run.train_batches
    if batches.batches_per_epoch:
        return state.epoch + state.batches_in_epoch / batches.batches_per_epoch
    if batches.num_clips:
        return state.samples_seen / batches.num_clips
    return float(state.epoch)


# --------------------------------------------------------------------------------------------
# Evaluation, best model, checkpoints
# --------------------------------------------------------------------------------------------


LONG_FORM_MAX_NEW_TOKENS = 224  # per 30 s window, as OpenAI's long-form decoding (448 // 2)

# What an evaluation logs of ``evaluation.evaluate``'s result, as {prefix}_{key}.
LOGGED = ("wer", "cer", "wer_raw", "loop_rate", "substitutions", "deletions", "insertions", "words",
          "samples", "empty_references", "seconds", "samples_per_second", "timestamp_error_s", "audio_seconds")


def run_evaluations(run: Run, progress: Progress) -> dict[str, Any]:
    """Evaluate every set now. Returns the first set's ``eval_wer`` etc., every set's
    ``eval_<set>_wer`` etc. when there are several, and ``eval_seconds_all``."""
    merged: dict[str, Any] = {"eval_seconds_all": 0.0}
    several = len(run.eval_targets) > 1
    averaged = run.ema is not None and run.config.training.eval_with_ema
    with run.ema.applied(run.accelerator.unwrap_model(run.model)) if averaged else nullcontext():
        for index, target in enumerate(run.eval_targets):
            long_form = isinstance(target.eval_set, LongFormSet)  # always named: eval_longform_*
            result = run_evaluation(run, progress, target, prefix="eval",
                                    name=target.name if several or long_form else None,
                                    primary=index == 0 and not long_form)
            merged.update(result)
            merged["eval_seconds_all"] += result["seconds"]
    return merged


def run_evaluation(run: Run, progress: Progress, target: EvalTarget, prefix: str, name: str | None = None,
                   primary: bool = True) -> dict[str, Any]:
    """Evaluate ``target`` now; log, record and return ``{prefix}_wer`` etc. (for the first set)
    and ``{prefix}_{name}_wer`` etc. (for a named set, when there are several)."""
    state, cfg, eval_set = progress.state, run.config, target.eval_set
    if prefix == "eval" and primary:
        file_name = f"step-{state.step}.jsonl"
    else:
        file_name = f"{name or prefix}-step-{state.step}.jsonl"
    predictions_path = os.path.join(cfg.training.output_dir, "eval", file_name)
    long_form = isinstance(eval_set, LongFormSet)
    if long_form:
        generation = target.generation
        result = evaluate_long_form(run.model, run.processor, eval_set, language=generation.language,
                                    task=generation.task, num_beams=generation.num_beams,
                                    max_new_tokens=min(generation.max_length, LONG_FORM_MAX_NEW_TOKENS),
                                    accelerator=run.accelerator, input_dtype=run.input_dtype,
                                    normalizer=target.normalizer, predictions_path=predictions_path)
    else:
        result = evaluate(run.model, eval_set, run.processor.tokenizer, target.generation, run.accelerator,
                          target.normalizer, predictions_path, synced_gpus=run.synced_gpus)
    values = {key: value for key, value in result.items() if key in LOGGED}
    record = {f"{prefix}_{key}": value for key, value in values.items()} if primary else {}
    if name:
        record.update({f"{prefix}_{name}_{key}": value for key, value in values.items()})
    run.logger.metrics(record, state.step)
    # The WER table and the model card read one generic record per set and step.
    state.evaluations.append({"step": state.step, "split": name or eval_set.split, "primary": primary,
                              **{f"{prefix}_{key}": value for key, value in values.items()}})
    state.log_history.append({"step": state.step, **record})
    loops = result.get("loop_rate")
    loop_words = (f"repetition loops {_pct(loops)} | timestamp error {_num(result.get('timestamp_error_s'))} s"
                  if long_form else f"ran to the length limit {_pct(loops)}")
    unit = "recordings" if long_form else "clips"
    run.logger.info(
        f"{prefix} {name or eval_set.split} at step {state.step}: WER {_pct(result.get('wer'))} | "
        f"CER {_pct(result.get('cer'))} | raw WER {_pct(result.get('wer_raw'))} | "
        f"{loop_words} | sub/del/ins {result.get('substitutions', 0)}/"
        f"{result.get('deletions', 0)}/{result.get('insertions', 0)} | "
        f"{result['samples']} {unit} in {format_duration(result['seconds'])} "
        f"({result['samples_per_second']:.1f} {unit}/s)")
    if eval_set.report is not None and eval_set.report.skipped:
        run.logger.info(f"  {eval_set.report.summary()}")
    return {**result, **record}


def track_best(run: Run, progress: Progress, result: dict[str, Any]) -> bool:
    state, ck = progress.state, run.config.checkpoint
    value = result.get(ck.metric_for_best_model)
    if value is None:
        return False
    if not is_improvement(value, state.best_metric):
        return False
    state.best_metric, state.best_step = value, state.step
    state.best_checkpoint = f"checkpoint-{state.step}"
    run.logger.info(f"new best {ck.metric_for_best_model} {value:.3f} at step {state.step}")
    return True


def save(run: Run, progress: Progress) -> str:
    cfg, state, accelerator = run.config, progress.state, run.accelerator
    state.skipped = dict(run.train_batches.report.skipped) if run.train_batches.stream else {}
    started = time.perf_counter()
    path = save_checkpoint(accelerator, cfg.training.output_dir, state, run.model, run.processor,
                           cfg.to_flat_dict(), run.manifest, run.train_batches.state_dict(),
                           run.frozen_fp32, run.ema)
    if accelerator.is_main_process:
        protected = {state.best_checkpoint} if state.best_checkpoint else set()
        deleted = rotate_checkpoints(cfg.training.output_dir, cfg.checkpoint.save_total_limit, protected)
        if state.best_checkpoint:
            write_best_pointer(cfg.training.output_dir, state, cfg.checkpoint.metric_for_best_model)
        note = f" (removed {', '.join(os.path.basename(p) for p in deleted)})" if deleted else ""
        run.logger.info(f"saved {os.path.basename(path)} in {time.perf_counter() - started:.1f} s{note}")
        if run.hub is not None and cfg.hub.hub_push_checkpoints:
            run.hub.push_checkpoint(path)  # in the background
    accelerator.wait_for_everyone()
    return path


def _due(step: int, every: int, max_steps: int) -> bool:
    return step == max_steps or (every > 0 and step % every == 0)


def _remaining(step: int, every: int, max_steps: int) -> int:
    later = (max_steps // every - step // every) if every > 0 else 0
    return later + (0 if every > 0 and max_steps % every == 0 else 1)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}%"
