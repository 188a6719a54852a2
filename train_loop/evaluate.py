"""Evaluate any saved model or checkpoint on any split: WER table + per-clip predictions.

    python -m train_loop.evaluate --model runs/small-be --data_dir cv-corpus-11.0-2022-09-21/be --split test
    python -m train_loop.evaluate --model runs/small-be/checkpoint-6000 \\
        --dataset_name USER/DATASET --dataset_config_name be --split test
    accelerate launch -m train_loop.evaluate ...     # several GPUs: each transcribes a share

Writes ``<output_dir>/eval/<split>-predictions.jsonl`` (raw and normalized reference and
prediction per clip, with its word errors) and ``<split>-results.json``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from .config import DataConfig, EvalSpeedConfig, ModelConfig, SourceConfig, flag, parse_sections
from .errors import UserError, run_tool
from .text import NORMALIZERS


@dataclass
class EvaluateConfig:
    """What to evaluate and how."""

    _argument_group_name = "What to evaluate and how (evaluate)"

    model: str | None = flag(None, "Model folder (a run's output_dir or a checkpoint-N) or Hub id.")
    split: str = flag("test", "Split to evaluate ('+' concatenates).")
    max_samples: int | None = flag(None, "Evaluate only the first N clips.")
    per_device_eval_batch_size: int = flag(32, "Clips per process per generation batch.")
    generation_max_length: int = flag(225, "Most tokens generated per clip after the prompt.")
    num_beams: int = flag(1, "Beam width (1 = greedy).")
    eval_normalizer: str = flag("belarusian", "Normalizer for WER/CER.", NORMALIZERS)
    language: str | None = flag(
        None, "Language forced in generation (default: the model's generation config, else be). A "
        "model trained with --language_token_from also answers to its own language code.")
    task: str = flag("transcribe", "Whisper task.", ("transcribe", "translate"))
    mixed_precision: str | None = flag(
        None, "Generate under autocast in this precision (default: the accelerate config, else no).",
        ("no", "fp16", "bf16"))
    attn_implementation: str = flag("sdpa", "Attention kernel.", ("eager", "sdpa", "flash_attention_2"))
    dataloader_num_workers: int | None = flag(
        None, "DataLoader worker processes (default: 0 for prepared data on CPU, else up to 4).")
    output_dir: str | None = flag(
        None, "Where eval/<split>-predictions.jsonl goes (default: the model folder, or "
        "./eval-results for a Hub model).")


SECTIONS = {"evaluate": EvaluateConfig, "source": SourceConfig, "speed": EvalSpeedConfig}


def main(argv: list[str] | None = None) -> int:
    def body():
        sections = parse_sections(SECTIONS, argv, prog="train_loop.evaluate", description=__doc__.split("\n\n")[0])
        evaluate_model(sections["evaluate"], sections["source"], sections["speed"])

    return run_tool(body)


def evaluate_model(options: EvaluateConfig, source: SourceConfig, speed: EvalSpeedConfig | None = None) -> dict:
    import torch
    from accelerate import Accelerator

    from .data import build_eval_set
    from .distributed import reset_accelerator_settings
    from .evaluation import GenerationSettings, evaluate
    from .model import load_model, load_processor, model_language
    from .report import format_wer_table
    from .text import get_normalizer

    if not options.model:
        raise UserError("--model is required: a run's output_dir, a checkpoint-N folder or a Hub id")
    source.kind()
    output_dir = options.output_dir or (options.model if os.path.isdir(options.model) else "eval-results")
    reset_accelerator_settings()
    accelerator = Accelerator(mixed_precision=options.mixed_precision, cpu=not torch.cuda.is_available())
    language = model_language(options.model, options.language) or "be"
    processor = load_processor(options.model, language, options.task)
    model = accelerator.prepare(load_model(ModelConfig(
        model_name_or_path=options.model, language=language, task=options.task,
        attn_implementation=options.attn_implementation), processor))
    eval_set = build_eval_set(source, DataConfig(dataloader_num_workers=options.dataloader_num_workers),
                              processor, accelerator, options.split,
                              batch_size=options.per_device_eval_batch_size, max_samples=options.max_samples,
                              eval_normalizer=options.eval_normalizer)
    normalizer = get_normalizer(options.eval_normalizer)
    settings = GenerationSettings.from_config(language, options.task, options.generation_max_length,
                                              options.num_beams, speed or EvalSpeedConfig())
    predictions_path = os.path.join(output_dir, "eval", f"{options.split}-predictions.jsonl")
    result = evaluate(model, eval_set, processor.tokenizer, settings, accelerator, normalizer, predictions_path)
    if accelerator.is_main_process:
        if eval_set.report is not None:
            print(eval_set.report.summary())
        record = {"step": "-", "split": options.split,
                  **{f"eval_{k}": v for k, v in result.items()}}
        print(format_wer_table([record], options.eval_normalizer))
        print(f"{result['samples']} clips in {result['seconds']:.1f} s "
              f"({result['samples_per_second']:.1f} clips/s); predictions: {predictions_path}")
        with open(os.path.join(output_dir, "eval", f"{options.split}-results.json"), "w", encoding="utf-8") as handle:
            json.dump({"model": options.model, "split": options.split, **result}, handle, indent=2)
    return result


if __name__ == "__main__":
    sys.exit(main())
