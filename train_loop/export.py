"""Export a model to the runtimes people deploy with, and check it transcribes as it did here.

    python -m train_loop.export --model runs/small-be --format ctranslate2 --output_dir small-be-ct2 \\
        --quantization int8 --check_data_dir cv-corpus-23.0-2025-09-05/be --check_split test
    python -m train_loop.export --model runs/small-be --format ggml --output_dir small-be-ggml

``--model`` is a run's output folder, any ``checkpoint-N`` or any Whisper folder in transformers
format (or a Hub id).

* ``ctranslate2``: CTranslate2's own converter (``pip install .[export]``); the folder loads with
  ``faster_whisper.WhisperModel(OUT)`` and holds the tokenizer and preprocessor files it reads.
* ``ggml``: ``OUT/ggml-model.bin`` for whisper.cpp (and its Python bindings, pywhispercpp),
  written by ``train_loop/runtimes/ggml.py``; float16 (whisper.cpp's own ``quantize`` tool makes q5/q8
  files from it).

The parity check (``--check_data_dir`` or ``--check_dataset_name``) transcribes a split with
the exported model in its runtime and with transformers (greedy, same language and task, no
timestamps, no fallback), prints both WERs and how many transcripts differ, and exits 1 when
the runtime's WER is worse by more than ``--max_wer_increase`` points.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

from .core.console import run_tool
from .core.errors import UserError
from .core.flags import at_least, flag, parse_sections
from .core.paths import overlaps, replace_folder
from .data.config import SourceConfig
from .evaluation.config import DecodingConfig, SavedModelConfig, ScoringConfig
from .runtimes import RUNTIMES

RECORD = "exported_from.json"  # what was exported, and how this command knows the folder is its own


@dataclass
class ExportConfig:
    """What to export, where, and how to check it."""

    _argument_group_name = "What to export and how to check it (export)"

    format: str | None = flag(None, "Runtime format.", tuple(RUNTIMES))
    output_dir: str | None = flag(None, "Folder for the exported model (created; must be empty or new "
                                  "unless --overwrite_output_dir).")
    quantization: str | None = flag(
        None, "Weights of the export. " + "; ".join(
            f"{name}: {', '.join(runtime.QUANTIZATIONS)} (default {runtime.QUANTIZATIONS[0]})"
            for name, runtime in RUNTIMES.items())
        + ". faster-whisper converts at load time to what the device supports; whisper.cpp's quantize "
        "tool makes q5_0/q8_0 from a float16 file.")
    overwrite_output_dir: bool = flag(False, "Replace what --output_dir holds.")
    check_split: str = flag("test", "Split transcribed by the parity check.")
    check_max_samples: int | None = flag(None, "Check only the first N clips of the split.", check=at_least(1))
    max_wer_increase: float = flag(2.0, "Fail (exit 1) when the runtime's WER exceeds transformers' by more "
                                   "than this many points.")


def main(argv: list[str] | None = None) -> int:
    def body():
        sections = parse_sections({"export": ExportConfig, "check": _check_section(), "saved": SavedModelConfig,
                                   "decoding": DecodingConfig, "scoring": ScoringConfig}, argv,
                                  prog="train_loop.export", description=__doc__.split("\n\n")[0])
        options, check = sections["export"], _as_source(sections["check"])
        exported = export(options, sections["saved"])
        if check is not None and not check_parity(options, check, exported, sections["saved"],
                                                  sections["decoding"], sections["scoring"]):
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


def export(options: ExportConfig, saved: SavedModelConfig) -> str:
    """Write the export; returns the path a runtime loads (folder or file)."""
    if not saved.model:
        raise UserError("--model is required: a run's output_dir, a checkpoint-N folder or a Whisper folder")
    if not options.format:
        raise UserError(f"--format is required: {' or '.join(RUNTIMES)}")
    if not options.output_dir:
        raise UserError("--output_dir is required: the folder the exported model goes to")
    runtime = RUNTIMES[options.format]
    quantization = options.quantization or runtime.QUANTIZATIONS[0]
    if quantization not in runtime.QUANTIZATIONS:
        raise UserError(f"--quantization {quantization}: {options.format} takes {', '.join(runtime.QUANTIZATIONS)}")
    model, processor = _load(saved.model)  # before anything is written or replaced
    window = processor.feature_extractor.n_samples / processor.feature_extractor.sampling_rate
    if options.format == "ctranslate2" and window != 30:
        raise UserError(f"--model {saved.model} hears a {window:g} s window; faster-whisper (CTranslate2) "
                        "always cuts audio into 30 s windows and cannot run it. Export a model with Whisper's 30 s "
                        "window, or use --format ggml")
    _refuse_overlap(saved.model, options.output_dir)
    _check_output(options.output_dir, options.overwrite_output_dir)
    started = time.perf_counter()
    written: list[str] = []  # where the runtime loads from, relative to the folder

    def write(folder: str) -> None:
        written.append(os.path.relpath(runtime.export(model, processor, folder, quantization), folder))
        with open(os.path.join(folder, RECORD), "w", encoding="utf-8") as handle:
            json.dump({"model": os.path.abspath(saved.model) if os.path.isdir(saved.model) else saved.model,
                       "format": options.format, "quantization": quantization}, handle, indent=2)

    # Written beside the folder and swapped in when complete: a failed export leaves the old one.
    replace_folder(options.output_dir, write)
    target = os.path.normpath(os.path.join(options.output_dir, written[0]))
    size = os.path.getsize(target) if os.path.isfile(target) else sum(
        os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(target) for name in names)
    print(f"exported {saved.model} to {target} ({options.format}, {quantization}, {size / 1e6:.1f} MB) "
          f"in {time.perf_counter() - started:.1f} s", flush=True)
    return target


def _refuse_overlap(model: str, output_dir: str) -> None:
    """The export never replaces its own input: --output_dir may not be the model's folder, nor
    inside it, nor hold it."""
    if os.path.isdir(model) and overlaps(model, output_dir):
        raise UserError(f"--output_dir {output_dir} overlaps --model {model} (the same folder, or one inside the "
                        "other); the export would replace what it reads. Choose another --output_dir")


def _check_output(output_dir: str, overwrite: bool) -> None:
    """A new or empty folder, or (with --overwrite_output_dir) an earlier export: never a folder
    this command did not write."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UserError(f"--output_dir {output_dir}: a file, not a folder")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not overwrite:
            raise UserError(f"--output_dir {output_dir} is not empty; add --overwrite_output_dir to replace it")
        if not os.path.isfile(os.path.join(output_dir, RECORD)):
            raise UserError(f"--output_dir {output_dir} holds files this command did not write (no {RECORD}); "
                            "--overwrite_output_dir replaces only an earlier export. Choose a new or empty folder")


def _load(model_path: str):
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from .core.model import refuse_adapters_only

    refuse_adapters_only(model_path, "--model")
    try:
        processor = WhisperProcessor.from_pretrained(model_path)
        model = WhisperForConditionalGeneration.from_pretrained(model_path, dtype=torch.float32)
    except Exception as err:
        raise UserError(f"--model {model_path}: cannot load a Whisper model and processor there "
                        f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})") from None
    return model.eval(), processor


# --------------------------------------------------------------------------------------------
# Parity check
# --------------------------------------------------------------------------------------------


def check_parity(options: ExportConfig, source: SourceConfig, exported: str, saved: SavedModelConfig,
                 decoding: DecodingConfig, scoring: ScoringConfig) -> bool:
    """Transcribe the check split with transformers and with the runtime; True when the runtime
    is within --max_wer_increase points of transformers."""
    # Imported here, not at the top: `--help` answers before torch loads.
    from .core.console import progress_bar
    from .core.text import get_normalizer
    from .data.audio import AudioDecodeError, decode_audio
    from .evaluation.metrics import error_rates

    reference = transformers_transcripts(options, source, saved, decoding, scoring)
    runtime = RUNTIMES[options.format].transcriber(exported, reference["language"], saved.task,
                                                   decoding.generation_max_length, decoding.num_beams)
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
    normalize = get_normalizer(scoring.eval_normalizer)
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
    print(f"  differing transcripts (after the {scoring.eval_normalizer} normalizer): {len(differing)} of {len(ids)}")
    for clip_id, a, b in differing[:5]:
        print(f"    {clip_id}\n      transformers: {a}\n      {options.format}: {b}")
    verdict = "passed" if passed else "FAILED"
    print(f"  {verdict}: {options.format} WER is {other_wer - ours_wer:+.2f} points from transformers "
          f"(allowed: +{options.max_wer_increase:g})", flush=True)
    long_form = long_form_parity(options, reference, exported, saved, decoding, normalize)
    passed = passed and (long_form is None or long_form["passed"])
    report = os.path.join(options.output_dir, "parity.json")
    with open(report, "w", encoding="utf-8") as handle:
        json.dump({"format": options.format, "split": options.check_split, "clips": len(ids),
                   "transformers_wer": ours_wer, "runtime_wer": other_wer, "differing": len(differing),
                   "passed": passed, "max_wer_increase": options.max_wer_increase,
                   "examples": [{"id": i, "transformers": a, "runtime": b} for i, a, b in differing[:20]],
                   "long_form": long_form},
                  handle, ensure_ascii=False, indent=2)
    return passed


LONG_FORM_GAP_SECONDS = 0.5
LONG_FORM_MAX_SECONDS = 120.0


def long_form_parity(options: ExportConfig, reference: dict, exported: str, saved: SavedModelConfig,
                     decoding: DecodingConfig, normalize) -> dict | None:
    """The check split's clips joined (0.5 s apart, up to 2 minutes) into one file longer than the
    window, transcribed with timestamps by transformers' sequential long-form decoding and by the
    runtime's: both WERs, and segments that increase and stay inside the file. None (with a note)
    when the clips make no file longer than the window."""
    import numpy as np

    from .data.audio import SAMPLING_RATE, decode_audio
    from .evaluation.metrics import error_rates
    from .evaluation.transcriber import Transcriber

    transformers_side = Transcriber(saved.model, reference["language"], saved.task, decoding.num_beams, "auto",
                                    decoding.generation_max_length)
    parts, texts = [], []
    for row in reference["rows"]:
        parts += [decode_audio(reference["audio"][row["id"]]), np.zeros(int(LONG_FORM_GAP_SECONDS * SAMPLING_RATE),
                                                                        dtype=np.float32)]
        texts.append(row["reference"])
        if sum(len(p) for p in parts) >= LONG_FORM_MAX_SECONDS * SAMPLING_RATE:
            break
    waveform = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    seconds = len(waveform) / SAMPLING_RATE
    if seconds <= transformers_side.window_seconds:
        print(f"  long-form check skipped: the check split's clips make {seconds:.0f} s, not more than the "
              f"{transformers_side.window_seconds:g} s window (a check split with more clips makes one)")
        return None
    runtime = RUNTIMES[options.format].long_form_transcriber(exported, reference["language"], saved.task,
                                                            decoding.generation_max_length, decoding.num_beams)
    joined = " ".join(texts)
    results = {}
    for side, transcribe in (("transformers", lambda w: transformers_side([w], timestamps=True)[0]),
                             (options.format, runtime)):
        text, segments = transcribe(waveform)
        starts = [segment["start"] for segment in segments]
        results[side] = {"wer": error_rates([joined], [text], normalize).get("wer", float("nan")),
                         "segments": len(segments), "increasing": starts == sorted(starts),
                         "inside": all(0 <= s["start"] <= s["end"] <= seconds + 0.5 for s in segments),
                         "text": text, "segment_times": [[s["start"], s["end"]] for s in segments]}
    ours, theirs = results["transformers"], results[options.format]
    # The gate is parity (WER); whether segments increase and stay inside the file is reported: a
    # model's own timestamps can overrun a short last window (transformers' side is clamped here,
    # as train_loop.transcribe clamps it; the runtimes report theirs as they come).
    passed = theirs["wer"] <= ours["wer"] + options.max_wer_increase
    print(f"  long-form, timestamps on ({len(texts)} clips in one {seconds:.0f} s file):")
    for side, result in results.items():
        print(f"    {side:<14} WER {result['wer']:7.2f}%   {result['segments']} segments, "
              f"{'increasing' if result['increasing'] else 'NOT increasing'}, "
              f"{'inside the file' if result['inside'] else 'NOT inside the file'}")
    print(f"  {'passed' if passed else 'FAILED'}: long-form {options.format} WER is {theirs['wer'] - ours['wer']:+.2f} "
          f"points from transformers (allowed: +{options.max_wer_increase:g})", flush=True)
    return {"seconds": round(seconds, 1), "clips": len(texts), "passed": passed, **results}


def transformers_transcripts(options: ExportConfig, source: SourceConfig, saved: SavedModelConfig,
                             decoding: DecodingConfig, scoring: ScoringConfig) -> dict:
    """This project's evaluation of the check split with the source model (the reference)."""
    import torch
    from accelerate import Accelerator

    from .core.model import ModelConfig, load_model, load_processor, model_language
    from .core.processes import reset_accelerator_settings
    from .data.build import build_eval_set
    from .data.config import DataConfig
    from .data.sources import load_rows
    from .evaluation.generation import GenerationSettings, gather_predictions, transcribe

    model_dir = saved.model
    token_language = model_language(model_dir, saved.language)
    if not token_language:
        raise UserError(f"--model {model_dir} names no language in its generation config; give --language")
    processor = load_processor(model_dir, token_language, saved.task)
    reset_accelerator_settings()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model = accelerator.prepare(load_model(ModelConfig(model_name_or_path=model_dir, language=token_language,
                                                       task=saved.task), processor))
    # float32 features: the runtimes compute theirs in float32 from the waveform.
    eval_set = build_eval_set(source, DataConfig(prepared_feature_dtype="float32"), processor, accelerator,
                              options.check_split,
                              batch_size=16, max_samples=options.check_max_samples,
                              eval_normalizer=scoring.eval_normalizer, streaming=False)
    if eval_set.report is not None and eval_set.report.skipped:
        print(eval_set.report.summary())
    started = time.perf_counter()
    settings = GenerationSettings(token_language, saved.task, decoding.generation_max_length, decoding.num_beams)
    local, _ = transcribe(model, eval_set, processor.tokenizer, settings, accelerator)
    rows = gather_predictions(local, accelerator)
    seconds = time.perf_counter() - started
    kept = {row["id"] for row in rows}
    table = load_rows(source, options.check_split).rows
    audio = {clip_id: clip for clip_id, clip in zip(table["id"], table["audio"]) if clip_id in kept}
    return {"rows": rows, "audio": audio, "seconds": seconds, "language": token_language}


if __name__ == "__main__":
    sys.exit(main())
