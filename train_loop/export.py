"""Export a model to the runtimes people deploy with, and check it transcribes as it did here.

    python -m train_loop.export --model runs/small-be --format ctranslate2 --output_dir small-be-ct2 \\
        --quantization int8 --check_data_dir cv-corpus-23.0-2025-09-05/be --check_split test
    python -m train_loop.export --model runs/small-be --format ggml --output_dir small-be-ggml

``--model`` is a run's output folder, any ``checkpoint-N`` or any Whisper folder in transformers
format (or a Hub id).

* ``ctranslate2``: CTranslate2's own converter (``pip install .[export]``); the folder loads with
  ``faster_whisper.WhisperModel(OUT)`` and holds the tokenizer and preprocessor files it reads.
* ``ggml``: ``OUT/ggml-model.bin`` for whisper.cpp (and its Python bindings, pywhispercpp),
  written by ``train_loop/ggml.py``; float16 (whisper.cpp's own ``quantize`` tool makes q5/q8
  files from it).

The parity check (``--check_data_dir`` or ``--check_dataset_name``) transcribes a split with
the exported model in its runtime and with transformers (greedy, same language and task, no
timestamps, no fallback), prints both WERs and how many transcripts differ, and exits 1 when
the runtime's WER is worse by more than ``--max_wer_increase`` points.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass

from .config import SourceConfig, flag, parse_sections
from .errors import UserError, run_tool
from .text import NORMALIZERS

FORMATS = ("ctranslate2", "ggml")
CT2_QUANTIZATIONS = ("float32", "float16", "bfloat16", "int8", "int8_float32", "int8_float16",
                     "int8_bfloat16", "int16")
GGML_FILE = "ggml-model.bin"


@dataclass
class ExportConfig:
    """What to export, where, and how to check it."""

    _argument_group_name = "What to export and how to check it (export)"

    model: str | None = flag(None, "Model folder (a run's output_dir, a checkpoint-N, any transformers "
                             "Whisper folder) or Hub id.")
    format: str | None = flag(None, "Runtime format.", FORMATS)
    output_dir: str | None = flag(None, "Folder for the exported model (created; must be empty or new "
                                  "unless --overwrite_output_dir).")
    quantization: str | None = flag(
        None, "Weights of the export. ctranslate2: " + ", ".join(CT2_QUANTIZATIONS) + " (default float16; "
        "faster-whisper converts at load time to what the device supports); ggml: float16 (whisper.cpp's "
        "quantize tool makes q5_0/q8_0 from it).")
    overwrite_output_dir: bool = flag(False, "Replace what --output_dir holds.")
    check_split: str = flag("test", "Split transcribed by the parity check.")
    check_max_samples: int | None = flag(None, "Check only the first N clips of the split.")
    max_wer_increase: float = flag(2.0, "Fail (exit 1) when the runtime's WER exceeds transformers' by more "
                                   "than this many points.")
    language: str | None = flag(None, "Language of the check (default: the model's generation config).")
    task: str = flag("transcribe", "Whisper task of the check.", ("transcribe", "translate"))
    generation_max_length: int = flag(225, "Most tokens generated per clip in the check, on both sides.")
    eval_normalizer: str = flag("belarusian", "Normalizer for the check's WER.", NORMALIZERS)


def main(argv: list[str] | None = None) -> int:
    def body():
        sections = parse_sections({"export": ExportConfig, "check": _check_section()}, argv,
                                  prog="train_loop.export", description=__doc__.split("\n\n")[0])
        options, check = sections["export"], _as_source(sections["check"])
        exported = export(options)
        if check is not None and not check_parity(options, check, exported):
            return 1

    return run_tool(body)


def _check_section() -> type:
    """SourceConfig's data flags, renamed ``--check_<name>`` (the export has its own --model)."""
    import dataclasses

    wanted = ("dataset_name", "dataset_config_name", "dataset_revision", "data_dir", "audio_column_name",
              "text_column_name", "cache_dir")
    fields = [(f"check_{f.name}", f.type, dataclasses.field(default=f.default, metadata=f.metadata))
              for f in dataclasses.fields(SourceConfig) if f.name in wanted]
    section = dataclasses.make_dataclass("CheckData", fields)
    section._argument_group_name = "The parity check's data (check): any data flag of training, prefixed check_"
    section.__module__ = __name__
    return section


def _as_source(check) -> SourceConfig | None:
    values = {name.removeprefix("check_"): value for name, value in vars(check).items()}
    if not values["dataset_name"] and not values["data_dir"]:
        return None
    source = SourceConfig(**values)
    source.kind()
    return source


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def export(options: ExportConfig) -> str:
    """Write the export; returns the path a runtime loads (folder or file)."""
    if not options.model:
        raise UserError("--model is required: a run's output_dir, a checkpoint-N folder or a Whisper folder")
    if not options.format:
        raise UserError(f"--format is required: {' or '.join(FORMATS)}")
    if not options.output_dir:
        raise UserError("--output_dir is required: the folder the exported model goes to")
    quantization = options.quantization or "float16"
    from .ggml import QUANTIZATIONS as GGML_QUANTIZATIONS

    allowed = CT2_QUANTIZATIONS if options.format == "ctranslate2" else GGML_QUANTIZATIONS
    if quantization not in allowed:
        raise UserError(f"--quantization {quantization}: {options.format} takes {', '.join(allowed)}")
    _prepare_output(options.output_dir, options.overwrite_output_dir)
    model, processor = _load(options.model)
    started = time.perf_counter()
    if options.format == "ctranslate2":
        target = _export_ctranslate2(options.model, model, processor, options.output_dir, quantization)
    else:
        from .ggml import write_ggml

        target = write_ggml(model, processor, os.path.join(options.output_dir, GGML_FILE), quantization)
        processor.save_pretrained(options.output_dir)  # the tokenizer, for whoever reads the folder
    size = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(options.output_dir)
               for name in names)
    print(f"exported {options.model} to {target} ({options.format}, {quantization}, {size / 1e6:.1f} MB) "
          f"in {time.perf_counter() - started:.1f} s", flush=True)
    return target


def _prepare_output(output_dir: str, overwrite: bool) -> None:
    if os.path.isfile(output_dir):
        raise UserError(f"--output_dir {output_dir}: a file, not a folder")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not overwrite:
            raise UserError(f"--output_dir {output_dir} is not empty; add --overwrite_output_dir to replace it")
        shutil.rmtree(output_dir)
    os.makedirs(output_dir, exist_ok=True)


def _load(model_path: str):
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    try:
        processor = WhisperProcessor.from_pretrained(model_path)
        model = WhisperForConditionalGeneration.from_pretrained(model_path, dtype=torch.float32)
    except Exception as err:
        raise UserError(f"--model {model_path}: cannot load a Whisper model and processor there "
                        f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})") from None
    return model.eval(), processor


def _export_ctranslate2(model_path: str, model, processor, output_dir: str, quantization: str) -> str:
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise UserError("--format ctranslate2 needs CTranslate2: pip install '.[export]' (or pip install "
                        "ctranslate2 faster-whisper)") from None
    import tempfile

    # The converter reads a transformers folder: give it one made from what was loaded, so a
    # checkpoint-N (optimizer files beside the weights) or a folder lacking files converts alike.
    with tempfile.TemporaryDirectory(prefix="export-") as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        processor.feature_extractor.save_pretrained(staging)  # preprocessor_config.json
        TransformersConverter(staging, copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(
            output_dir, quantization=quantization, force=True)
    return output_dir


# --------------------------------------------------------------------------------------------
# Parity check
# --------------------------------------------------------------------------------------------


def check_parity(options: ExportConfig, source: SourceConfig, exported: str) -> bool:
    """Transcribe the check split with transformers and with the runtime; True when the runtime
    is within --max_wer_increase points of transformers."""
    from .audio import AudioDecodeError, decode_audio
    from .logger import progress_bar
    from .metrics import error_rates
    from .text import get_normalizer

    reference = transformers_transcripts(options, source)
    runtime = runtime_transcriber(options.format, exported, reference["language"], options.task,
                                  options.generation_max_length, options.quantization or "float16")
    rows = reference["rows"]
    bar = progress_bar(len(rows), f"check {options.format}", enabled=True, unit="clip")
    started = time.perf_counter()
    theirs: dict[str, str] = {}
    for clip_id, audio in reference["audio"].items():
        try:
            theirs[clip_id] = runtime(decode_audio(audio))
        except AudioDecodeError:
            theirs[clip_id] = ""  # transformers could not read it either: it is not in rows
        bar.update(1)
    bar.close()
    runtime_seconds = time.perf_counter() - started
    normalize = get_normalizer(options.eval_normalizer)
    ids = [row["id"] for row in rows]
    references = [row["reference"] for row in rows]
    ours = [row["prediction"] for row in rows]
    other = [theirs[clip_id] for clip_id in ids]
    ours_wer = error_rates(references, ours, normalize).get("wer", float("nan"))
    other_wer = error_rates(references, other, normalize).get("wer", float("nan"))
    differing = [(clip_id, a, b) for clip_id, a, b in zip(ids, ours, other) if normalize(a) != normalize(b)]
    passed = other_wer <= ours_wer + options.max_wer_increase
    print(f"\nparity check on {source.data_dir or source.dataset_name} '{options.check_split}' ({len(ids)} clips)")
    print(f"  transformers   WER {ours_wer:7.2f}%   ({reference['seconds']:.1f} s)")
    print(f"  {options.format:<14} WER {other_wer:7.2f}%   ({runtime_seconds:.1f} s)")
    print(f"  differing transcripts (after the {options.eval_normalizer} normalizer): {len(differing)} of {len(ids)}")
    for clip_id, a, b in differing[:5]:
        print(f"    {clip_id}\n      transformers: {a}\n      {options.format}: {b}")
    verdict = "passed" if passed else "FAILED"
    print(f"  {verdict}: {options.format} WER is {other_wer - ours_wer:+.2f} points from transformers "
          f"(allowed: +{options.max_wer_increase:g})", flush=True)
    report = os.path.join(options.output_dir, "parity.json")
    with open(report, "w", encoding="utf-8") as handle:
        json.dump({"format": options.format, "split": options.check_split, "clips": len(ids),
                   "transformers_wer": ours_wer, "runtime_wer": other_wer, "differing": len(differing),
                   "passed": passed, "max_wer_increase": options.max_wer_increase,
                   "examples": [{"id": i, "transformers": a, "runtime": b} for i, a, b in differing[:20]]},
                  handle, ensure_ascii=False, indent=2)
    return passed


def transformers_transcripts(options: ExportConfig, source: SourceConfig) -> dict:
    """This project's evaluation of the check split with the source model (the reference)."""
    import torch
    from accelerate import Accelerator

    from .config import DataConfig, ModelConfig
    from .data import build_eval_set
    from .distributed import reset_accelerator_settings
    from .evaluation import GenerationSettings, gather_predictions, transcribe
    from .model import load_model, load_processor
    from .sources import load_rows

    model_dir = options.model
    from .model import model_language

    language = model_language(model_dir, options.language)
    if not language:
        raise UserError(f"--model {model_dir} names no language in its generation config; give --language")
    processor = load_processor(model_dir, language, options.task)
    reset_accelerator_settings()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model = accelerator.prepare(load_model(ModelConfig(model_name_or_path=model_dir, language=language,
                                                       task=options.task), processor))
    # float32 features: the runtimes compute theirs in float32 from the waveform.
    eval_set = build_eval_set(source, DataConfig(prepared_feature_dtype="float32"), processor, accelerator,
                              options.check_split,
                              batch_size=16, max_samples=options.check_max_samples,
                              eval_normalizer=options.eval_normalizer, streaming=False)
    if eval_set.report is not None and eval_set.report.skipped:
        print(eval_set.report.summary())
    started = time.perf_counter()
    settings = GenerationSettings(language, options.task, options.generation_max_length)
    local, _ = transcribe(model, eval_set, processor.tokenizer, settings, accelerator)
    rows = gather_predictions(local, accelerator)
    seconds = time.perf_counter() - started
    kept = {row["id"] for row in rows}
    table = load_rows(source, options.check_split).rows
    audio = {clip_id: clip for clip_id, clip in zip(table["id"], table["audio"]) if clip_id in kept}
    return {"rows": rows, "audio": audio, "seconds": seconds, "language": language}


def runtime_transcriber(fmt: str, exported: str, language: str, task: str, max_new_tokens: int,
                        quantization: str):
    """A function waveform -> text running the exported model in its runtime, decoding as
    transformers does here: greedy, no timestamps, no temperature fallback, no previous-text
    prompt, no voice-activity or no-speech skipping."""
    if fmt == "ctranslate2":
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise UserError("the parity check needs faster-whisper: pip install '.[export]'") from None
        model = WhisperModel(exported, device="auto", compute_type="default", cpu_threads=os.cpu_count() or 1)

        def transcribe_faster_whisper(waveform) -> str:
            segments, _ = model.transcribe(
                waveform, language=language, task=task, beam_size=1, best_of=1, temperature=0.0,
                condition_on_previous_text=False, without_timestamps=True, vad_filter=False,
                no_speech_threshold=None, log_prob_threshold=None, compression_ratio_threshold=None,
                max_new_tokens=max_new_tokens)
            return "".join(segment.text for segment in segments).strip()

        return transcribe_faster_whisper
    try:
        from pywhispercpp.model import Model
    except ImportError:
        raise UserError("the parity check of a ggml model needs whisper.cpp's Python bindings: pip install "
                        "'.[export]' (or pip install pywhispercpp)") from None
    model = Model(exported, n_threads=os.cpu_count() or 1, print_realtime=False, print_progress=False,
                  redirect_whispercpp_logs_to=None, language=language, translate=task == "translate",
                  no_context=True, no_timestamps=True, single_segment=True, temperature=0.0,
                  temperature_inc=0.0, max_tokens=max_new_tokens, suppress_blank=True)

    def transcribe_whisper_cpp(waveform) -> str:
        return "".join(segment.text for segment in model.transcribe(waveform)).strip()

    return transcribe_whisper_cpp


if __name__ == "__main__":
    sys.exit(main())
