"""Run configuration: plain dataclasses, turned into command-line flags and YAML recipes.

Every field is one flag (``--field_name``) with its help text and default shown in ``--help``,
parsed by transformers' ``HfArgumentParser`` (types, optionals, lists and booleans from the
annotations). A YAML recipe (``--config recipe.yaml``) may set any of the same names; flags given
on the command line override the file, which overrides the defaults. Choices that name an
implementation (schedules, optimizers, normalizers, trackers) are read from the registry that
holds the implementations, so adding one is one entry there.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from typing import Any, Sequence

from transformers.hf_argparser import HfArgumentParser, string_to_bool

from .errors import UserError
from .metrics import ERROR_RATES
from .optim import OPTIMIZERS
from .schedule import DECAYS
from .text import NORMALIZERS
from .trackers import TRACKERS, missing_packages


def flag(default: Any, help: str, choices: Sequence[str] | None = None):
    """A field with its --help text; ``metadata`` goes to argparse's add_argument as is."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return field(default=default, metadata=metadata)


# The flags that name a data source (train_loop.sources.SOURCES has a loader for each).
SOURCE_FLAGS = ("dataset_name", "data_dir")


# --------------------------------------------------------------------------------------------
# Sections. Field names are unique across sections: each is a flag and a YAML key.
# --------------------------------------------------------------------------------------------


@dataclass
class SourceConfig:
    """Where the speech comes from."""
    _argument_group_name = "Where the speech comes from (source)"

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

    def kind(self) -> str:
        """The one data source given (a key of SOURCE_FLAGS); the only place this is checked."""
        given = [name for name in SOURCE_FLAGS if getattr(self, name)]
        if len(given) != 1:
            raise UserError("give exactly one data source: "
                            + " or ".join(f"--{name}" for name in SOURCE_FLAGS)
                            + (f" (got {' and '.join('--' + name for name in given)})" if given else ""))
        return given[0]


@dataclass
class FilterConfig:
    """Which clips are used; every dropped clip is counted and reported."""
    _argument_group_name = "Which clips are used; every dropped clip is counted and reported (filters)"

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
    _argument_group_name = "Splits, text preparation and data loading (data)"

    train_split_name: str = flag("train", "Training split; join several with '+' to concatenate.")
    eval_split_name: str = flag(
        "validation", "Split(s) evaluated during training: a comma separates sets, each with its "
        "own WER (eval_<set>_wer; eval_wer is the first set's), '+' concatenates splits into one "
        "set. 'none' disables.")
    test_split_name: str = flag(
        "test", "Split evaluated once at the end with the final model. 'none' disables; a "
        "missing default split is skipped with a note.")
    max_train_samples: int | None = flag(None, "Use only the first N training clips (debugging).")
    max_eval_samples: int | None = flag(
        None, "Evaluate on the first N clips of the eval split during training (a fast, fixed "
        "subset); the final test evaluation always uses the whole test split.")
    shuffle_buffer_size: int = flag(
        500, "Streaming only: rows held in the shuffle buffer (reshuffled every epoch).")
    prepare_only: bool = flag(
        False, "Prepare the features of every split into --cache_dir and exit (e.g. once on shared "
        "storage before a multi-node run, with many --preprocessing_num_workers).")
    group_by_length: bool = flag(
        False, "Prepared data: batch clips of similar transcript length together (groups of 50 "
        "batches sorted by label length, batches shuffled), so the decoder pads less. The order "
        "stays a pure function of --seed and the epoch, and resumes exactly.")
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
    _argument_group_name = "Which Whisper to fine-tune and how (model)"

    model_name_or_path: str = flag(
        "openai/whisper-small", "Model to fine-tune: a Hub id or a local folder "
        "(save_pretrained format, e.g. a previous run's output_dir).")
    language: str = flag("be", "Language token forced in labels and generation (code or name).")
    language_token_from: str | None = flag(
        None, "For a language Whisper does not know: reuse this known language's token for --language "
        "(e.g. --language xx --language_token_from uk). Saved in generation_config.json "
        "(trained_language), so evaluate, transcribe and export accept --language xx afterwards.")
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

    def token_language(self) -> str:
        """The language whose token prefixes the labels and is forced in generation."""
        return self.language_token_from or self.language


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
        -1, "Optimizer steps to train. -1: derive from --num_train_epochs (prepared data only).")
    num_train_epochs: float = flag(3.0, "Epochs to train when --max_steps is -1.")
    per_device_train_batch_size: int = flag(16, "Clips per process per micro-batch.")
    gradient_accumulation_steps: int = flag(1, "Micro-batches per optimizer step.")
    learning_rate: float = flag(1e-5, "Peak learning rate, reached exactly at the end of warmup.")
    warmup_steps: int = flag(0, "Linear warmup steps from 0 to --learning_rate.")
    lr_scheduler_type: str = flag(
        "linear", "Learning-rate decay after warmup.", DECAYS)
    min_learning_rate: float = flag(0.0, "Learning rate the linear/cosine decay ends at.")
    optim: str = flag(
        "adamw_fused", "Optimizer: adamw_fused (AdamW in one fused kernel, as transformers' "
        "default; ~10%% faster steps on CPU here), adamw (the multi-tensor kernel), adamw_8bit "
        "(8-bit states via bitsandbytes, CUDA only; saves memory) or adafactor (factored "
        "second moments; least memory).", OPTIMIZERS)
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
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], metadata={
        "help": "Experiment trackers, one or several (metrics.jsonl and stdout always get every number).",
        "choices": tuple(TRACKERS)})
    ema_decay: float | None = flag(
        None, "Keep an exponential moving average of the weights with this decay (e.g. 0.999): "
        "saved in every checkpoint, resumed exactly, written to output_dir/ema at the end.")
    eval_with_ema: bool = flag(
        False, "With --ema_decay: evaluate the averaged weights (so the best checkpoint is chosen "
        "by them) and save them as the final model.")
    ddp_timeout: int = flag(
        7200, "Seconds a process waits for the others at a synchronization point before the run "
        "fails (torch.distributed's timeout). The first start of a multi-GPU run prepares the "
        "features on one process per node while the others wait at such a point: see the "
        "README's 'Preparing the data' for how long that takes.")
    log_sample_ids: bool = flag(
        False, "Write the ids of the clips of every optimizer step to output_dir/samples.jsonl "
        "(to audit the data order, e.g. across a resume).")


@dataclass
class EvalConfig:
    """Autoregressive evaluation (WER)."""
    _argument_group_name = "Autoregressive evaluation (WER) (eval)"

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
        NORMALIZERS)
    guard_data_dir: str | None = flag(
        None, "Forgetting guard: a local dataset (audiofolder or Common Voice release) in another "
        "language, transcribed at every evaluation in --guard_language and logged as eval_guard_wer "
        "etc., to see what fine-tuning costs the languages Whisper already knew.")
    guard_language: str = flag("en", "Language of --guard_data_dir (forced in its generation).")
    guard_split_name: str = flag("validation", "Split of --guard_data_dir to transcribe.")
    guard_max_samples: int | None = flag(None, "Transcribe only the first N clips of the guard set.")
    guard_normalizer: str = flag("basic", "Text normalizer for the guard set's WER.", NORMALIZERS)


@dataclass
class LoraConfig:
    """LoRA adapters (PEFT): see train_loop/lora.py."""
    _argument_group_name = "LoRA adapters (lora)"

    use_lora: bool = flag(
        False, "Train LoRA adapters instead of the whole model (PEFT): checkpoints hold only the "
        "adapters; the final model is merged into a plain Whisper folder (see --lora_merge).")
    lora_r: int = flag(32, "Rank of the adapters.")
    lora_alpha: int = flag(64, "LoRA scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = flag(0.05, "Dropout on the adapters' input.")
    lora_target_modules: str = flag(
        "q_proj,v_proj", "Comma-separated names of the linear layers that get adapters (Whisper's: "
        "q_proj, k_proj, v_proj, out_proj, fc1, fc2).")
    lora_merge: bool = flag(
        True, "Merge the adapters into the final model (a plain Whisper folder). false: save PEFT's "
        "adapter folder instead (load with PeftModel.from_pretrained(base, output_dir)).")


@dataclass
class EvalSpeedConfig:
    """How evaluation generates: switches measured by ``python -m train_loop.bench`` and
    ``scripts/gpu_check.sh``; none changes a transcript."""
    _argument_group_name = "Evaluation speed (speed)"

    eval_encoder_batch_size: int | None = flag(
        None, "Run the encoder on sub-batches of N clips and decode the whole batch together. "
        "Default on CPU: as many clips as keep one encoder activation within 6.5 MB (measured faster: "
        "it stays in cache); on GPU the whole batch. 0: the whole batch.")
    eval_static_cache: bool = flag(
        False, "Generate with a static KV cache (transformers' cache_implementation='static'); on "
        "GPU transformers then compiles the decoding step with torch.compile (see "
        "--eval_compile). Off by default: measured slower on CPU with the 30 s window.")
    eval_compile: bool = flag(
        True, "With --eval_static_cache on GPU: let transformers torch.compile the decoding step "
        "(false: generation_config.disable_compile). Compiling takes a while once per batch shape.")


@dataclass
class CheckpointConfig:
    """Checkpoints, resume and the best model."""
    _argument_group_name = "Checkpoints, resume and the best model (checkpoint)"

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
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
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


class FlagParser(HfArgumentParser):
    """HfArgumentParser whose errors are one line naming the flag (``UserError``), never an
    argparse usage dump; a misspelled flag gets the closest known one."""

    def error(self, message: str):
        # "argument --max_steps/--max-steps: ..." -> name the flag once, as it is documented
        raise UserError(re.sub(r"(--\w+)/--[\w-]+", r"\1", message))

    def unknown(self, leftovers: list[str]) -> UserError:
        flags = [arg for arg in leftovers if arg.startswith("-")]
        if not flags:  # a stray value, e.g. a flag given two values
            return UserError(f"unexpected argument {' '.join(leftovers)}; flags take the form --name value")
        known = [option for action in self._actions for option in action.option_strings]
        hints = []
        for arg in flags:
            close = difflib.get_close_matches(arg.split("=")[0], known, n=1)
            hints.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
        return UserError(f"unknown flag {', '.join(hints)}; see --help for every flag")


def build_parser(sections: dict[str, type], prog: str, description: str) -> FlagParser:
    # No abbreviations: a truncated flag in a week-long run's command must fail, not guess.
    parser = FlagParser(list(sections.values()), prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("--config", metavar="RECIPE.yaml", default=None,
                        help="YAML file with any of these flags; command-line flags override it.")
    optional = {name for cls in sections.values() for name, hint in typing.get_type_hints(cls).items()
                if type(None) in typing.get_args(hint)}
    for action in parser._actions:
        # 'none' / 'null' clears an optional flag (e.g. a recipe's --max_eval_samples).
        if action.dest in optional and action.type not in (None, string_to_bool):
            action.type = _none_or(action.type)
    return parser


def parse_sections(sections: dict[str, type], argv: Sequence[str] | None, prog: str,
                   description: str, positional: tuple[str, str] | None = None) -> dict[str, Any]:
    """Defaults < YAML recipe < command line, returned as one instance per section.
    ``positional`` (name, help): also take any number of positional arguments, returned under
    that name (e.g. the files to transcribe)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(sections, prog, description)
    if positional:
        parser.add_argument(positional[0], nargs="*", help=positional[1])
    recipe_path = _recipe_path(argv)
    recipe = recipe_flags(recipe_path, parser) if recipe_path else []
    # The recipe becomes flags in front of the command line's: argparse keeps the last value of
    # a flag, so the command line wins, and the recipe's values get the same type checks.
    *built, leftovers = parser.parse_args_into_dataclasses(recipe + argv, return_remaining_strings=True,
                                                          look_for_args_file=False)
    if leftovers:
        raise parser.unknown(leftovers)
    parsed = dict(zip(sections, built))  # the namespace of --config (and positionals) comes last
    if positional:
        parsed[positional[0]] = getattr(built[-1], positional[0])
    return parsed


def _recipe_path(argv: list[str]) -> str | None:
    for position, arg in enumerate(argv):
        if arg == "--config":
            if position + 1 == len(argv):
                raise UserError("--config needs a file: --config RECIPE.yaml")
            return argv[position + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def recipe_flags(path: str, parser: FlagParser) -> list[str]:
    """A YAML recipe as command-line flags; every key must be a flag, every value valid for it."""
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
    known = sorted({action.dest for action in parser._actions} - {"help", "config"})
    flags: list[str] = []
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"--config {path}: unknown key '{key}'{hint}")
        if isinstance(value, dict):
            raise UserError(f"--config {path}: key '{key}' holds a mapping; give a value")
        items = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *("none" if item is None else str(item).lower() if isinstance(item, bool)
                                else str(item) for item in items)]
    try:
        parser.parse_known_args(flags)
    except UserError as err:
        raise UserError(f"--config {path}: {err}") from None
    return flags


def _none_or(parse):
    def parse_optional(text: str):
        return None if text.lower() in ("none", "null") else parse(text)

    parse_optional.__name__ = getattr(parse, "__name__", "value")  # argparse names it in errors
    return parse_optional


TRAIN_SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)}



def parse_train_config(argv: Sequence[str] | None = None) -> TrainConfig:
    sections = parse_sections(
        TRAIN_SECTIONS, argv, prog="train_loop.main",
        description="Fine-tune Whisper with a hand-written Accelerate loop. Launch with "
        "`accelerate launch train_loop/main.py ...` or `python -m train_loop.main ...`.")
    config = TrainConfig(**sections)
    validate_train_config(config)
    return config


def eval_split_sets(eval_split_name: str) -> list[str]:
    """--eval_split_name's sets: 'validation,test' -> ['validation', 'test']; 'none' -> []."""
    if eval_split_name.strip().lower() == "none":
        return []
    return [part.strip() for part in eval_split_name.split(",") if part.strip()]


def metric_name(split: str) -> str:
    """The part of a metric key that names a set: 'dev+test' -> 'dev_test'."""
    return re.sub(r"[^0-9A-Za-z]+", "_", split).strip("_") or "set"


def eval_set_names(data, eval_config) -> list[str]:
    """The metric names of every evaluation set, in order (the guard last)."""
    names = [metric_name(split) for split in eval_split_sets(data.eval_split_name)]
    return names + (["guard"] if eval_config.guard_data_dir else [])


def validate_train_config(config: TrainConfig) -> None:
    """Cross-flag checks that argparse cannot do; each names the flag and the fix."""
    src, tr, ev, ck, flt, data = (config.source, config.training, config.eval, config.checkpoint,
                                  config.filters, config.data)
    if not tr.output_dir:
        raise UserError("--output_dir is required (checkpoints, logs and the final model go there)")
    src.kind()
    missing = missing_packages(tr.report_to)
    if missing:
        raise UserError("; ".join(f"--report_to {name}: {package} is not installed (pip install {package})"
                                  for name, package in missing))
    if "none" in tr.report_to and len(tr.report_to) > 1:
        raise UserError(f"--report_to {' '.join(tr.report_to)}: 'none' cannot be combined with a tracker")
    if tr.overwrite_output_dir and ck.resume_from:
        raise UserError("--overwrite_output_dir deletes the run that --resume_from would continue; give one")
    if src.streaming and tr.max_steps <= 0:
        raise UserError("--streaming needs --max_steps: the length of a stream is not known in advance")
    if tr.ema_decay is not None and not 0 <= tr.ema_decay < 1:
        raise UserError(f"--ema_decay must be in [0, 1) (e.g. 0.999), got {tr.ema_decay}")
    if tr.eval_with_ema and tr.ema_decay is None:
        raise UserError("--eval_with_ema needs --ema_decay (the average to evaluate); add it")
    lora = config.lora
    if not lora.use_lora and lora != LoraConfig():
        raise UserError("--lora_r, --lora_alpha, --lora_dropout, --lora_target_modules and --lora_merge "
                        "take effect with --use_lora; add it")
    if lora.use_lora and (lora.lora_r < 1 or not 0 <= lora.lora_dropout < 1):
        raise UserError(f"--lora_r must be at least 1 and --lora_dropout in [0, 1); got {lora.lora_r}, "
                        f"{lora.lora_dropout}")
    if src.streaming and data.prepare_only:
        raise UserError("--prepare_only with --streaming: a stream is decoded as it is read, so there "
                        "is nothing to prepare; drop one of the two")
    if src.streaming and data.group_by_length:
        raise UserError("--group_by_length needs prepared data: a stream's lengths are not known in "
                        "advance; drop --streaming or --group_by_length")
    positive = {"per_device_train_batch_size": tr.per_device_train_batch_size,
                "gradient_accumulation_steps": tr.gradient_accumulation_steps,
                "per_device_eval_batch_size": ev.per_device_eval_batch_size,
                "logging_steps": tr.logging_steps, "num_beams": ev.num_beams,
                "max_nonfinite_steps": tr.max_nonfinite_steps,
                "preprocessing_num_workers": src.preprocessing_num_workers,
                "shuffle_buffer_size": data.shuffle_buffer_size, "ddp_timeout": tr.ddp_timeout}
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
    names = eval_set_names(data, ev)
    best_metrics = [f"eval_{name}" for name in ERROR_RATES]
    if len(names) > 1:
        best_metrics += [f"eval_{set_name}_{name}" for set_name in names for name in ERROR_RATES]
    if ck.metric_for_best_model not in best_metrics:
        raise UserError(f"--metric_for_best_model {ck.metric_for_best_model}: not a quality metric of the "
                        f"evaluation; use one of {', '.join(best_metrics)}")
    if len(set(names)) != len(names):
        raise UserError(f"--eval_split_name {data.eval_split_name}: a set is named twice ({', '.join(names)})")
    if ev.guard_max_samples is not None and ev.guard_max_samples < 1:
        raise UserError(f"--guard_max_samples must be at least 1 (or none), got {ev.guard_max_samples}")
    if ck.greater_is_better:
        raise UserError(f"--greater_is_better: {ck.metric_for_best_model} is an error rate, better when "
                        "lower; leave the flag out")
    hub = config.hub
    if (hub.hub_model_id or hub.hub_private or hub.hub_push_checkpoints) and not hub.push_to_hub:
        raise UserError("--hub_model_id, --hub_private and --hub_push_checkpoints take effect with --push_to_hub; add it")
    if hub.push_to_hub and not hub.hub_model_id:
        raise UserError("--push_to_hub needs --hub_model_id USER/NAME (the repository to upload to)")
    if hub.hub_model_id and hub.hub_model_id.count("/") != 1:
        raise UserError(f"--hub_model_id {hub.hub_model_id}: expected USER/NAME (or ORGANIZATION/NAME)")
    evaluating = data.eval_split_name.lower() != "none"
    if ck.load_best_model_at_end and not evaluating:
        raise UserError("--load_best_model_at_end needs evaluations to pick the best checkpoint, but "
                        "--eval_split_name is none; name an evaluation split or leave the flag out")
    if not 1 <= ev.generation_max_length <= 444:
        raise UserError("--generation_max_length must be between 1 and 444 (Whisper's decoder holds "
                        "448 positions, 4 of them taken by the prompt)")


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "whisper-train-loop")
