"""The model card (README.md) of a run's output folder and of every checkpoint.

The Hugging Face Hub reads its YAML front matter: language, base model, pipeline tag and a
``model-index`` with the WER, CER and raw WER of every evaluated split, so the numbers show on
the model page. The body says what the model is, how it was trained, which normalizer the WER
uses and why, and how to run it in transformers, faster-whisper and whisper.cpp.
"""

from __future__ import annotations

import os
from typing import Any

CARD_FILE = "README.md"

# The flags a reader needs to judge or repeat the run, in this order.
_TRAINING_FLAGS = ("model_name_or_path", "language", "task", "max_steps", "num_train_epochs", "learning_rate",
                   "lr_scheduler_type", "warmup_steps", "per_device_train_batch_size",
                   "gradient_accumulation_steps", "mixed_precision", "optim", "weight_decay", "max_grad_norm",
                   "freeze_encoder", "apply_spec_augment", "seed", "max_duration_in_seconds", "do_lower_case",
                   "do_remove_punctuation", "pack_to_window", "timestamp_probability", "prev_text_probability",
                   "no_speech_probability", "speech_bounds")
_PACKING_FLAGS = ("timestamp_probability", "prev_text_probability", "no_speech_probability", "speech_bounds")

_NORMALIZER_NOTES = {
    "belarusian": "WER and CER are computed after the Belarusian normalizer of whisper-train-loop: lower "
                  "case, punctuation removed, the apostrophe variants (’ ‘ ʼ ` ´) unified and kept inside "
                  "words. Whisper's basic normalizer turns the apostrophe into a space and so splits "
                  "words such as раз'яднаць in two, counting one wrong word as two errors. Raw WER "
                  "compares the text as written (case and punctuation count).",
    "basic": "WER and CER are computed after Whisper's BasicTextNormalizer (lower case, punctuation "
             "removed), comparable with the Whisper leaderboards. Raw WER compares the text as "
             "written (case and punctuation count).",
}


def latest_by_split(evaluations: list[dict[str, Any]], best_step: int | None) -> list[dict[str, Any]]:
    """One result per split: the test evaluation of the final model, and for the evaluation
    split the best step's result (else the last one)."""
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    for record in evaluations:
        prefix = "test" if "test_samples" in record else "eval"
        key = (prefix, record.get("split", ""))
        if prefix == "eval" and best_step is not None and key in chosen and chosen[key].get("step") == best_step:
            continue
        chosen[key] = {"prefix": prefix, **record}
    return list(chosen.values())


def model_card(run_config: dict[str, Any], evaluations: list[dict[str, Any]], best_step: int | None,
               step: int, name: str, train_clips: int | None = None) -> str:
    import yaml

    base = run_config.get("model_name_or_path") or ""
    language = (run_config.get("language") or "").strip("<|>")
    normalizer = run_config.get("eval_normalizer", "belarusian")
    data = run_config.get("dataset_name") or os.path.basename(os.path.normpath(run_config.get("data_dir") or "")) or "local data"
    results = latest_by_split(evaluations, best_step)
    metadata: dict[str, Any] = {"language": [language] if language else [], "library_name": "transformers",
                                "pipeline_tag": "automatic-speech-recognition",
                                "tags": ["whisper", "automatic-speech-recognition", "whisper-train-loop"]}
    if _is_hub_id(base):
        metadata["base_model"] = base
        metadata["license"] = "apache-2.0"  # the license of OpenAI's Whisper checkpoints on the Hub
    if run_config.get("dataset_name"):
        metadata["datasets"] = [run_config["dataset_name"]]
    if results:
        metadata["model-index"] = [{"name": name, "results": [_index_entry(r, run_config, data, normalizer)
                                                              for r in results]}]
    front = yaml.safe_dump(metadata, allow_unicode=True, sort_keys=False)
    lines = [f"---\n{front}---", "", f"# {name}", "",
             f"Whisper fine-tuned from `{base}` to {run_config.get('task', 'transcribe')} language "
             f"`{language}` on {data}, with whisper-train-loop ({step} optimizer steps).", ""]
    token = (run_config.get("language_token_from") or "").strip("<|>")
    if token:  # a language Whisper has no token for: the runtimes are asked for the borrowed one
        lines += [f"Whisper has no token for `{language}`: this model writes it after the `<|{token}|>` "
                  f"token (`--language_token_from {token}`); ask every runtime for language `{token}`.", ""]
        language = token
    lines += ["## Results", ""]
    short = [r for r in results if r.get("split") != "longform"]
    long_form = [r for r in results if r.get("split") == "longform"]
    if short:
        lines += ["| split | step | clips | WER % | CER % | raw WER % |", "|---|---:|---:|---:|---:|---:|"]
        for r in short:
            p = r["prefix"]
            lines.append(f"| {r.get('split', '')} ({'final model' if p == 'test' else 'during training'}) | "
                         f"{r.get('step', '')} | {r.get(f'{p}_samples', '')} | {_pct(r.get(f'{p}_wer'))} | "
                         f"{_pct(r.get(f'{p}_cer'))} | {_pct(r.get(f'{p}_wer_raw'))} |")
    if long_form:
        lines += ["", "Long-form (recordings of several minutes decoded with Whisper's sequential algorithm, as "
                  "faster-whisper and whisper.cpp do; loops: recordings with a repetition loop; timestamp error: "
                  "mean distance of each true clip start to the nearest predicted segment start):", "",
                  "| step | recordings | WER % | CER % | loops % | timestamp error s |", "|---:|---:|---:|---:|---:|---:|"]
        for r in long_form:
            error = r.get("eval_timestamp_error_s")
            lines.append(f"| {r.get('step', '')} | {r.get('eval_samples', '')} | {_pct(r.get('eval_wer'))} | "
                         f"{_pct(r.get('eval_cer'))} | {_pct(r.get('eval_loop_rate'))} | "
                         f"{'n/a' if error is None else f'{error:.2f}'} |")
    if not results:
        lines.append("No evaluation yet.")
    lines += ["", _NORMALIZER_NOTES.get(normalizer, ""), "", "## Training", "", "| flag | value |", "|---|---|"]
    shown = [flag for flag in _TRAINING_FLAGS if flag in run_config
             and not (flag == "num_train_epochs" and (run_config.get("max_steps") or -1) > 0)  # unused then
             and not (flag in _PACKING_FLAGS and not run_config.get("pack_to_window"))]
    lines += [f"| `--{flag}` | `{run_config[flag]}` |" for flag in shown]
    if run_config.get("pack_to_window"):
        lines += ["", f"Trained as Whisper was: its input window (30 s) packed with consecutive clips of one speaker; "
                  f"{100 * run_config.get('timestamp_probability', 0):.0f}% of windows with segment timestamps, "
                  f"{100 * run_config.get('prev_text_probability', 0):.0f}% conditioned on the previous text, "
                  f"{100 * run_config.get('no_speech_probability', 0):.0f}% without speech (labelled no-speech). "
                  "Timestamps (`return_timestamps=True`) and long recordings were part of its training."]
    else:
        lines += ["", "Trained on one clip per example without timestamps (`--pack_to_window` off): long "
                  "recordings and timestamps may work less well than in the original model."]
    if train_clips:
        lines += ["", f"Training clips used: {train_clips:,} (every skipped clip is listed in the run's train.log)."]
    lines += ["", "## Usage", "", "transformers:", "", "```python", "from transformers import pipeline", "",
              'asr = pipeline("automatic-speech-recognition", model="MODEL")',
              f'print(asr("clip.wav", generate_kwargs={{"language": "{language or "en"}", "task": "transcribe"}})["text"])',
              "```", "", "faster-whisper (convert first: `python -m train_loop.export --model MODEL --format "
              "ctranslate2 --output_dir MODEL-ct2`):", "", "```python", "from faster_whisper import WhisperModel", "",
              'model = WhisperModel("MODEL-ct2")',
              f'segments, _ = model.transcribe("clip.wav", language="{language or "en"}", beam_size=1)',
              'print("".join(segment.text for segment in segments))', "```", "",
              "whisper.cpp (convert first: `python -m train_loop.export --model MODEL --format ggml "
              "--output_dir MODEL-ggml`):", "", "```sh",
              f"whisper-cli -m MODEL-ggml/ggml-model.bin -l {language or 'en'} -f clip.wav", "```", ""]
    return "\n".join(lines)


def write_model_card(folder: str, run_config: dict[str, Any], evaluations: list[dict[str, Any]],
                     best_step: int | None, step: int, name: str | None = None,
                     train_clips: int | None = None) -> str:
    path = os.path.join(folder, CARD_FILE)
    text = model_card(run_config, evaluations, best_step, step, name or os.path.basename(os.path.normpath(folder)),
                      train_clips)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def _index_entry(result: dict[str, Any], run_config: dict[str, Any], data: str, normalizer: str) -> dict[str, Any]:
    prefix = result["prefix"]
    dataset: dict[str, Any] = {"name": data, "type": run_config.get("dataset_name") or data,
                               "split": result.get("split", "")}
    if run_config.get("dataset_config_name"):
        dataset["config"] = run_config["dataset_config_name"]
    metrics = []
    for key, kind, label in (("wer", "wer", f"WER ({normalizer} normalizer)"), ("cer", "cer", f"CER ({normalizer} normalizer)"),
                             ("wer_raw", "wer", "WER (raw text)")):
        value = result.get(f"{prefix}_{key}")
        if value is not None:
            metrics.append({"type": kind, "value": round(float(value), 2), "name": label})
    return {"task": {"type": "automatic-speech-recognition", "name": "Automatic Speech Recognition"},
            "dataset": dataset, "metrics": metrics}


def _is_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not os.path.exists(name) and not name.startswith((".", "/"))


def _pct(value) -> str:
    return "n/a" if value is None else f"{float(value):.2f}"
