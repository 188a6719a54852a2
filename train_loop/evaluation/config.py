"""The evaluation sections of the flags. ``DecodingConfig``, ``ScoringConfig`` and
``EvalSpeedConfig`` are shared: training's evaluations, ``evaluate``, ``transcribe``, ``export``'s
parity check and the app read the same flags with the same defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.flags import at_least, between, flag, positive
from ..core.text import NORMALIZERS

# Whisper's decoder holds 448 positions; the prompt takes 4 (start, language, task, notimestamps).
MAX_GENERATED_TOKENS = 444


@dataclass
class SavedModelConfig:
    """A saved model for the tools to run, and its language and task (training sets these in its
    own model section)."""
    _argument_group_name = "The model (model)"

    model: str | None = flag(None, "Model folder (a run's output_dir, a checkpoint-N, any transformers Whisper "
                             "folder) or Hub id.", aliases=["--model_name_or_path"])
    language: str | None = flag(
        None, "Language to decode (code or name). Default: the one the model was fine-tuned for (its "
        "generation config). A model trained with --language_token_from also answers to its own code.")
    task: str = flag("transcribe", "Whisper task.", ("transcribe", "translate"))


@dataclass
class DecodingConfig:
    """How every command decodes."""
    _argument_group_name = "Decoding (decoding)"

    generation_max_length: int = flag(
        225, "Most tokens generated per clip (per 30 s window in long-form) after the prompt (what "
        "transformers' Whisper generate calls max_length; the 2022 event used 225, OpenAI's "
        "decoder 224). The cap also ends a repetition loop.", check=between(1, MAX_GENERATED_TOKENS))
    num_beams: int = flag(1, "Beam width (1 = greedy).", check=at_least(1))


@dataclass
class ScoringConfig:
    """How transcripts are scored."""
    _argument_group_name = "Scoring (scoring)"

    eval_normalizer: str = flag(
        "belarusian", "Text normalizer for WER/CER: 'belarusian' keeps apostrophes inside "
        "words; 'basic' is Whisper's BasicTextNormalizer (leaderboard-comparable).",
        NORMALIZERS)


@dataclass
class EvalSpeedConfig:
    """How evaluation batches and generates: switches measured by ``python -m train_loop.bench``
    and ``scripts/gpu_check.sh``; none changes a transcript."""
    _argument_group_name = "Evaluation speed (speed)"

    per_device_eval_batch_size: int = flag(32, "Clips per process per generation batch.", check=at_least(1))
    eval_encoder_batch_size: int | None = flag(
        None, "Run the encoder on sub-batches of N clips and decode the whole batch together. "
        "Default on CPU: as many clips as keep one encoder activation within 6.5 MB (measured faster: "
        "it stays in cache); on GPU the whole batch. 0: the whole batch.", check=at_least(0))
    eval_static_cache: bool = flag(
        False, "Generate with a static KV cache (transformers' cache_implementation='static'); on "
        "GPU transformers then compiles the decoding step with torch.compile (see "
        "--eval_compile). Off by default: measured slower on CPU with the 30 s window.")
    eval_compile: bool = flag(
        True, "With --eval_static_cache on GPU: let transformers torch.compile the decoding step "
        "(false: generation_config.disable_compile). Compiling takes a while once per batch shape.")


@dataclass
class EvalConfig:
    """When training evaluates, and the forgetting guard."""
    _argument_group_name = "Evaluation during training (eval)"

    eval_steps: int = flag(1000, "Evaluate every N optimizer steps (and always at the end). 0: only at the end.",
                           check=at_least(0))
    eval_at_start: bool = flag(False, "Also evaluate before the first step (WER before fine-tuning).")
    guard_data_dir: str | None = flag(
        None, "Forgetting guard: a local dataset (audiofolder or Common Voice release) in another "
        "language, transcribed at every evaluation in --guard_language and logged as eval_guard_wer "
        "etc., to see what fine-tuning costs the languages Whisper already knew.")
    guard_language: str = flag("en", "Language of --guard_data_dir (forced in its generation).")
    guard_split_name: str = flag("validation", "Split of --guard_data_dir to transcribe.")
    guard_max_samples: int | None = flag(None, "Transcribe only the first N clips of the guard set.",
                                         check=at_least(1))
    guard_normalizer: str = flag("basic", "Text normalizer for the guard set's WER.", NORMALIZERS)
    eval_long_form: bool = flag(
        False, "Also evaluate on long recordings (eval_longform_wer, _cer, _loop_rate, _timestamp_error_s): "
        "the first evaluation split's clips joined per speaker with short pauses into recordings of "
        "--long_form_minutes, decoded with Whisper's sequential long-form algorithm as "
        "train_loop.transcribe does.")
    long_form_minutes: float = flag(2.0, "Length of each long-form recording built from clips.",
                                    check=positive())
    long_form_recordings: int = flag(10, "Long-form recordings evaluated at most.", check=at_least(1))
    long_form_data_dir: str | None = flag(
        None, "Evaluate long-form on real long recordings instead: a folder with metadata.csv "
        "(file_name and the --text_column_name transcript) beside the audio files.")


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
    return (names + (["guard"] if eval_config.guard_data_dir else [])
            + (["longform"] if eval_config.eval_long_form else []))
