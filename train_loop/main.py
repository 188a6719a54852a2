"""Fine-tune Whisper on a new language.

    accelerate launch train_loop/main.py --model_name_or_path openai/whisper-small \\
        --data_dir cv-corpus-11.0-2022-09-21/be --language be --output_dir runs/small-be \\
        --max_steps 12000 --mixed_precision bf16 ...
    python -m train_loop.main --config launch/recipes/whisper-small-cv11-be.yaml
    python -m train_loop.main --help

Read top to bottom, ``run`` is the table of contents: accelerator, model, data, optimizer and
schedule, state (fresh or resumed), the loop, the final model and its test evaluation.
"""

from __future__ import annotations

import dataclasses
import os
import sys

if __package__ in (None, ""):
    # Run as a script (`accelerate launch train_loop/main.py`): make the package importable,
    # and keep train_loop/ itself off sys.path so its evaluate.py cannot shadow packages.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))
    __package__ = "train_loop"


from train_loop.checkpoint import (STATE_FILE, TrainerState, incomplete_checkpoints, resolve_resume,
                                   run_manifest, save_final_model)
from train_loop.config import SourceConfig, TrainConfig, eval_split_sets, metric_name, parse_train_config
from train_loop.data import build_eval_set, build_train_batches
from train_loop.loaders import close_loader, steps_for_epochs
from train_loop.distributed import (accelerator_kwargs, check_shared_output_dir, fill_deepspeed_config,
                                    load_whole_model, on_main_process, optimizer_offloaded,
                                    reset_accelerator_settings, uses_deepspeed, zero_stage)
from train_loop.errors import UserError
from train_loop.evaluation import GenerationSettings
from train_loop.logger import RunLogger, make_line_buffered, quiet_library_output
from train_loop.loop import EvalTarget, Run, run_evaluation, train
from train_loop.ema import WeightAverage
from train_loop.lora import (apply_lora, is_lora, keep_only_adapters_in_checkpoints, merged_whisper_weights,
                             parameter_summary, save_adapters)
from train_loop.model import load_model, load_processor
from train_loop.optim import build_optimizer
from train_loop.precision import (check_precision_supported, frozen_weights_fp32,
                                  full_precision_state_dict, model_input_dtype)
from train_loop.preemption import EXIT_INTERRUPTED, EXIT_STOPPED, StopOnSignal, StoppedBeforeTraining
from train_loop.card import write_model_card
from train_loop.plot import plot_run
from train_loop.report import format_wer_table, write_results
from train_loop.resume import describe, resume, run_layout
from train_loop.rundir import claim_output_dir
from train_loop.schedule import LRSchedule
from train_loop.sources import has_split
from train_loop.text import get_normalizer
from train_loop.trackers import TRACKERS


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 trained to the end; 2 a problem to fix (the message says what); 75 stopped
    by SIGTERM/SIGINT, resumable with --resume_from latest; 130 a second Ctrl-C."""
    make_line_buffered()
    quiet_library_output()
    try:
        config = parse_train_config(argv)
        return run(config, list(sys.argv[1:] if argv is None else argv))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except StoppedBeforeTraining as stop:
        print(f"{stop.signal_name} received before training started: stopped (nothing to save; prepared "
              "features are cached for the next start)", file=sys.stderr, flush=True)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print("stopped at once (second Ctrl-C), without a new checkpoint; an unfinished one is removed at "
              "the next start. Continue with the same command plus --resume_from latest",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def run(config: TrainConfig, argv: list[str]) -> int:
    """Train; return 0 when done, EXIT_STOPPED when a signal stopped the run (checkpoint saved)."""
    # 1. Processes, precision, trackers; the output folder becomes this run's (locked); signals.
    deterministic_before = use_deterministic_kernels(config.training.deterministic)
    accelerator = build_accelerator(config)
    check_precision_supported(accelerator)
    stop_signal = StopOnSignal(accelerator)
    lock = None
    try:
        lock = on_main_process(accelerator, lambda: claim_output_dir(
            config.training.output_dir, resuming=bool(config.checkpoint.resume_from),
            overwrite=config.training.overwrite_output_dir))
        start_trackers(accelerator, config)  # after the claim: --overwrite_output_dir empties the folder
        hub = on_main_process(accelerator, lambda: connect_hub(config))  # None on the other processes
        return _run(config, argv, accelerator, lock, stop_signal, hub)
    finally:
        stop_signal.restore()
        if lock is not None:
            lock.release()
        use_deterministic_kernels(deterministic_before)


def _run(config: TrainConfig, argv: list[str], accelerator, lock, stop_signal: StopOnSignal, hub) -> int:
    output_dir = config.training.output_dir
    check_shared_output_dir(accelerator, output_dir)
    from accelerate.utils import set_seed

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
    report_interrupted_saves(accelerator, logger, output_dir)
    if logger.dropped_lines:
        logger.info(f"metrics.jsonl: removed {logger.dropped_lines} lines logged after step "
                    f"{resume_step} by the interrupted run (those steps run again)")

    # 2. Model and processor.
    processor = load_processor(config.model.model_name_or_path, config.model.token_language(), config.model.task)
    if config.model.language_token_from:
        logger.info(f"language {config.model.language}: decoded with Whisper's <|{config.model.language_token_from}|> "
                    "token (--language_token_from)")
    with load_whole_model(accelerator):
        model = load_model(config.model, processor)
    if config.lora.use_lora:
        if zero_stage(accelerator) == 3:
            raise UserError("--use_lora under DeepSpeed ZeRO-3 is not supported: LoRA already keeps the "
                            "optimizer state small; use DDP or launch/accelerate/deepspeed_zero2.yaml")
        model = apply_lora(model, config.lora)
    logger.info(f"model {config.model.model_name_or_path}: {parameter_summary(model)}"
                + (f" (LoRA r {config.lora.lora_r} on {config.lora.lora_target_modules})" if config.lora.use_lora else ""))

    # 3. Data: every skipped clip is counted and reported.
    train_batches = build_train_batches(
        config.source, config.data, config.filters, processor, accelerator,
        batch_size=config.training.per_device_train_batch_size, seed=config.training.seed,
        eval_normalizer=config.eval.eval_normalizer)
    logger.info(train_batches.report.summary() if not config.source.streaming else
                f"{config.data.train_split_name}: streaming (skipped clips are reported as they are read)")
    generation = GenerationSettings.from_config(config.model.token_language(), config.model.task,
                                                config.eval.generation_max_length, config.eval.num_beams,
                                                config.speed)
    eval_targets = build_eval_targets(config, processor, accelerator, generation, logger)
    if config.data.prepare_only:
        return prepare_only(config, processor, accelerator, train_batches, eval_targets, logger)

    # 4. Optimizer and learning-rate schedule (a pure function of the step; the loop sets it).
    max_steps = config.training.max_steps
    if max_steps <= 0:
        max_steps = steps_for_epochs(train_batches.batches_per_epoch, config.training.num_train_epochs,
                                     config.training.gradient_accumulation_steps)
    optimizer = build_optimizer(model, config.training, offloaded=optimizer_offloaded(accelerator))
    fill_deepspeed_config(accelerator, config.training)  # DeepSpeed's "auto" values from the flags
    logger.info(f"optimizer {type(optimizer).__name__}"
                + (" (DeepSpeed offload: states and step in CPU memory)" if optimizer_offloaded(accelerator) else ""))
    frozen_fp32 = frozen_weights_fp32(model) if uses_deepspeed(accelerator) else {}
    model, optimizer = accelerator.prepare(model, optimizer)
    if config.lora.use_lora and not uses_deepspeed(accelerator):
        keep_only_adapters_in_checkpoints(accelerator)
    ema = None
    if config.training.ema_decay is not None:
        if zero_stage(accelerator) == 3:
            raise UserError("--ema_decay under DeepSpeed ZeRO-3 is not supported (each process holds only "
                            "a shard of the weights); use ZeRO-2 or DDP, or average checkpoints with "
                            "python -m train_loop.average")
        ema = WeightAverage(accelerator.unwrap_model(model), config.training.ema_decay)
        accelerator.register_for_checkpointing(ema)  # saved with every checkpoint, restored on resume
    # Every process draws its own dropout and SpecAugment masks (seed + process index): with one
    # seed, all processes would mask alike. The data order has its own generators, seeded by
    # --seed alone, so it does not depend on this (nor on the number of processes).
    set_seed(config.training.seed, device_specific=True)
    schedule = LRSchedule(config.training.lr_scheduler_type, config.training.learning_rate,
                          config.training.warmup_steps, max_steps, config.training.min_learning_rate)

    # 5. State: fresh, or restored from a checkpoint (and checked against this run's flags).
    layout = run_layout(config, accelerator, train_batches)
    if resume_path:
        state, schedule, notes = resume(resume_path, accelerator, train_batches, layout, schedule,
                                        config.checkpoint.reset_data_position)
        logger.info(f"resumed from {resume_path} at {describe(state)}")
        for note in notes:
            logger.info(f"  note: {note}")
    else:
        state = TrainerState()
    state.schedule, state.layout = dataclasses.asdict(schedule), layout

    # 6. Train.
    manifest = run_manifest(argv, train_batches.fingerprint, accelerator.num_processes)
    training_run = Run(config=config, accelerator=accelerator, model=model, optimizer=optimizer,
                       schedule=schedule, processor=processor,
                       train_batches=train_batches, eval_targets=eval_targets,
                       normalizer=get_normalizer(config.eval.eval_normalizer),
                       generation=generation, logger=logger, state=state, manifest=manifest,
                       start_step=state.step, synced_gpus=zero_stage(accelerator) == 3,
                       input_dtype=model_input_dtype(accelerator), frozen_fp32=frozen_fp32, hub=hub, ema=ema)
    logger.info(f"training {max_steps} steps of {schedule.kind} schedule, peak lr {schedule.peak:g} "
                f"at step {schedule.warmup_steps or 1}; global batch "
                f"{config.training.per_device_train_batch_size * accelerator.num_processes * config.training.gradient_accumulation_steps}")
    training_run.stop_requested = stop_signal.requested
    stop_signal.training_started()
    try:
        completed = train(training_run)
    finally:
        train_batches.close()  # its workers end now, not at interpreter exit
    if not completed:
        logger.info(f"stopped at step {state.step} ({stop_signal.signal_name}); checkpoint-{state.step} "
                    f"is saved. Continue with the same command plus --resume_from latest")
        accelerator.end_training()
        logger.close()
        return EXIT_STOPPED

    # 7. Final model (the best one with --load_best_model_at_end) and the test split.
    try:
        finish(training_run)
    finally:
        for target in eval_targets:
            close_loader(target.eval_set.loader)
    accelerator.end_training()
    logger.close()
    return 0


def connect_hub(config: TrainConfig):
    """With --push_to_hub: check the token, the connection and the repository now (main process)."""
    if not config.hub.push_to_hub:
        return None
    from train_loop.hub import HubUpload

    hub = HubUpload(config.hub.hub_model_id, private=config.hub.hub_private)
    user = hub.check()
    print(f"--push_to_hub: logged in as {user}; the final model goes to {config.hub.hub_model_id} at the end",
          flush=True)
    return hub


def use_deterministic_kernels(enabled: bool) -> bool:
    """Switch torch's deterministic kernels on or off; returns the previous setting (main() may
    run several times in one process)."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs for it
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    return before


def report_interrupted_saves(accelerator, logger, output_dir: str) -> None:
    """A kill during a save leaves checkpoint-N.partial: never resumed from; removed here."""
    import shutil

    if accelerator.is_main_process:
        for path in incomplete_checkpoints(output_dir):
            logger.info(f"removing {os.path.basename(path)}: a save that was interrupted "
                        "(the newest complete checkpoint is used instead)")
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()


def build_accelerator(config: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration

    output_dir = config.training.output_dir
    accumulation = GradientAccumulationPlugin(
        num_steps=config.training.gradient_accumulation_steps,
        sync_with_dataloader=False)  # an optimizer step may span an epoch boundary
    trackers = [TRACKERS[name][0] for name in config.training.report_to if TRACKERS[name]]
    reset_accelerator_settings()
    accelerator = Accelerator(
        mixed_precision=config.training.mixed_precision,
        gradient_accumulation_plugin=accumulation,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=output_dir,
                                            logging_dir=os.path.join(output_dir, "tensorboard")),
        **accelerator_kwargs(config.training.ddp_timeout),  # without a GPU: one gloo group
    )
    return accelerator


def start_trackers(accelerator, config: TrainConfig) -> None:
    """Open the trackers' logs (TensorBoard creates output_dir/tensorboard)."""
    if not any(TRACKERS[name] for name in config.training.report_to):
        return
    output_dir = config.training.output_dir
    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.to_flat_dict().items()}
    run_name = os.path.basename(os.path.normpath(output_dir))
    accelerator.init_trackers("run", config=hparams, init_kwargs={
        "wandb": {"name": run_name, "dir": output_dir}, "mlflow": {"run_name": run_name}})


def finish(run: Run) -> None:
    """Save the final model for `from_pretrained`/`pipeline`, evaluate it on the test split."""
    cfg, accelerator, state, logger = run.config, run.accelerator, run.state, run.logger
    output_dir = cfg.training.output_dir
    model = accelerator.unwrap_model(run.model)
    if cfg.checkpoint.load_best_model_at_end and state.best_checkpoint:
        best = os.path.join(output_dir, state.best_checkpoint)
        if zero_stage(accelerator):
            accelerator.load_state(best)  # ZeRO shards: let DeepSpeed place them
        else:
            load_weights(model, best)
        if run.ema is not None:
            load_custom_state(run.ema, best)  # the best step's average too
        logger.info(f"final model = best checkpoint {state.best_checkpoint} "
                    f"({cfg.checkpoint.metric_for_best_model} {state.best_metric:.3f})")
    model.config.use_cache = True  # generation speed for whoever loads the model
    weights = full_precision_state_dict(accelerator, run.model, run.frozen_fp32)  # every process takes part
    if run.ema is not None:
        # The average in float32, by parameter name (under DeepSpeed too, where the module holds
        # 16-bit copies and the masters live in the optimizer): the trained weights elsewhere.
        averaged = None if weights is None else run.ema.averaged_weights(weights)
        if cfg.training.eval_with_ema:
            weights = averaged
            run.ema.copy_to(model)  # the test evaluation below hears the average too
            logger.info(f"final model = the weight average (--ema_decay {cfg.training.ema_decay}, --eval_with_ema)")
        else:
            ema_dir = os.path.join(output_dir, "ema")
            os.makedirs(ema_dir, exist_ok=True)
            plain = model.get_base_model() if is_lora(model) else model
            if averaged is not None and is_lora(model):
                averaged = merged_whisper_weights(model, averaged)
            on_main_process(accelerator, lambda: save_final_model(plain, run.processor, ema_dir, averaged,
                                                                  cfg.checkpoint.save_dtype))
            accelerator.wait_for_everyone()
            logger.info(f"saved the weight average (--ema_decay {cfg.training.ema_decay}) to {ema_dir}")
    if is_lora(model) and not cfg.lora.lora_merge:
        on_main_process(accelerator, lambda: save_adapters(model, run.processor, output_dir))
        accelerator.wait_for_everyone()
        logger.info(f"saved the LoRA adapters to {output_dir} (--lora_merge false: load with "
                    f"PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained("
                    f"'{cfg.model.model_name_or_path}'), '{output_dir}'))")
    else:
        plain = model
        if is_lora(model):  # the adapters merged: an ordinary Whisper folder
            plain = model.get_base_model()
            weights = merged_whisper_weights(model, weights) if weights is not None else None
        on_main_process(accelerator, lambda: save_final_model(plain, run.processor, output_dir, weights,
                                                              cfg.checkpoint.save_dtype))
        accelerator.wait_for_everyone()
        logger.info(f"saved the final model to {output_dir} ({cfg.checkpoint.save_dtype} weights"
                    f"{', LoRA merged' if is_lora(model) else ''}; from_pretrained / pipeline ready)")

    test_split = cfg.data.test_split_name
    if test_split.lower() != "none":
        if has_split(cfg.source, test_split):
            test_set = eval_set_for(cfg, run.processor, accelerator, test_split, max_samples=None)
            if test_set.report is not None:
                logger.info(test_set.report.summary())
            try:
                run_evaluation(run, test_set, prefix="test")
            finally:
                close_loader(test_set.loader)
        else:
            logger.info(f"no '{test_split}' split in the data: final test evaluation skipped "
                        "(--test_split_name none silences this)")
    if accelerator.is_main_process:
        write_results(output_dir, state, cfg)
        write_model_card(output_dir, cfg.to_flat_dict(), state.evaluations, state.best_step, state.step,
                         train_clips=run.train_batches.num_clips)
        curves = plot_run(output_dir)
        if state.evaluations:
            logger.info(format_wer_table(state.evaluations, cfg.eval.eval_normalizer, state.best_step))
        logger.info(f"model card: {output_dir}/README.md" + (f"; curves: {curves}" if curves else ""))
        if run.hub is not None:
            names = run.hub.push_final(output_dir)
            logger.info(f"uploaded {len(names)} files to https://huggingface.co/{cfg.hub.hub_model_id}")


def prepare_only(config: TrainConfig, processor, accelerator, train_batches, eval_targets, logger) -> int:
    """--prepare_only: the training and evaluation sets are prepared by now; prepare the test
    split too, and stop before any model work."""
    test_split = config.data.test_split_name
    if test_split.lower() != "none" and has_split(config.source, test_split):
        test_set = eval_set_for(config, processor, accelerator, test_split, max_samples=None)
        logger.info(test_set.report.summary())
        close_loader(test_set.loader)
    train_batches.close()
    for target in eval_targets:
        close_loader(target.eval_set.loader)
    from train_loop.prepared import cache_root

    logger.info(f"--prepare_only: every split is prepared in {cache_root(config.source)}; runs with the "
                "same data flags and --cache_dir read it without preparing again")
    accelerator.end_training()
    logger.close()
    return 0


def build_eval_targets(config: TrainConfig, processor, accelerator, generation: GenerationSettings,
                       logger) -> list[EvalTarget]:
    """The sets evaluated during training: each of --eval_split_name's (comma-separated), then
    the forgetting guard (--guard_data_dir), transcribed in its own language."""
    targets = []
    for split in eval_split_sets(config.data.eval_split_name):
        eval_set = eval_set_for(config, processor, accelerator, split, config.data.max_eval_samples)
        if eval_set.report is not None:
            logger.info(eval_set.report.summary())
        targets.append(EvalTarget(metric_name(split), eval_set, generation,
                                  get_normalizer(config.eval.eval_normalizer)))
    ev = config.eval
    if ev.guard_data_dir:
        language = ev.guard_language.strip("<|>")
        if processor.tokenizer.convert_tokens_to_ids(f"<|{language}|>") == processor.tokenizer.unk_token_id:
            raise UserError(f"--guard_language {ev.guard_language}: not a language Whisper knows "
                            "(use its code, e.g. en, ru, pl)")
        source = SourceConfig(data_dir=ev.guard_data_dir, cache_dir=config.source.cache_dir,
                              preprocessing_num_workers=config.source.preprocessing_num_workers)
        source.kind()
        guard = build_eval_set(source, config.data, processor, accelerator, ev.guard_split_name,
                               batch_size=ev.per_device_eval_batch_size, max_samples=ev.guard_max_samples,
                               eval_normalizer=ev.guard_normalizer, streaming=False)
        if guard.report is not None:
            logger.info(f"forgetting guard ({language}, {ev.guard_data_dir}): {guard.report.summary()}")
        targets.append(EvalTarget("guard", guard, dataclasses.replace(generation, language=language),
                                  get_normalizer(ev.guard_normalizer)))
    return targets


def eval_set_for(config: TrainConfig, processor, accelerator, split: str, max_samples: int | None):
    """Evaluation under ZeRO-3 reads prepared data even with --streaming: every process must
    call generate the same number of times, which only a split of known size can promise
    (a stream may give one process a batch more than another, and then generation hangs)."""
    return build_eval_set(config.source, config.data, processor, accelerator, split,
                          batch_size=config.eval.per_device_eval_batch_size, max_samples=max_samples,
                          eval_normalizer=config.eval.eval_normalizer,
                          streaming=config.source.streaming and zero_stage(accelerator) != 3)


def load_custom_state(ema, checkpoint_dir: str) -> None:
    from accelerate.checkpointing import load_custom_state as load

    load(ema, checkpoint_dir, 0)


def load_weights(model, checkpoint_dir: str) -> None:
    from safetensors.torch import load_file

    weights = load_file(os.path.join(checkpoint_dir, "model.safetensors"))
    weights = {name.removeprefix("module."): tensor for name, tensor in weights.items()}  # saved under DDP
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied output projection is stored once; anything else missing means a wrong checkpoint. A
    # LoRA checkpoint holds only the adapters: the base weights are missing by design.
    missing = [name for name in missing if name != "proj_out.weight" and not name.endswith("proj_out.weight")]
    if is_lora(model):
        missing = [name for name in missing if ".lora_" in name]
    if missing or unexpected:
        raise UserError(f"{checkpoint_dir}: weights do not match the model "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


if __name__ == "__main__":
    sys.exit(main())
