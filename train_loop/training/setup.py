"""Setting a training run up, in the order ``main.run`` calls the steps: the session (processes,
the output folder, the log), the model, the data, the optimizer and schedule, and the state,
fresh or resumed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed

from ..core.errors import UserError
from ..core.model import load_model, load_processor
from ..core.processes import (
    accelerator_kwargs,
    deepspeed_requested,
    on_main_process,
    reset_accelerator_settings,
    uses_deepspeed,
    zero_stage,
)
from ..core.text import get_normalizer
from ..data.augment import augmenter_for
from ..data.build import EvalSet, build_eval_set, build_train_batches
from ..data.config import SourceConfig
from ..data.loaders import TrainBatches, close_loader, steps_for_epochs
from ..data.longform import LongFormSet, build_long_recordings, read_long_recordings
from ..data.mixing import items_of
from ..data.overlap import HeldOut
from ..data.prepared import cache_root
from ..data.sources import has_split, load_rows, split_names
from ..evaluation.config import eval_split_sets, metric_name
from ..evaluation.generation import GenerationSettings
from ..outputs.hub import HubUpload
from ..outputs.logger import RunLogger
from ..outputs.trackers import TRACKERS
from .checkpoint import STATE_FILE, TrainerState, incomplete_checkpoints, resolve_resume
from .config import TrainConfig
from .distributed import check_shared_output_dir, fill_deepspeed_config, load_whole_model, optimizer_offloaded
from .ema import WeightAverage
from .loop import EvalTarget
from .lora import Adapters, apply_lora, keep_only_adapters_in_checkpoints, parameter_summary
from .optim import build_optimizer
from .precision import check_precision_supported, frozen_weights_fp32
from .preemption import StopOnSignal
from .resume import check_saved_flags, describe, resume, run_layout
from .rundir import claim_output_dir
from .schedule import LRSchedule

# --------------------------------------------------------------------------------------------
# 1. The session: processes, the output folder, trackers, signals, the log
# --------------------------------------------------------------------------------------------


@dataclass
class Session:
    """The processes and the output folder of one run, and what reports on it."""

    accelerator: Accelerator
    logger: RunLogger
    stop_signal: StopOnSignal
    hub: HubUpload | None  # on the main process with --push_to_hub
    resume_path: str | None  # the checkpoint to continue from (--resume_from, resolved)


@contextmanager
def session(config: TrainConfig) -> Iterator[Session]:
    """Build the accelerator, claim the output folder (locked for this run), open the trackers
    and the log; on leaving, give back the signal handlers, the lock and the kernel settings."""
    deterministic_before = use_deterministic_kernels(config.training.deterministic)
    stop_signal = lock = None
    try:
        accelerator = build_accelerator(config)
        # The precision the run uses (the flag, or else the accelerate config): what checkpoints,
        # the model card and the log record, instead of "None".
        config.training.mixed_precision = accelerator.mixed_precision
        stop_signal = StopOnSignal(accelerator)
        check_launch(config, accelerator)
        lock = on_main_process(accelerator, lambda: claim_output_dir(
            config.training.output_dir, resuming=bool(config.checkpoint.resume_from),
            overwrite=config.training.overwrite_output_dir))
        start_trackers(accelerator, config)  # after the claim: --overwrite_output_dir empties the folder
        hub = on_main_process(accelerator, lambda: connect_hub(config))
        yield open_log(config, accelerator, lock, stop_signal, hub)
    finally:
        if stop_signal is not None:
            stop_signal.restore()
        if lock is not None:
            lock.release()
        use_deterministic_kernels(deterministic_before)


def build_accelerator(config: TrainConfig) -> Accelerator:
    if deepspeed_requested() and importlib.util.find_spec("deepspeed") is None:
        raise UserError("this launch asks for DeepSpeed (the accelerate config's distributed_type), which is "
                        "not installed: pip install '.[deepspeed]' (or pip install deepspeed)")
    output_dir = config.training.output_dir
    accumulation = GradientAccumulationPlugin(
        num_steps=config.training.gradient_accumulation_steps,
        sync_with_dataloader=False)  # an optimizer step may span an epoch boundary
    trackers = [TRACKERS[name][0] for name in config.training.report_to if TRACKERS[name]]
    reset_accelerator_settings()
    return Accelerator(
        mixed_precision=config.training.mixed_precision,
        gradient_accumulation_plugin=accumulation,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=output_dir,
                                            logging_dir=os.path.join(output_dir, "tensorboard")),
        **accelerator_kwargs(config.training.ddp_timeout),  # without a GPU: one gloo group
    )


def check_launch(config: TrainConfig, accelerator: Accelerator) -> None:
    """The rules that depend on how the run was launched (the flags alone were checked at parse
    time): the precision on this hardware, and what ZeRO-3's sharded weights rule out."""
    check_precision_supported(accelerator)
    if zero_stage(accelerator) == 3:
        if config.lora.use_lora:
            raise UserError("--use_lora under DeepSpeed ZeRO-3 is not supported: LoRA already keeps the "
                            "optimizer state small; use DDP or launch/accelerate/deepspeed_zero2.yaml")
        if config.training.ema_decay is not None:
            raise UserError("--ema_decay under DeepSpeed ZeRO-3 is not supported (each process holds only "
                            "a shard of the weights); use ZeRO-2 or DDP, or average checkpoints with "
                            "python -m train_loop.average")
        if config.eval.eval_long_form:
            raise UserError("--eval_long_form under DeepSpeed ZeRO-3 is not supported: sequential long-form decoding "
                            "runs a different number of windows on each process, and ZeRO-3's sharded generate "
                            "would wait forever; use ZeRO-2 or DDP, or transcribe the saved model with "
                            "python -m train_loop.transcribe")


def use_deterministic_kernels(enabled: bool) -> bool:
    """Switch torch's deterministic kernels on or off; returns the previous setting (main() may
    run several times in one process)."""
    before = torch.are_deterministic_algorithms_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs for it
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    return before


def start_trackers(accelerator: Accelerator, config: TrainConfig) -> None:
    """Open the trackers' logs (TensorBoard creates output_dir/tensorboard)."""
    if not any(TRACKERS[name] for name in config.training.report_to):
        return
    output_dir = config.training.output_dir
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.to_flat_dict().items()}
    run_name = os.path.basename(os.path.normpath(output_dir))
    accelerator.init_trackers("run", config=hparams, init_kwargs={
        "wandb": {"name": run_name, "dir": output_dir}, "mlflow": {"run_name": run_name}})


def connect_hub(config: TrainConfig) -> HubUpload | None:
    """With --push_to_hub: check the token, the connection and the repository now (main process)."""
    if not config.hub.push_to_hub:
        return None
    hub = HubUpload(config.hub.hub_model_id, private=config.hub.hub_private)
    user = hub.check()
    print(f"--push_to_hub: logged in as {user}; the final model goes to {config.hub.hub_model_id} at the end",
          flush=True)
    return hub


def open_log(config: TrainConfig, accelerator: Accelerator, lock, stop_signal: StopOnSignal, hub) -> Session:
    """The run's log, opened where an interrupted run left it, with what was found on the way in."""
    output_dir = config.training.output_dir
    check_shared_output_dir(accelerator, output_dir)
    set_seed(config.training.seed)
    resume_path, resume_notes = None, []
    if config.checkpoint.resume_from:  # the main process reads the checkpoint's files once for everyone
        resume_path, resume_notes = on_main_process(
            accelerator, lambda: resolve_resume(output_dir, config.checkpoint.resume_from), share_result=True)
    resume_step = TrainerState.from_file(os.path.join(resume_path, STATE_FILE)).step if resume_path else None
    logger = RunLogger(output_dir, accelerator.is_main_process, accelerator, resume_step)
    logger.info(f"whisper train_loop | {accelerator.num_processes} process(es) on "
                f"{accelerator.device.type} | mixed precision {accelerator.mixed_precision} | "
                f"output {output_dir}")
    if lock is not None and lock.taken_over:
        logger.info(f"took over {output_dir}/.run.lock from a run that is no longer running "
                    f"(pid {lock.taken_over.get('pid')} on {lock.taken_over.get('host')}, started "
                    f"{lock.taken_over.get('started')})")
    for note in resume_notes:
        logger.info(note)
    remove_interrupted_saves(accelerator, logger, output_dir)
    if logger.dropped_lines:
        logger.info(f"metrics.jsonl: removed {logger.dropped_lines} lines logged after step "
                    f"{resume_step} by the interrupted run (those steps run again)")
    return Session(accelerator, logger, stop_signal, hub, resume_path)


def remove_interrupted_saves(accelerator: Accelerator, logger: RunLogger, output_dir: str) -> None:
    """A kill during a save leaves checkpoint-N.partial: never resumed from; removed here."""
    if accelerator.is_main_process:
        for path in incomplete_checkpoints(output_dir):
            logger.info(f"removing {os.path.basename(path)}: a save that was interrupted "
                        "(the newest complete checkpoint is used instead)")
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()


# --------------------------------------------------------------------------------------------
# 2. Model and processor
# --------------------------------------------------------------------------------------------


def model_and_processor(config: TrainConfig, session: Session) -> tuple[torch.nn.Module, Any, Adapters | None]:
    """Whisper with the flags' training settings, its processor, and the LoRA adapters (or None)."""
    model_config, logger = config.model, session.logger
    processor = load_processor(model_config.model_name_or_path, model_config.token_language(), model_config.task)
    if model_config.language_token_from:
        logger.info(f"language {model_config.language}: decoded with Whisper's "
                    f"<|{model_config.language_token_from}|> token (--language_token_from)")
    with load_whole_model(session.accelerator):
        model = load_model(model_config, processor)
    adapters = None
    if config.lora.use_lora:
        model, adapters = apply_lora(model, config.lora, freeze_encoder=model_config.freeze_encoder)
    logger.info(f"model {model_config.model_name_or_path}: {parameter_summary(model)}"
                + (f" (LoRA r {config.lora.lora_r} on {config.lora.lora_target_modules})" if adapters else ""))
    return model, processor, adapters


# --------------------------------------------------------------------------------------------
# 3. Data
# --------------------------------------------------------------------------------------------


def training_data(config: TrainConfig, processor, session: Session) -> TrainBatches:
    batches = build_train_batches(
        config.source, config.data, config.filters, processor, session.accelerator,
        batch_size=config.training.per_device_train_batch_size, seed=config.training.seed,
        eval_normalizer=config.scoring.eval_normalizer, packing=config.packing, held_out=held_out(config),
        mix=config.mix.sources(config.source), augment=augmenter_for(config.augment, config.training.seed))
    for exclusion in [batches.exclusion] + [part.exclusion for part in batches.mix_parts]:
        if exclusion is not None and exclusion.counts:
            session.logger.info(exclusion.summary())
    for part in batches.mix_parts:
        session.logger.info(part.report.summary())
    if batches.mix_parts:
        session.logger.info(describe_mix(batches, config))
    if config.packing.pack_to_window:
        session.logger.info(describe_packing(batches, config))
    session.logger.info(batches.report.summary() if not config.source.streaming else
                        f"{config.data.train_split_name}: streaming (skipped clips are reported as they are read)")
    return batches


def held_out_splits(config: TrainConfig) -> list[tuple[SourceConfig, str, str]]:
    """Every (source, split, the flag naming its folder) the run evaluates or tests on: training must
    not share their speakers, sentences or files (data/overlap.py)."""
    main = config.source.kind()
    parts = [(config.source, name, main) for split in eval_split_sets(config.data.eval_split_name)
             for name in split_names(split)]
    test = config.data.test_split_name
    if test.lower() != "none" and has_split(config.source, test):
        parts += [(config.source, name, main) for name in split_names(test)]
    if config.eval.guard_data_dir:
        guard = SourceConfig(data_dir=config.eval.guard_data_dir, speaker_column_name=config.source.speaker_column_name)
        parts += [(guard, name, "guard_data_dir") for name in split_names(config.eval.guard_split_name)]
    # A run that evaluates on its own training split (a smoke test) is not a leak to prevent.
    return [part for part in parts if part[1] != config.data.train_split_name or part[0] is not config.source]


def held_out(config: TrainConfig) -> HeldOut:
    found = HeldOut(get_normalizer(config.scoring.eval_normalizer))
    for source, split, flag_name in held_out_splits(config):
        try:
            found.add(load_rows(source, split))
        except UserError as err:  # name the flag that gave the folder
            raise UserError(str(err).replace(f"--{source.kind()}", f"--{flag_name}")) from None
    return found


def describe_mix(batches: TrainBatches, config: TrainConfig) -> str:
    """The mixing plan: what each source gives per epoch, its share and its language."""
    sampler = batches.sampler
    unit = "windows" if config.packing.pack_to_window else "clips"
    total = sum(sampler.counts)
    lines = [f"mixing {len(sampler.counts)} sources, {total:,} {unit} per epoch (seed {config.training.seed}):"]
    languages = [config.model.language] + [m.language for m in config.mix.sources(config.source)]
    for number, (name, count, language) in enumerate(zip(sampler.names, sampler.counts, languages)):
        own = len(items_of(sampler.samplers[number], 0))
        lines.append(f"  {name} ({language}): {count:,} {unit} per epoch, {100 * count / total:.1f}% of the examples"
                     + ("" if number == 0 else f", from {own:,} of its own ({count / max(1, own):.2f} of them per epoch)"))
    return "\n".join(lines)


def describe_packing(batches: TrainBatches, config: TrainConfig) -> str:
    """One line: what epoch 0's packed windows hold, so a user sees what packing did."""
    packed = getattr(batches.sampler, "main", batches.sampler)  # with --mix_data_dir: the main source's
    windows = packed.windows(0)
    speech = [w for w in windows if not w.no_speech]
    clips = sum(len(w.pieces) for w in speech)
    audio = sum(p.cut_end - p.cut_start for w in speech for p in w.pieces)
    window = packed.plan.window_seconds
    return (f"packing: {clips:,} clips into {len(speech):,} windows of {window:g} s ({clips / max(1, len(speech)):.1f} "
            f"clips and {audio / max(1, len(speech)):.1f} s of speech per window, {100 * audio / max(1e-9, window * len(speech)):.0f}% "
            f"of the window) + {len(windows) - len(speech)} without speech; timestamps in "
            f"{sum(w.timestamps for w in speech):,}, previous text in {sum(bool(w.prompt_clips) for w in speech):,}")


def generation_settings(config: TrainConfig) -> GenerationSettings:
    """How the run's own language is decoded in every evaluation (and the test split)."""
    return GenerationSettings.from_config(config.model.token_language(), config.model.task,
                                          config.decoding.generation_max_length, config.decoding.num_beams,
                                          config.speed)


def scoring_normalizer(config: TrainConfig):
    """How the run's own transcripts are normalized before scoring (--eval_normalizer)."""
    return get_normalizer(config.scoring.eval_normalizer)


def evaluation_sets(config: TrainConfig, processor, session: Session) -> list[EvalTarget]:
    """The sets evaluated during training: each of --eval_split_name's (comma-separated), then
    the forgetting guard (--guard_data_dir), transcribed in its own language."""
    targets = []
    generation = generation_settings(config)
    for split in eval_split_sets(config.data.eval_split_name):
        eval_set = eval_set_for(config, processor, session.accelerator, session.logger, split,
                                config.data.max_eval_samples)
        targets.append(EvalTarget(metric_name(split), eval_set, generation, scoring_normalizer(config)))
    ev = config.eval
    if ev.guard_data_dir:
        language = ev.guard_language.strip("<|>")
        if processor.tokenizer.convert_tokens_to_ids(f"<|{language}|>") == processor.tokenizer.unk_token_id:
            raise UserError(f"--guard_language {ev.guard_language}: not a language Whisper knows "
                            "(use its code, e.g. en, ru, pl)")
        source = SourceConfig(data_dir=ev.guard_data_dir, cache_dir=config.source.cache_dir,
                              preprocessing_num_workers=config.source.preprocessing_num_workers)
        source.kind()
        try:
            guard = build_eval_set(source, config.data, processor, session.accelerator, ev.guard_split_name,
                                   batch_size=config.speed.per_device_eval_batch_size,
                                   max_samples=ev.guard_max_samples, eval_normalizer=ev.guard_normalizer,
                                   streaming=False)
        except UserError as err:  # the guard's folder came from --guard_data_dir, not --data_dir
            raise UserError(str(err).replace("--data_dir", "--guard_data_dir")) from None
        if guard.report is not None:
            session.logger.info(f"forgetting guard ({language}, {ev.guard_data_dir}): {guard.report.summary()}")
        targets.append(EvalTarget("guard", guard, dataclasses.replace(generation, language=language),
                                  get_normalizer(ev.guard_normalizer)))
    if ev.eval_long_form:
        long_form = long_form_set(config, session)
        session.logger.info(f"long-form evaluation: {long_form.source}, {long_form.seconds / 60:.1f} minutes"
                            + (f"; {long_form.report.summary()}" if long_form.report and long_form.report.skipped else ""))
        targets.append(EvalTarget("longform", long_form, generation, scoring_normalizer(config)))
    return targets


def long_form_set(config: TrainConfig, session: Session) -> LongFormSet:
    """--eval_long_form's recordings: built from the first evaluation split, or read from
    --long_form_data_dir."""
    ev = config.eval
    if ev.long_form_data_dir:
        return read_long_recordings(ev.long_form_data_dir, config.source.text_column_name, ev.long_form_recordings)
    split = eval_split_sets(config.data.eval_split_name)[0]
    rows = load_rows(config.source, split)
    return build_long_recordings(rows, ev.long_form_minutes, ev.long_form_recordings, config.packing.speech_bounds,
                                 seed=config.training.seed)


def eval_set_for(config: TrainConfig, processor, accelerator: Accelerator, logger: RunLogger, split: str,
                 max_samples: int | None) -> EvalSet:
    """One evaluation split, its skipped clips reported. Under ZeRO-3 it reads prepared data even
    with --streaming: every process must call generate the same number of times, which only a
    split of known size can promise (a stream may give one process a batch more than another,
    and then generation hangs)."""
    eval_set = build_eval_set(config.source, config.data, processor, accelerator, split,
                              batch_size=config.speed.per_device_eval_batch_size, max_samples=max_samples,
                              eval_normalizer=config.scoring.eval_normalizer,
                              streaming=config.source.streaming and zero_stage(accelerator) != 3)
    if eval_set.report is not None:
        logger.info(eval_set.report.summary())
    return eval_set


def test_split(config: TrainConfig, logger: RunLogger) -> str | None:
    """The split evaluated at the end (--test_split_name), None when there is none to evaluate."""
    split = config.data.test_split_name
    if split.lower() == "none":
        return None
    if not has_split(config.source, split):
        logger.info(f"no '{split}' split in the data: final test evaluation skipped "
                    "(--test_split_name none silences this)")
        return None
    return split


def prepare_only(config: TrainConfig, processor, session: Session, train_batches: TrainBatches,
                 eval_targets: list[EvalTarget]) -> int:
    """--prepare_only: the training and evaluation sets are prepared by now; prepare the test
    split too, and stop before any model work."""
    split = test_split(config, session.logger)
    if split is not None:
        close_loader(eval_set_for(config, processor, session.accelerator, session.logger, split,
                                  max_samples=None).loader)
    train_batches.close()
    for target in eval_targets:
        close_loader(getattr(target.eval_set, "loader", None))  # long-form sets have none
    session.logger.info(f"--prepare_only: every split is prepared in {cache_root(config.source)}; runs with "
                        "the same data flags and --cache_dir read it without preparing again")
    session.accelerator.end_training()
    session.logger.close()
    return 0


# --------------------------------------------------------------------------------------------
# 4. Optimizer, schedule, weight average
# --------------------------------------------------------------------------------------------


@dataclass
class Trainable:
    """The model as ``accelerator.prepare`` returned it, and what updates and tracks it."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    ema: WeightAverage | None
    frozen_fp32: dict[str, torch.Tensor]  # see precision.frozen_weights_fp32


def optimization(config: TrainConfig, session: Session, model, adapters: Adapters | None) -> Trainable:
    accelerator, training = session.accelerator, config.training
    optimizer = build_optimizer(model, training, offloaded=optimizer_offloaded(accelerator))
    fill_deepspeed_config(accelerator, training)  # DeepSpeed's "auto" values from the flags
    session.logger.info(f"optimizer {type(optimizer).__name__}" + (
        " (DeepSpeed offload: states and step in CPU memory)" if optimizer_offloaded(accelerator) else ""))
    frozen_fp32 = frozen_weights_fp32(model) if uses_deepspeed(accelerator) else {}
    model, optimizer = accelerator.prepare(model, optimizer)
    if adapters is not None and not uses_deepspeed(accelerator):
        keep_only_adapters_in_checkpoints(accelerator)
    ema = None
    if training.ema_decay is not None:
        ema = WeightAverage(accelerator.unwrap_model(model), training.ema_decay)
    # Every process draws its own dropout and SpecAugment masks (seed + process index): with one
    # seed, all processes would mask alike. The data order has its own generators, seeded by
    # --seed alone, so it does not depend on this (nor on the number of processes).
    set_seed(training.seed, device_specific=True)
    return Trainable(model, optimizer, ema, frozen_fp32)


def lr_schedule(config: TrainConfig, train_batches: TrainBatches) -> LRSchedule:
    """The learning rate as a pure function of the step (the loop sets it every step)."""
    training = config.training
    max_steps = training.max_steps
    if max_steps <= 0:
        max_steps = steps_for_epochs(train_batches.batches_per_epoch, training.num_train_epochs,
                                     training.gradient_accumulation_steps)
    return LRSchedule(training.lr_scheduler_type, training.learning_rate, training.warmup_steps, max_steps,
                      training.min_learning_rate)


# --------------------------------------------------------------------------------------------
# 5. State: fresh, or restored from a checkpoint and checked against this run's flags
# --------------------------------------------------------------------------------------------


def start_or_resume(config: TrainConfig, session: Session, train_batches: TrainBatches, schedule: LRSchedule,
                    lora: bool, ema: WeightAverage | None) -> tuple[TrainerState, LRSchedule]:
    """The trainer state to start from and the schedule to follow (a resume may extend it)."""
    layout = run_layout(config, session.accelerator, train_batches)
    if session.resume_path:
        check_saved_flags(session.resume_path, config.to_flat_dict())
        state, schedule, notes = resume(session.resume_path, session.accelerator, train_batches, layout, schedule,
                                        config.checkpoint.reset_data_position, lora=lora, ema=ema)
        session.logger.info(f"resumed from {session.resume_path} at {describe(state)}")
        for note in notes:
            session.logger.info(f"  note: {note}")
    else:
        state = TrainerState()
    state.schedule, state.layout = dataclasses.asdict(schedule), layout
    return state, schedule
