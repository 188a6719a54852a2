"""Run configuration: plain dataclasses, turned into command-line flags and YAML recipes.

Every field is one flag (``--field_name``) with its help text and default shown in ``--help``.
A YAML recipe (``--config recipe.yaml``) may set any of the same names; flags given on the
command line override the file, which overrides the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import UserError


def flag(default: Any, help: str, choices: Sequence[str] | None = None):
    return field(default=default, metadata={"help": help, "choices": choices})


# --------------------------------------------------------------------------------------------
# Sections. Field names are unique across sections: each is a flag and a YAML key.
# --------------------------------------------------------------------------------------------


@dataclass
class SourceConfig:
    """Where the speech comes from."""

    dataset_name: str | None = flag(
        None, "Hugging Face Hub dataset with an audio and a transcript column (USER/NAME). Give "
        "this or --data_dir. (Common Voice left the Hub: download a release and use --data_dir.)")
    dataset_config_name: str | None = flag(None, "Hub dataset configuration, e.g. 'be'.")
    dataset_revision: str | None = flag(None, "Hub dataset revision (branch, tag or commit).")
    data_dir: str | None = flag(
        None, "Local dataset folder: a Common Voice release's language folder as Mozilla ships "
        "it (cv-corpus-<version>/be/: {split}.tsv and clips/; 'validation' reads dev.tsv) or an "
        "audiofolder ({split}/metadata.csv with file_name and the text column).")
    audio_column_name: str = flag("audio", "Column holding the audio (Hub datasets).")
    text_column_name: str = flag("sentence", "Column holding the transcript.")
    streaming: bool = flag(
        False, "Decode audio on the fly in DataLoader workers instead of preparing log-mel "
        "features once and caching them on disk.")
    cache_dir: str | None = flag(
        None, "Where prepared features and Hub downloads are cached "
        "(default: $XDG_CACHE_HOME/whisper-train-loop or ~/.cache/whisper-train-loop).")
    preprocessing_num_workers: int = flag(
        1, "Processes that decode audio and compute features when preparing a dataset.")


@dataclass
class FilterConfig:
    """Which clips are used; every dropped clip is counted and reported."""

    min_duration_in_seconds: float = flag(0.0, "Drop training clips shorter than this.")
    max_duration_in_seconds: float = flag(
        30.0, "Drop training clips longer than this (at most the model's 30 s window: "
        "longer audio would be cut while its transcript stays whole).")
    max_label_length: int = flag(
        448, "Drop clips whose tokenized transcript (with the language/task prefix) is longer "
        "than this; Whisper's decoder holds 448 positions.")


@dataclass
class DataConfig:
    """Splits, text preparation and data loading."""

    train_split_name: str = flag("train", "Training split; join several with '+' to concatenate.")
    eval_split_name: str = flag(
        "validation", "Split evaluated during training ('+' concatenates). 'none' disables.")
    test_split_name: str = flag(
        "test", "Split evaluated once at the end with the final model. 'none' disables; a "
        "missing default split is skipped with a note.")
    max_train_samples: int | None = flag(None, "Use only the first N training clips (debugging).")
    max_eval_samples: int | None = flag(
        None, "Evaluate on the first N clips of the eval split during training (a fast, fixed "
        "subset); the final test evaluation always uses the whole test split.")
    shuffle_buffer_size: int = flag(
        500, "Streaming only: rows held in the shuffle buffer (reshuffled every epoch).")
    dataloader_num_workers: int | None = flag(
        None, "DataLoader worker processes per training process (they decode when streaming and "
        "read features otherwise). Default: 0 for prepared data without a GPU (reading cached "
        "features is cheap; a worker would only take CPU cores from training), else "
        "min(4, CPU cores per process).")
    do_lower_case: bool = flag(False, "Lower-case training transcripts (default: keep raw text).")
    do_remove_punctuation: bool = flag(
        False, "Normalize training transcripts with the evaluation normalizer (lower case, no "
        "punctuation). Default: train on the raw, cased, punctuated text.")
    prepared_feature_dtype: str = flag(
        "float16", "Storage type of prepared log-mel features (float16 halves the disk use; "
        "its rounding is far below bf16/fp16 training noise).", ("float16", "float32"))


@dataclass
class ModelConfig:
    """Which Whisper to fine-tune and how."""

    model_name_or_path: str = flag(
        "openai/whisper-small", "Model to fine-tune: a Hub id or a local folder "
        "(save_pretrained format, e.g. a previous run's output_dir).")
    language: str = flag("be", "Language token forced in labels and generation (code or name).")
    task: str = flag("transcribe", "Whisper task.", ("transcribe", "translate"))
    attn_implementation: str = flag(
        "sdpa", "Attention kernel.", ("eager", "sdpa", "flash_attention_2"))
    gradient_checkpointing: bool = flag(
        False, "Recompute activations in backward to save memory (use_cache is switched off "
        "for training and back on for generation).")
    freeze_encoder: bool = flag(False, "Train only the decoder.")
    apply_spec_augment: bool = flag(
        False, "SpecAugment during training: mask random time steps / mel channels of the input "
        "(regularizes long fine-tuning; never applied in evaluation).")
    mask_time_prob: float = flag(0.05, "SpecAugment: fraction of time steps masked (with --apply_spec_augment).")
    mask_time_length: int = flag(10, "SpecAugment: frames per time mask.")
    mask_time_min_masks: int = flag(2, "SpecAugment: at least this many time masks per clip.")
    mask_feature_prob: float = flag(0.0, "SpecAugment: fraction of mel channels masked.")
    mask_feature_length: int = flag(10, "SpecAugment: channels per feature mask.")


@dataclass
class TrainingConfig:
    """Optimization, schedule, precision."""

    output_dir: str | None = flag(
        None, "Folder for checkpoints, logs, predictions and the final model. It belongs to one run: "
        "a fresh run into a folder holding another run stops (see --resume_from, --overwrite_output_dir).")
    overwrite_output_dir: bool = flag(
        False, "Delete what another run left in --output_dir before starting a fresh run.")
    max_steps: int = flag(
        -1, "Optimizer steps to train. -1: derive from --num_train_epochs (prepared data only).")
    num_train_epochs: float = flag(3.0, "Epochs to train when --max_steps is -1.")
    per_device_train_batch_size: int = flag(16, "Clips per process per micro-batch.")
    gradient_accumulation_steps: int = flag(1, "Micro-batches per optimizer step.")
    learning_rate: float = flag(1e-5, "Peak learning rate, reached exactly at the end of warmup.")
    warmup_steps: int = flag(0, "Linear warmup steps from 0 to --learning_rate.")
    lr_scheduler_type: str = flag(
        "linear", "Learning-rate decay after warmup.", ("linear", "cosine", "constant"))
    min_learning_rate: float = flag(0.0, "Learning rate the linear/cosine decay ends at.")
    optim: str = flag(
        "adamw_fused", "Optimizer: adamw_fused (AdamW in one fused kernel, as transformers' "
        "default; ~10%% faster steps on CPU here), adamw (the multi-tensor kernel), adamw_8bit "
        "(8-bit states via bitsandbytes, CUDA only; saves memory) or adafactor (factored "
        "second moments; least memory).", ("adamw", "adamw_fused", "adamw_8bit", "adafactor"))
    weight_decay: float = flag(0.0, "Decoupled weight decay (not applied to biases and norms).")
    adam_beta1: float = flag(0.9, "AdamW beta1.")
    adam_beta2: float = flag(0.999, "AdamW beta2.")
    adam_epsilon: float = flag(1e-8, "AdamW epsilon.")
    max_grad_norm: float = flag(1.0, "Clip the global gradient norm to this (0 disables clipping).")
    mixed_precision: str | None = flag(
        None, "Mixed precision: no, fp16 (with a gradient scaler) or bf16 (Ampere or newer). "
        "Default: what `accelerate launch` was configured with, else no.", ("no", "fp16", "bf16"))
    max_nonfinite_steps: int = flag(
        10, "Stop (with the newest checkpoint from before) after this many consecutive steps whose "
        "gradients were NaN or infinite; each such step's update is skipped and counted "
        "(skipped_steps), so an isolated one does no harm.")
    seed: int = flag(42, "Seed for initialization, data order and dropout.")
    deterministic: bool = flag(
        False, "Only deterministic kernels (torch.use_deterministic_algorithms): two runs with the same "
        "flags then agree bit for bit also with several CPU threads or on a GPU. Without it the "
        "embedding backward (several CPU threads) and atomic adds (GPU) vary in the last bits.")
    logging_steps: int = flag(25, "Print and record training metrics every N optimizer steps.")
    report_to: str = flag("tensorboard", "Experiment tracker.", ("tensorboard", "none"))
    log_sample_ids: bool = flag(
        False, "Write the ids of the clips of every optimizer step to output_dir/samples.jsonl "
        "(to audit the data order, e.g. across a resume).")


@dataclass
class EvalConfig:
    """Autoregressive evaluation (WER)."""

    eval_steps: int = flag(1000, "Evaluate every N optimizer steps (and always at the end). 0: only at the end.")
    eval_at_start: bool = flag(False, "Also evaluate before the first step (WER before fine-tuning).")
    per_device_eval_batch_size: int = flag(32, "Clips per process per generation batch.")
    generation_max_length: int = flag(
        225, "Most tokens generated per clip after the language/task prompt (what "
        "transformers' Whisper generate calls max_length; the 2022 event used 225).")
    num_beams: int = flag(1, "Beam width (1 = greedy).")
    eval_normalizer: str = flag(
        "belarusian", "Text normalizer for WER/CER: 'belarusian' keeps apostrophes inside "
        "words; 'basic' is Whisper's BasicTextNormalizer (leaderboard-comparable).",
        ("belarusian", "basic"))


@dataclass
class CheckpointConfig:
    """Checkpoints, resume and the best model."""

    save_steps: int = flag(1000, "Write checkpoint-N every N optimizer steps (and at the end). 0: only at the end.")
    save_total_limit: int | None = flag(
        None, "Keep only the N newest checkpoints (the best one is never deleted).")
    resume_from: str | None = flag(
        None, "Continue a run: 'latest', a checkpoint name inside --output_dir "
        "(checkpoint-N), or a path.")
    metric_for_best_model: str = flag("eval_wer", "Metric that picks the best checkpoint.")
    greater_is_better: bool = flag(False, "Whether a larger --metric_for_best_model is better.")
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
class TrainConfig:
    """Everything ``train_loop.main`` needs, grouped as in ``--help``."""

    source: SourceConfig = field(default_factory=SourceConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_flat_dict(self) -> dict[str, Any]:
        """All flags as one flat mapping (the form of a YAML recipe)."""
        return {k: v for section in dataclasses.fields(self)
                for k, v in dataclasses.asdict(getattr(self, section.name)).items()}


# --------------------------------------------------------------------------------------------
# Flags from dataclasses
# --------------------------------------------------------------------------------------------


def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _field_type(f: dataclasses.Field) -> type:
    """The scalar type behind annotations like 'int | None' (annotations are strings here)."""
    name = str(f.type).replace(" ", "").replace("|None", "")
    return {"str": str, "int": int, "float": float, "bool": bool}[name]


def _optional_type(scalar: type, optional: bool):
    """Parse 'none'/'null' as None for optional flags, so a recipe default can be cleared."""
    if scalar is bool:
        return str2bool

    def parse(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        return scalar(text)

    parse.__name__ = scalar.__name__  # argparse names the type in its error messages
    return parse


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, title: str | None = None) -> None:
    """One ``--name`` flag per field of ``cls``; booleans accept ``--flag``, ``--flag true|false``."""
    group = parser.add_argument_group(title or cls.__name__, (cls.__doc__ or "").strip())
    for f in dataclasses.fields(cls):
        scalar = _field_type(f)
        optional = "None" in str(f.type)
        # Defaults live on the dataclass; argparse only records what the user typed.
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        if scalar is bool:
            kwargs.update(nargs="?", const=True, type=str2bool, metavar="true|false")
        else:
            kwargs.update(type=_optional_type(scalar, optional), metavar=scalar.__name__.upper())
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
            kwargs.pop("metavar")
        group.add_argument(f"--{f.name}", **kwargs)


class FlagParser(argparse.ArgumentParser):
    """argparse that names the closest known flag when a flag is misspelled."""

    def error(self, message: str):  # pragma: no cover - exercised through main()
        if "unrecognized arguments" in message:
            unknown = message.split(":", 1)[1].split()
            known = [a for action in self._actions for a in action.option_strings]
            flags = [arg for arg in unknown if arg.startswith("-")]
            if not flags:  # a stray value, e.g. a flag given two values
                raise UserError(f"unexpected argument {' '.join(unknown)}; flags take the form --name value")
            hints = []
            for arg in flags:
                close = difflib.get_close_matches(arg.split("=")[0], known, n=1)
                hints.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
            message = f"unknown flag {', '.join(hints)}; see --help for every flag"
        raise UserError(message)


def build_parser(sections: dict[str, type], prog: str, description: str) -> FlagParser:
    # No abbreviations: a truncated flag in a week-long run's command must fail, not guess.
    parser = FlagParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("--config", metavar="RECIPE.yaml", default=argparse.SUPPRESS,
                        help="YAML file with any of these flags; command-line flags override it.")
    for name, cls in sections.items():
        add_dataclass_flags(parser, cls, title=f"{name}: {(cls.__doc__ or '').strip()}")
    return parser


def load_recipe(path: str, known: set[str]) -> dict[str, Any]:
    """Read a YAML recipe; every key must be a known flag."""
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"--config {path}: no such file")
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except yaml.YAMLError as err:
        raise UserError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: expected a mapping of flag names to values")
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"--config {path}: unknown key '{key}'{hint}")
    return values


def parse_sections(sections: dict[str, type], argv: Sequence[str] | None, prog: str,
                   description: str) -> dict[str, Any]:
    """Defaults < YAML recipe < command line, returned as one instance per section."""
    parser = build_parser(sections, prog, description)
    cli = vars(parser.parse_args(list(sys.argv[1:] if argv is None else argv)))
    fields_by_name = {f.name: (name, f) for name, cls in sections.items()
                      for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if "config" in cli:
        recipe = load_recipe(cli.pop("config"), set(fields_by_name))
        for key, value in recipe.items():
            values[key] = _coerce(key, value, fields_by_name[key][1], source=f"recipe key '{key}'")
    values.update(cli)
    built = {}
    for name, cls in sections.items():
        own = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
        built[name] = cls(**own)
    return built


def _coerce(key: str, value: Any, f: dataclasses.Field, source: str) -> Any:
    """Check a YAML value against the field's type (YAML already parsed numbers and booleans)."""
    if value is None:
        return None
    scalar = _field_type(f)
    try:
        if scalar is bool:
            value = str2bool(value if isinstance(value, (bool, str)) else str(value))
        elif scalar is float and isinstance(value, (int, float, str)):
            value = float(value)
        elif scalar is int and (isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())):
            value = int(value)
        elif scalar is str:
            value = str(value)
        else:
            raise ValueError
    except (ValueError, argparse.ArgumentTypeError):
        raise UserError(f"{source}: expected {scalar.__name__}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise UserError(f"{source}: {value!r} is not one of {', '.join(choices)}")
    return value


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
    """Cross-flag checks that argparse cannot do; each names the flag and the fix."""
    src, tr, ev, ck, flt, data = (config.source, config.training, config.eval, config.checkpoint,
                                  config.filters, config.data)
    if not tr.output_dir:
        raise UserError("--output_dir is required (checkpoints, logs and the final model go there)")
    if bool(src.dataset_name) == bool(src.data_dir):
        raise UserError("give exactly one data source: --dataset_name (Hub) or --data_dir (local folder)")
    if tr.overwrite_output_dir and ck.resume_from:
        raise UserError("--overwrite_output_dir deletes the run that --resume_from would continue; give one")
    if src.streaming and tr.max_steps <= 0:
        raise UserError("--streaming needs --max_steps: the length of a stream is not known in advance")
    positive = {"per_device_train_batch_size": tr.per_device_train_batch_size,
                "gradient_accumulation_steps": tr.gradient_accumulation_steps,
                "per_device_eval_batch_size": ev.per_device_eval_batch_size,
                "logging_steps": tr.logging_steps, "num_beams": ev.num_beams,
                "max_nonfinite_steps": tr.max_nonfinite_steps,
                "preprocessing_num_workers": src.preprocessing_num_workers,
                "shuffle_buffer_size": data.shuffle_buffer_size}
    for name, value in positive.items():
        if value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    for name, value in {"eval_steps": ev.eval_steps, "save_steps": ck.save_steps,
                        "warmup_steps": tr.warmup_steps,
                        "dataloader_num_workers": data.dataloader_num_workers}.items():
        if value is not None and value < 0:
            raise UserError(f"--{name} must be 0 or more, got {value}")
    if tr.max_steps == 0 or tr.max_steps < -1:
        raise UserError(f"--max_steps must be positive, or -1 to train --num_train_epochs; got {tr.max_steps}")
    if tr.max_steps == -1 and not tr.num_train_epochs > 0:
        raise UserError(f"--num_train_epochs must be positive (or give --max_steps), got {tr.num_train_epochs}")
    for name, value in {"max_train_samples": data.max_train_samples,
                        "max_eval_samples": data.max_eval_samples}.items():
        if value is not None and value < 1:
            raise UserError(f"--{name} must be at least 1 (or none for every clip), got {value}")
    if tr.learning_rate <= 0:
        raise UserError(f"--learning_rate must be positive, got {tr.learning_rate}")
    for name, value in {"weight_decay": tr.weight_decay, "max_grad_norm": tr.max_grad_norm}.items():
        if value < 0:
            raise UserError(f"--{name} must be 0 or more, got {value}")
    for name, value in {"adam_beta1": tr.adam_beta1, "adam_beta2": tr.adam_beta2}.items():
        if not 0 <= value < 1:
            raise UserError(f"--{name} must be in [0, 1), got {value}")
    if tr.adam_epsilon <= 0:
        raise UserError(f"--adam_epsilon must be positive, got {tr.adam_epsilon}")
    model = config.model
    for name, value in {"mask_time_prob": model.mask_time_prob, "mask_feature_prob": model.mask_feature_prob}.items():
        if not 0 <= value <= 1:
            raise UserError(f"--{name} is a fraction between 0 and 1, got {value}")
    for name, value in {"mask_time_length": model.mask_time_length,
                        "mask_feature_length": model.mask_feature_length}.items():
        if value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    if model.mask_time_min_masks < 0:
        raise UserError(f"--mask_time_min_masks must be 0 or more, got {model.mask_time_min_masks}")
    if not 0 <= tr.min_learning_rate <= tr.learning_rate:
        raise UserError("--min_learning_rate must be between 0 and --learning_rate")
    if tr.max_steps > 0 and tr.warmup_steps > tr.max_steps:
        raise UserError(f"--warmup_steps {tr.warmup_steps} is longer than --max_steps {tr.max_steps}")
    if not 0 <= flt.min_duration_in_seconds < flt.max_duration_in_seconds:
        raise UserError("--min_duration_in_seconds must be >= 0 and below --max_duration_in_seconds")
    if flt.max_duration_in_seconds > 30:
        raise UserError("--max_duration_in_seconds cannot exceed 30: Whisper sees a 30 s window, "
                        "longer audio would be cut while its transcript stays whole")
    if ck.save_total_limit is not None and ck.save_total_limit < 1:
        raise UserError("--save_total_limit must be at least 1 (or none to keep every checkpoint)")
    if ck.metric_for_best_model and not ck.metric_for_best_model.startswith("eval_"):
        raise UserError(f"--metric_for_best_model {ck.metric_for_best_model}: use an evaluation "
                        "metric such as eval_wer, eval_cer or eval_wer_raw")
    if not 1 <= ev.generation_max_length <= 444:
        raise UserError("--generation_max_length must be between 1 and 444 (Whisper's decoder holds "
                        "448 positions, 4 of them taken by the prompt)")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "whisper-train-loop")
