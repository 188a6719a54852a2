"""The end of a training run: which weights become the final model and where they go, the test
split, and what the run leaves for people (results, model card, curves, the Hub).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file

from ..core.errors import EXIT_STOPPED, UserError
from ..core.processes import on_main_process, zero_stage
from ..data.loaders import close_loader
from ..evaluation.report import format_wer_table, write_results
from ..outputs.card import write_model_card
from ..outputs.plot import plot_run
from .checkpoint import load_weight_average, save_final_model
from .loop import EvalTarget, Progress, Run, run_evaluation
from .precision import full_precision_state_dict
from .setup import eval_set_for, test_split


@dataclass
class FinalSave:
    """One folder the run leaves as a result."""

    folder: str
    what: str  # for the log: "the final model", "the weight average", ...
    module: torch.nn.Module  # whose config and generation config are saved (or PEFT's, for adapters)
    weights: dict[str, torch.Tensor] | None  # plain Whisper weights; None on other processes or for adapters
    adapters_only: bool = False  # --lora_merge false: PEFT's adapter folder instead of a Whisper folder


def final_saves(run: Run, weights: dict[str, torch.Tensor] | None) -> list[FinalSave]:
    """The one decision about final weights (EMA x LoRA x merge): what goes where. ``weights``
    are the trained float32 weights by name (gathered from ZeRO shards; None on other processes)."""
    cfg, adapters = run.config, run.adapters
    output_dir = cfg.training.output_dir
    model = run.accelerator.unwrap_model(run.model)
    whisper = adapters.whisper() if adapters else model

    def as_whisper(named: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        return adapters.merged(named) if adapters and named is not None else named

    saves = []
    if run.ema is not None:
        # The average in float32, by parameter name (under DeepSpeed too, where the module holds
        # 16-bit copies and the masters live in the optimizer).
        averaged = None if weights is None else run.ema.averaged_weights(weights)
        if cfg.training.eval_with_ema:
            weights = averaged  # --eval_with_ema: the average is the final model
        else:
            saves.append(FinalSave(os.path.join(output_dir, "ema"), f"the weight average (--ema_decay "
                                   f"{cfg.training.ema_decay})", whisper, as_whisper(averaged)))
    what = "the final model" + (" = the weight average (--ema_decay, --eval_with_ema)"
                                if run.ema is not None and cfg.training.eval_with_ema else "")
    if adapters and not cfg.lora.lora_merge:
        saves.append(FinalSave(output_dir, f"{what}: the LoRA adapters (--lora_merge false)", model, None,
                               adapters_only=True))
    else:
        saves.append(FinalSave(output_dir, what + (" (LoRA merged)" if adapters else ""), whisper,
                               as_whisper(weights)))
    return saves


def finish(run: Run, progress: Progress) -> int:
    """Save the final model for `from_pretrained`/`pipeline`, evaluate it on the test split, and
    write what the run leaves behind; 0, the exit status of a run trained to the end."""
    cfg, accelerator, state, logger = run.config, run.accelerator, progress.state, run.logger
    output_dir = cfg.training.output_dir
    if cfg.checkpoint.load_best_model_at_end and state.best_checkpoint:
        load_best_checkpoint(run, os.path.join(output_dir, state.best_checkpoint))
        logger.info(f"final model = best checkpoint {state.best_checkpoint} "
                    f"({cfg.checkpoint.metric_for_best_model} {state.best_metric:.3f})")
    model = accelerator.unwrap_model(run.model)
    model.config.use_cache = True  # generation speed for whoever loads the model
    weights = full_precision_state_dict(accelerator, run.model, run.frozen_fp32)  # every process takes part
    if run.ema is not None and cfg.training.eval_with_ema:
        run.ema.copy_to(model)  # the test evaluation below hears the average too
    for save in final_saves(run, weights):
        on_main_process(accelerator, lambda save=save: write_final(save, run))
        accelerator.wait_for_everyone()
        logger.info(f"saved {save.what} to {save.folder}" + (
            f" ({cfg.checkpoint.save_dtype} weights; from_pretrained / pipeline ready)" if not save.adapters_only
            else f" (load with PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained("
                 f"'{cfg.model.model_name_or_path}'), '{save.folder}'))"))

    split = test_split(cfg, logger)
    if split is not None:
        test_set = eval_set_for(cfg, run.processor, accelerator, logger, split, max_samples=None)
        try:
            run_evaluation(run, progress, EvalTarget("test", test_set, run.generation, run.normalizer), prefix="test")
        finally:
            close_loader(test_set.loader)
    if accelerator.is_main_process:
        write_results(output_dir, state, cfg)
        write_model_card(output_dir, cfg.to_flat_dict(), state.evaluations, state.best_step, state.step,
                         train_clips=run.train_batches.num_clips)
        curves = plot_run(output_dir)
        if state.evaluations:
            logger.info(format_wer_table(state.evaluations, cfg.scoring.eval_normalizer, state.best_step))
        logger.info(f"model card: {output_dir}/README.md" + (f"; curves: {curves}" if curves else ""))
        if run.hub is not None:
            names = run.hub.push_final(output_dir)
            logger.info(f"uploaded {len(names)} files to https://huggingface.co/{cfg.hub.hub_model_id}")
    return 0


def write_final(save: FinalSave, run: Run) -> None:
    os.makedirs(save.folder, exist_ok=True)
    if save.adapters_only:
        run.adapters.save(run.processor, save.folder)
    else:
        save_final_model(save.module, run.processor, save.folder, save.weights, run.config.checkpoint.save_dtype)


def stopped(run: Run, progress: Progress, signal_name: str | None) -> int:
    """A signal stopped the loop; its checkpoint is saved."""
    run.logger.info(f"stopped at step {progress.state.step} ({signal_name}); "
                    f"checkpoint-{progress.state.step} is saved. Continue with the same command plus "
                    "--resume_from latest")
    return EXIT_STOPPED


def close(run: Run) -> None:
    """The evaluation loaders' workers, the trackers and the log end now, not at interpreter exit."""
    for target in run.eval_targets:
        close_loader(getattr(target.eval_set, "loader", None))  # long-form sets have none
    run.accelerator.end_training()
    run.logger.close()


def load_best_checkpoint(run: Run, checkpoint_dir: str) -> None:
    """--load_best_model_at_end: the best checkpoint's weights (and its weight average) back into
    the model before the final save."""
    if zero_stage(run.accelerator):
        run.accelerator.load_state(checkpoint_dir)  # ZeRO shards: let DeepSpeed place them
    else:
        load_weights(run.accelerator.unwrap_model(run.model), checkpoint_dir, adapters_only=run.adapters is not None)
    if run.ema is not None:
        load_weight_average(run.ema, checkpoint_dir)  # the best step's average too


def load_weights(model, checkpoint_dir: str, adapters_only: bool) -> None:
    weights = load_file(os.path.join(checkpoint_dir, "model.safetensors"))
    weights = {name.removeprefix("module."): tensor for name, tensor in weights.items()}  # saved under DDP
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied output projection is stored once; anything else missing means a wrong checkpoint. A
    # LoRA checkpoint holds only the adapters: the base weights are missing by design.
    missing = [name for name in missing if name != "proj_out.weight" and not name.endswith("proj_out.weight")]
    if adapters_only:
        missing = [name for name in missing if ".lora_" in name]
    if missing or unexpected:
        raise UserError(f"{checkpoint_dir}: weights do not match the model "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
