"""Utterances or packed windows? Both recipes fine-tuned from one model for the same steps,
then scored on short clips and on long recordings built from held-out clips.

    python ../shared/fixtures/make_be_speech.py be-speech --train 2400 --validation 0 --test 120 \\
        --rich-metadata --noise --speakers 12
    python -m train_loop.bench.longform --model PATH --data_dir be-speech --output_json longform.json

Arms, each the ordinary training command (``python -m train_loop.main``) with the same model,
steps, batch size and learning rate:

* ``utterance``: today's default, one clip per example padded to the window, ``<|notimestamps|>``;
* ``packed``: ``--pack_to_window`` with timestamps, the previous text and windows without speech
  (the shares given by ``--timestamp_probability`` etc.).

``zero_shot`` is the model before training (the utterance arm's step-0 evaluation; both arms start
from the same weights). Each holds ``short_wer`` (the test clips one by one), ``longform_wer``,
``longform_loop_rate`` and ``longform_timestamp_error_s`` (recordings of ``--long_form_minutes``
built per speaker from the same test clips, decoded with Whisper's sequential long-form
algorithm), and, for the arms, ``train_audio_seconds_per_second``. The JSON is the last line
printed and, with ``--output_json``, a file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass

from ..core.console import run_tool
from ..core.flags import at_least, between, flag, parse_sections
from .arms import require_model_and_speech, train_arm

ARMS = ("utterance", "packed")


@dataclass
class LongFormBenchConfig:
    """The two arms' model, data and training."""

    _argument_group_name = "The long-form benchmark (bench.longform)"

    model: str | None = flag(None, "Whisper checkpoint folder (transformers format). Required.")
    data_dir: str | None = flag(
        None, "Speech in audiofolder layout with train/ and test/ (make_be_speech.py --rich-metadata: its "
        "client_id column names the speakers). Required.")
    output_json: str | None = flag(None, "Also write the JSON here.")
    work_dir: str | None = flag(None, "Where the two runs go (default: a new temporary folder).")
    max_steps: int = flag(100, "Optimizer steps of each arm.", check=at_least(1))
    batch_size: int = flag(8, "Examples per step (clips in one arm, windows in the other).", check=at_least(1))
    learning_rate: float = flag(1e-4, "Peak learning rate of both arms.")
    freeze_encoder: bool = flag(True, "Train the decoder only (on a CPU the encoder's backward would double "
                                      "every step).")
    mixed_precision: str = flag("no", "Mixed precision of both runs.", ("no", "bf16", "fp16"))
    max_eval_samples: int = flag(80, "Test clips scored one by one (short_wer).", check=at_least(1))
    long_form_minutes: float = flag(1.0, "Length of each long recording.")
    long_form_recordings: int = flag(6, "Long recordings scored.", check=at_least(1))
    timestamp_probability: float = flag(0.5, "Packed arm: share of windows with timestamps.", check=between(0, 1))
    prev_text_probability: float = flag(0.2, "Packed arm: share of windows with the previous text.",
                                        check=between(0, 1))
    no_speech_probability: float = flag(0.05, "Packed arm: share of windows without speech.", check=between(0, 0.9))
    speech_bounds: str = flag("silero", "Where each clip's speech is (packing and long-form truth).", ("silero", "file"))
    eval_batch_size: int = flag(16, "Clips per generation batch.", check=at_least(1))
    seed: int = flag(0, "Seed of both runs.")


def main(argv: list[str] | None = None) -> int:
    def body():
        args = parse_sections({"bench": LongFormBenchConfig}, argv, prog="train_loop.bench.longform",
                              description=__doc__.split("\n\n")[0])["bench"]
        return run_benchmark(args)

    return run_tool(body)


def run_benchmark(args: LongFormBenchConfig) -> int:
    require_model_and_speech(args.model, args.data_dir)
    work = args.work_dir or tempfile.mkdtemp(prefix="longform-")
    os.makedirs(work, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    summary: dict = {"model": os.path.basename(os.path.normpath(args.model)), "data_dir": args.data_dir,
                     "max_steps": args.max_steps, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                     "freeze_encoder": args.freeze_encoder, "mixed_precision": args.mixed_precision,
                     "timestamp_probability": args.timestamp_probability,
                     "prev_text_probability": args.prev_text_probability,
                     "no_speech_probability": args.no_speech_probability}
    for arm in ARMS:
        results = arm_run(args, arm, os.path.join(work, arm))
        evaluations = results["evaluations"]
        if arm == "utterance":
            summary["zero_shot"] = arm_numbers(evaluations, 0)
        summary[arm] = arm_numbers(evaluations, args.max_steps)
        summary[arm]["train_audio_seconds_per_second"] = results.get("train_audio_seconds_per_second")
        summary[arm]["train_audio_seconds"] = results.get("train_audio_seconds")
        summary[arm]["train_seconds"] = results.get("train_seconds")
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    print_table(summary)
    text = json.dumps(summary)
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(summary, indent=2) + "\n")
    print(text, flush=True)
    return 0


def arm_run(args: LongFormBenchConfig, arm: str, run_dir: str) -> dict:
    flags = {
        "model_name_or_path": args.model, "data_dir": args.data_dir, "output_dir": run_dir,
        "cache_dir": os.path.join(os.path.dirname(run_dir), "cache"), "language": "be",
        "max_steps": args.max_steps, "per_device_train_batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "warmup_steps": max(1, args.max_steps // 10),
        "freeze_encoder": str(args.freeze_encoder).lower(), "mixed_precision": args.mixed_precision,
        "eval_split_name": "test", "max_eval_samples": args.max_eval_samples,
        "eval_at_start": str(arm == "utterance").lower(), "eval_steps": 0, "test_split_name": "none",
        "eval_long_form": "true", "long_form_minutes": args.long_form_minutes,
        "long_form_recordings": args.long_form_recordings, "speech_bounds": args.speech_bounds,
        "per_device_eval_batch_size": args.eval_batch_size, "generation_max_length": 225,
        "logging_steps": 10, "save_steps": 0, "report_to": "none", "seed": args.seed,
        "preprocessing_num_workers": max(1, os.cpu_count() or 1),
    }
    if arm == "packed":
        flags.update(pack_to_window="true", timestamp_probability=args.timestamp_probability,
                     prev_text_probability=args.prev_text_probability,
                     no_speech_probability=args.no_speech_probability)
    return train_arm(arm, flags, run_dir)


def arm_numbers(evaluations: list[dict], step: int) -> dict:
    short = next(e for e in evaluations if e["step"] == step and e["split"] != "longform")
    long = next(e for e in evaluations if e["step"] == step and e["split"] == "longform")

    def rounded(value):
        return None if value is None else round(value, 3)

    return {"short_wer": rounded(short.get("eval_wer")), "short_cer": rounded(short.get("eval_cer")),
            "short_loop_rate": rounded(short.get("eval_loop_rate")),
            "longform_wer": rounded(long.get("eval_wer")), "longform_cer": rounded(long.get("eval_cer")),
            "longform_loop_rate": rounded(long.get("eval_loop_rate")),
            "longform_timestamp_error_s": rounded(long.get("eval_timestamp_error_s")),
            "longform_substitutions": long.get("eval_substitutions"), "longform_deletions": long.get("eval_deletions"),
            "longform_insertions": long.get("eval_insertions"), "longform_recordings": long.get("eval_samples"),
            "longform_audio_seconds": long.get("eval_audio_seconds")}


def print_table(s: dict) -> None:
    print(f"\n{s['model']}: {s['max_steps']} steps x batch {s['batch_size']}, lr {s['learning_rate']:g}, "
          f"freeze_encoder {s['freeze_encoder']}, precision {s['mixed_precision']}")
    columns = ("zero_shot", *ARMS)
    print(f"{'':<34} | " + " | ".join(f"{c:>10}" for c in columns))
    print("-" * (37 + 13 * len(columns)))

    def cell(value, fmt):
        return f"{'n/a':>10}" if value is None else f"{value:>10{fmt}}"

    for label, key, fmt in (("short-form WER %", "short_wer", ".2f"), ("long-form WER %", "longform_wer", ".2f"),
                            ("long-form recordings with loops %", "longform_loop_rate", ".1f"),
                            ("long-form timestamp error s", "longform_timestamp_error_s", ".2f"),
                            ("training: audio s per s", "train_audio_seconds_per_second", ".2f")):
        print(f"{label:<34} | " + " | ".join(cell(s[c].get(key), fmt) for c in columns))
    print(f"whole benchmark {s['wall_seconds']:.0f} s\n")


if __name__ == "__main__":
    sys.exit(main())
