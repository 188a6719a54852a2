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

from .core.console import run_tool
from .core.errors import UserError
from .core.flags import at_least, flag, parse_sections
from .core.model import ModelConfig
from .data.config import DataConfig, SourceConfig
from .evaluation.config import DecodingConfig, EvalSpeedConfig, SavedModelConfig, ScoringConfig


@dataclass
class EvaluateConfig:
    """What to evaluate and where the results go."""

    _argument_group_name = "What to evaluate and where (evaluate)"

    split: str = flag("test", "Split to evaluate ('+' concatenates).")
    max_samples: int | None = flag(None, "Evaluate only the first N clips.", check=at_least(1))
    mixed_precision: str | None = flag(
        None, "Generate under autocast in this precision (default: the accelerate config, else no).",
        ("no", "fp16", "bf16"))
    attn_implementation: str = flag("sdpa", "Attention kernel.", ("eager", "sdpa", "flash_attention_2"))
    dataloader_num_workers: int | None = flag(
        None, "DataLoader worker processes (default: 0 for prepared data on CPU, else up to 4).", check=at_least(0))
    output_dir: str | None = flag(
        None, "Where eval/<split>-predictions.jsonl goes (default: the model folder, or "
        "./eval-results for a Hub model).")


SECTIONS = {"evaluate": EvaluateConfig, "saved": SavedModelConfig, "decoding": DecodingConfig,
            "scoring": ScoringConfig, "speed": EvalSpeedConfig, "source": SourceConfig}


def main(argv: list[str] | None = None) -> int:
    def body():
        sections = parse_sections(SECTIONS, argv, prog="train_loop.evaluate", description=__doc__.split("\n\n")[0])
        evaluate_model(sections["evaluate"], sections["source"], sections["saved"], sections["decoding"],
                       sections["scoring"], sections["speed"])

    return run_tool(body)


def evaluate_model(options: EvaluateConfig, source: SourceConfig, saved: SavedModelConfig,
                   decoding: DecodingConfig | None = None, scoring: ScoringConfig | None = None,
                   speed: EvalSpeedConfig | None = None) -> dict:
    """Evaluate ``saved.model`` on ``options.split``; the sections left out take their defaults."""
    # Imported here, not at the top: `--help` answers before torch loads.
    import torch
    from accelerate import Accelerator

    from .core.model import load_model, load_processor, model_language, refuse_adapters_only
    from .core.processes import reset_accelerator_settings
    from .core.text import get_normalizer
    from .data.build import build_eval_set
    from .evaluation.generation import GenerationSettings, evaluate
    from .evaluation.report import format_wer_table

    decoding = decoding or DecodingConfig()
    scoring, speed = scoring or ScoringConfig(), speed or EvalSpeedConfig()
    if not saved.model:
        raise UserError("--model is required: a run's output_dir, a checkpoint-N folder or a Hub id")
    source.kind()
    output_dir = options.output_dir or (saved.model if os.path.isdir(saved.model) else "eval-results")
    reset_accelerator_settings()
    accelerator = Accelerator(mixed_precision=options.mixed_precision, cpu=not torch.cuda.is_available())
    refuse_adapters_only(saved.model, "--model")
    token_language = model_language(saved.model, saved.language) or "be"
    processor = load_processor(saved.model, token_language, saved.task)
    model = accelerator.prepare(load_model(ModelConfig(
        model_name_or_path=saved.model, language=token_language, task=saved.task,
        attn_implementation=options.attn_implementation), processor))
    eval_set = build_eval_set(source, DataConfig(dataloader_num_workers=options.dataloader_num_workers),
                              processor, accelerator, options.split,
                              batch_size=speed.per_device_eval_batch_size, max_samples=options.max_samples,
                              eval_normalizer=scoring.eval_normalizer)
    settings = GenerationSettings.from_config(token_language, saved.task, decoding.generation_max_length,
                                              decoding.num_beams, speed)
    predictions_path = os.path.join(output_dir, "eval", f"{options.split}-predictions.jsonl")
    result = evaluate(model, eval_set, processor.tokenizer, settings, accelerator,
                      get_normalizer(scoring.eval_normalizer), predictions_path)
    if accelerator.is_main_process:
        if eval_set.report is not None:
            print(eval_set.report.summary())
        record = {"step": "-", "split": options.split,
                  **{f"eval_{k}": v for k, v in result.items()}}
        print(format_wer_table([record], scoring.eval_normalizer))
        print(f"{result['samples']} clips in {result['seconds']:.1f} s "
              f"({result['samples_per_second']:.1f} clips/s); predictions: {predictions_path}")
        with open(os.path.join(output_dir, "eval", f"{options.split}-results.json"), "w", encoding="utf-8") as handle:
            json.dump({"model": saved.model, "split": options.split, **result}, handle, indent=2)
    return result


if __name__ == "__main__":
    sys.exit(main())
