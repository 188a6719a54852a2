"""The training run's flags: its own sections (optimization, LoRA, checkpoints, the Hub), the
whole ``TrainConfig`` that groups every part's section as ``--help`` shows them, and the rules
that involve several sections.

A field's own rule is declared with it (``check=at_least(1)``, see ``core/flags.py``); what is
left for ``validate_train_config`` are the combinations. Choices that name an implementation
(schedules, optimizers, normalizers, trackers) are read from the registry that holds the
implementations, so adding one is one entry there.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..core.errors import UserError
from ..core.flags import Check, at_least, between, check_fields, flag, parse_sections, positive
from ..core.model import ModelConfig
from ..core.paths import overlaps
from ..data.config import AugmentConfig, DataConfig, FilterConfig, MixConfig, PackingConfig, SourceConfig
from ..evaluation.config import (
    DecodingConfig,
    EvalConfig,
    EvalSpeedConfig,
    ScoringConfig,
    eval_set_names,
    eval_split_sets,
)
from ..evaluation.metrics import ERROR_RATES
from ..outputs.trackers import TRACKERS, missing_packages
from .optim import OPTIMIZERS
from .schedule import DECAYS

# --------------------------------------------------------------------------------------------
# Sections. Field names are unique across sections: each is a flag and a YAML key.
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingConfig:
    """Optimization, schedule, precision."""
    _argument_group_name = "Optimization, schedule, precision (training)"

    output_dir: str | None = flag(
        None, "Folder for checkpoints, logs, predictions and the final model. It belongs to one run: "
        "a fresh run into a folder holding another run stops (see --resume_from, --overwrite_output_dir).")
    overwrite_output_dir: bool = flag(
        False, "Delete what another run left in --output_dir before starting a fresh run.")
    max_steps: int = flag(
        -1, "Optimizer steps to train. -1: derive from --num_train_epochs (prepared data only).",
        check=Check(lambda steps: steps == -1 or steps > 0, "must be positive, or -1 to train --num_train_epochs"))
    num_train_epochs: float = flag(3.0, "Epochs to train when --max_steps is -1.", check=positive())
    per_device_train_batch_size: int = flag(16, "Clips per process per micro-batch.", check=at_least(1))
    gradient_accumulation_steps: int = flag(1, "Micro-batches per optimizer step.", check=at_least(1))
    learning_rate: float = flag(1e-5, "Peak learning rate, reached exactly at the end of warmup.", check=positive())
    warmup_steps: int = flag(0, "Linear warmup steps from 0 to --learning_rate.", check=at_least(0))
    lr_scheduler_type: str = flag(
        "linear", "Learning-rate decay after warmup.", DECAYS)
    min_learning_rate: float = flag(0.0, "Learning rate the linear/cosine decay ends at.", check=at_least(0))
    optim: str = flag(
        "adamw_fused", "Optimizer: adamw_fused (AdamW in one fused kernel, as transformers' "
        "default; ~10%% faster steps on CPU here), adamw (the multi-tensor kernel), adamw_8bit "
        "(8-bit states via bitsandbytes, CUDA only; saves memory) or adafactor (factored "
        "second moments; least memory).", OPTIMIZERS)
    weight_decay: float = flag(0.0, "Decoupled weight decay (not applied to biases and norms).", check=at_least(0))
    adam_beta1: float = flag(0.9, "AdamW beta1.", check=between(0, 1, high_inclusive=False))
    adam_beta2: float = flag(0.999, "AdamW beta2.", check=between(0, 1, high_inclusive=False))
    adam_epsilon: float = flag(1e-8, "AdamW epsilon.", check=positive())
    max_grad_norm: float = flag(1.0, "Clip the global gradient norm to this (0 disables clipping).",
                                check=at_least(0))
    mixed_precision: str | None = flag(
        None, "Mixed precision: no, fp16 (with a gradient scaler) or bf16 (Ampere or newer). "
        "Default: what `accelerate launch` was configured with, else no.", ("no", "fp16", "bf16"))
    max_nonfinite_steps: int = flag(
        10, "Stop (with the newest checkpoint from before) after this many consecutive steps whose "
        "gradients were NaN or infinite; each such step's update is skipped and counted "
        "(skipped_steps), so an isolated one does no harm.", check=at_least(1))
    seed: int = flag(42, "Seed for initialization, data order and dropout.")
    deterministic: bool = flag(
        False, "Only deterministic kernels (torch.use_deterministic_algorithms): two runs with the same "
        "flags then agree bit for bit also with several CPU threads or on a GPU. Without it the "
        "embedding backward (several CPU threads) and atomic adds (GPU) vary in the last bits.")
    logging_steps: int = flag(25, "Print and record training metrics every N optimizer steps.", check=at_least(1))
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], metadata={
        "help": "Experiment trackers, one or several (metrics.jsonl and stdout always get every number).",
        "choices": tuple(TRACKERS)})
    ema_decay: float | None = flag(
        None, "Keep an exponential moving average of the weights with this decay (e.g. 0.999): "
        "saved in every checkpoint, resumed exactly, written to output_dir/ema at the end.",
        check=between(0, 1, high_inclusive=False))
    eval_with_ema: bool = flag(
        False, "With --ema_decay: evaluate the averaged weights (so the best checkpoint is chosen "
        "by them) and save them as the final model.")
    ddp_timeout: int = flag(
        7200, "Seconds a process waits for the others at a synchronization point before the run "
        "fails (torch.distributed's timeout). The first start of a multi-GPU run prepares the "
        "features on one process per node while the others wait at such a point: see the "
        "docs/scaling.md, 'Preparing Common Voice at scale', for how long that takes.", check=at_least(1))
    log_sample_ids: bool = flag(
        False, "Write the ids of the clips of every optimizer step to output_dir/samples.jsonl "
        "(to audit the data order, e.g. across a resume).")


@dataclass
class LoraConfig:
    """LoRA adapters (PEFT): see train_loop/lora.py."""
    _argument_group_name = "LoRA adapters (lora)"

    use_lora: bool = flag(
        False, "Train LoRA adapters instead of the whole model (PEFT): checkpoints hold only the "
        "adapters; the final model is merged into a plain Whisper folder (see --lora_merge).")
    lora_r: int = flag(32, "Rank of the adapters.", check=at_least(1))
    lora_alpha: int = flag(64, "LoRA scaling numerator (the update is scaled by alpha / r).", check=positive())
    lora_dropout: float = flag(0.05, "Dropout on the adapters' input.", check=between(0, 1, high_inclusive=False))
    lora_target_modules: str = flag(
        "q_proj,v_proj", "Comma-separated names of the linear layers that get adapters (Whisper's: "
        "q_proj, k_proj, v_proj, out_proj, fc1, fc2).")
    lora_merge: bool = flag(
        True, "Merge the adapters into the final model (a plain Whisper folder). false: save PEFT's "
        "adapter folder instead (load with PeftModel.from_pretrained(base, output_dir)).")


@dataclass
class CheckpointConfig:
    """Checkpoints, resume and the best model."""
    _argument_group_name = "Checkpoints, resume and the best model (checkpoint)"

    save_steps: int = flag(1000, "Write checkpoint-N every N optimizer steps (and at the end). 0: only at the end.",
                           check=at_least(0))
    save_total_limit: int | None = flag(
        None, "Keep only the N newest checkpoints (the best one is never deleted).", check=at_least(1))
    resume_from: str | None = flag(
        None, "Continue a run: 'latest', a checkpoint name inside --output_dir "
        "(checkpoint-N), or a path.")
    metric_for_best_model: str = flag(
        "eval_wer", "Metric that picks the best checkpoint: an error rate of an evaluation set, so lower "
        "is better (eval_wer, eval_cer, eval_wer_raw; eval_<set>_wer with several sets).")
    load_best_model_at_end: bool = flag(
        False, "Save the best checkpoint's weights (not the last) as the final model.")
    save_dtype: str = flag(
        "float32", "Weights of the final model in output_dir: float32 (the full-precision master "
        "weights, also after bf16/fp16 training) or bfloat16/float16 (half the size, e.g. for an "
        "upload). Checkpoints always hold float32.", ("float32", "bfloat16", "float16"))
    reset_data_position: bool = flag(
        False, "On resume, keep weights, optimizer and step but start the training data at a "
        "fresh epoch (when the data or the stream's readers changed and the saved position "
        "no longer applies).")


@dataclass
class HubConfig:
    """Sharing the result on the Hugging Face Hub."""

    _argument_group_name = "Sharing the result on the Hugging Face Hub (hub)"

    push_to_hub: bool = flag(
        False, "Upload the final model folder (weights, processor, model card, results, curves) at the end. "
        "The token and the connection are checked at the start, not after days of training.")
    hub_model_id: str | None = flag(None, "Repository to upload to, USER/NAME (required with --push_to_hub).")
    hub_private: bool = flag(False, "Create the repository as private.")
    hub_push_checkpoints: bool = flag(
        False, "Also upload every checkpoint (whole, resumable) into checkpoint-N/ of the repository, in the "
        "background while training goes on.")


@dataclass
class TrainConfig:
    """Everything ``train_loop.main`` needs, grouped as in ``--help``."""

    source: SourceConfig = field(default_factory=SourceConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    packing: PackingConfig = field(default_factory=PackingConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    speed: EvalSpeedConfig = field(default_factory=EvalSpeedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def to_flat_dict(self) -> dict[str, Any]:
        """All flags as one flat mapping (the form of a YAML recipe)."""
        return {k: v for section in dataclasses.fields(self)
                for k, v in dataclasses.asdict(getattr(self, section.name)).items()}


# --------------------------------------------------------------------------------------------
# Flags from dataclasses: transformers' HfArgumentParser, with this project's messages
# --------------------------------------------------------------------------------------------


TRAIN_SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)}



def parse_train_config(argv: Sequence[str] | None = None) -> TrainConfig:
    sections = parse_sections(
        TRAIN_SECTIONS, argv, prog="train_loop.main",
        description="Fine-tune Whisper with a hand-written Accelerate loop. Launch with "
        "`accelerate launch train_loop/main.py ...` or `python -m train_loop.main ...`.")
    config = TrainConfig(**sections)
    validate_train_config(config)
    return config


def validate_train_config(config: TrainConfig) -> None:
    """The rules that involve several flags (each field's own rule is declared with it); each
    names the flags and the fix."""
    for section in dataclasses.fields(config):  # also for a TrainConfig built in code
        check_fields(getattr(config, section.name))
    src, tr, ev, ck, data, lora = (config.source, config.training, config.eval, config.checkpoint,
                                   config.data, config.lora)
    if not tr.output_dir:
        raise UserError("--output_dir is required (checkpoints, logs and the final model go there)")
    src.kind()
    missing = missing_packages(tr.report_to)
    if missing:
        raise UserError("; ".join(f"--report_to {name}: {package} is not installed (pip install {package})"
                                  for name, package in missing))
    if "none" in tr.report_to and len(tr.report_to) > 1:
        raise UserError(f"--report_to {' '.join(tr.report_to)}: 'none' cannot be combined with a tracker")
    inputs = {"--model_name_or_path": config.model.model_name_or_path, "--data_dir": src.data_dir,
              "--guard_data_dir": ev.guard_data_dir, "--cache_dir": src.cache_dir}
    for name, path in inputs.items():
        if path and os.path.exists(path) and overlaps(tr.output_dir, path):
            raise UserError(f"--output_dir {tr.output_dir} overlaps {name} {path} (the same folder, or one inside "
                            "the other): a run's folder is its own, and --overwrite_output_dir would delete the "
                            f"other. Choose another --output_dir")
    if tr.overwrite_output_dir and ck.resume_from:
        raise UserError("--overwrite_output_dir deletes the run that --resume_from would continue; give one")
    if src.streaming and tr.max_steps <= 0:
        raise UserError("--streaming needs --max_steps: the length of a stream is not known in advance")
    if src.streaming and data.prepare_only:
        raise UserError("--prepare_only with --streaming: a stream is decoded as it is read, so there "
                        "is nothing to prepare; drop one of the two")
    if src.streaming and data.group_by_length:
        raise UserError("--group_by_length needs prepared data: a stream's lengths are not known in "
                        "advance; drop --streaming or --group_by_length")
    if config.mix.sources(src) and src.streaming:
        raise UserError("--mix_data_dir/--mix_dataset_name draw each source's share from its whole index, which a "
                        "stream does not have: drop --streaming (the clips are prepared once, or packed with "
                        "--pack_to_window)")
    if config.augment.active() and not (src.streaming or config.packing.pack_to_window):
        raise UserError("--speed_perturbation, --noise_dir and --gain_db change the audio of every epoch, which prepared "
                        "features cannot: add --pack_to_window (recommended) or --streaming")
    if config.mix.sources(src) and data.group_by_length:
        raise UserError("--group_by_length with --mix_data_dir/--mix_dataset_name: the sources are shuffled together, "
                        "which undoes the grouping; drop one of the two")
    if tr.eval_with_ema and tr.ema_decay is None:
        raise UserError("--eval_with_ema needs --ema_decay (the average to evaluate); add it")
    if not lora.use_lora and lora != LoraConfig():
        raise UserError("--lora_r, --lora_alpha, --lora_dropout, --lora_target_modules and --lora_merge "
                        "take effect with --use_lora; add it")
    if tr.min_learning_rate > tr.learning_rate:
        raise UserError("--min_learning_rate must be between 0 and --learning_rate")
    if tr.max_steps > 0 and tr.warmup_steps > tr.max_steps:
        raise UserError(f"--warmup_steps {tr.warmup_steps} is longer than --max_steps {tr.max_steps}")
    filters = config.filters
    if filters.min_duration_in_seconds >= filters.max_duration_in_seconds:
        raise UserError("--min_duration_in_seconds must be below --max_duration_in_seconds")
    names = eval_set_names(data, ev)
    if len(set(names)) != len(names):
        raise UserError(f"--eval_split_name {data.eval_split_name}: a set is named twice ({', '.join(names)})")
    best_metrics = [f"eval_{name}" for name in ERROR_RATES]
    if len(names) > 1:
        best_metrics += [f"eval_{set_name}_{name}" for set_name in names for name in ERROR_RATES]
    if ck.metric_for_best_model not in best_metrics:
        raise UserError(f"--metric_for_best_model {ck.metric_for_best_model}: not a quality metric of the "
                        f"evaluation; use one of {', '.join(best_metrics)}")
    if ev.eval_long_form and not (eval_split_sets(data.eval_split_name) or ev.long_form_data_dir):
        raise UserError("--eval_long_form builds its recordings from the first --eval_split_name set, which is "
                        "'none'; name an evaluation split or give --long_form_data_dir")
    if (ev.long_form_data_dir or ev.long_form_minutes != 2.0 or ev.long_form_recordings != 10) and not ev.eval_long_form:
        raise UserError("--long_form_data_dir, --long_form_minutes and --long_form_recordings take effect with "
                        "--eval_long_form; add it")
    if ck.load_best_model_at_end and not eval_split_sets(data.eval_split_name):
        raise UserError(f"--load_best_model_at_end needs evaluations to pick the best checkpoint, but "
                        f"--eval_split_name {data.eval_split_name!r} names no set; name an evaluation split "
                        "or leave the flag out")
    hub = config.hub
    if (hub.hub_model_id or hub.hub_private or hub.hub_push_checkpoints) and not hub.push_to_hub:
        raise UserError("--hub_model_id, --hub_private and --hub_push_checkpoints take effect with --push_to_hub; add it")
    if hub.push_to_hub and not hub.hub_model_id:
        raise UserError("--push_to_hub needs --hub_model_id USER/NAME (the repository to upload to)")
    if hub.hub_model_id and hub.hub_model_id.count("/") != 1:
        raise UserError(f"--hub_model_id {hub.hub_model_id}: expected USER/NAME (or ORGANIZATION/NAME)")
