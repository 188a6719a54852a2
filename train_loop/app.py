"""A local page to see what a run's model learned: curves, errors you can listen to, and
side-by-side transcription.

    python -m train_loop.app runs/small-be
    python -m train_loop.app runs/small-be --compare openai/whisper-small --port 7860

Built with Gradio (its audio upload/record widget, tables and plots are what this page needs,
and it serves offline). The page reads the run folder and never writes into it (Gradio's
temporary files go to a temporary folder of their own), works on a finished run and on one
still training (reload to see new steps), and starts in seconds: models load on the first
transcription.

1. **Run**: the WER table, the training curves, the best checkpoint and how it was chosen, the
   run's flags.
2. **Errors**: every clip of one evaluation (``eval/step-N.jsonl``) with its reference and
   prediction, the word differences marked, worst clips first, filterable by text; the audio
   of a clip plays when its file is still where the run read it. Comparing two evaluations
   lists the clips that got better or worse.
3. **Try it**: upload or record audio; the run's model (and ``--compare MODEL``) transcribe it
   side by side, with the time each took.
"""

from __future__ import annotations

import atexit
import html
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from .core.console import run_tool
from .core.errors import UserError
from .core.flags import at_least, flag, parse_sections
from .data.audio import SAMPLING_RATE, AudioDecodeError, decode_audio
from .data.config import SourceConfig
from .evaluation.config import DecodingConfig
from .outputs.plot import draw_curves, read_metrics

# Gradio, torch, transformers and the data loaders are imported where they are used: the page
# starts in seconds, and models load on the first transcription.

_STEP_FILE = re.compile(r"^(test-)?step-(\d+)\.jsonl$")
SORTS = ("word errors (worst first)", "clip WER (worst first)", "clip id")


# --------------------------------------------------------------------------------------------
# The run folder, read only
# --------------------------------------------------------------------------------------------


class RunFolder:
    """What a run's output folder holds, read on demand (a live run keeps changing)."""

    def __init__(self, root: str):
        self.root = root
        self.problems: set[str] = set()  # damaged files met while reading, said on the page
        if not os.path.isdir(root):
            raise UserError(f"{root}: no such folder; give a run's --output_dir")
        marks = ("metrics.jsonl", "results.json", "best_checkpoint.json")
        if not any(os.path.isfile(os.path.join(root, mark)) for mark in marks) and not self.checkpoints():
            raise UserError(f"{root} is not a training run's output folder: it has no metrics.jsonl, results.json "
                            "or checkpoint-N (give the --output_dir of a run of train_loop.main)")

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def checkpoints(self) -> list[str]:
        from .training.checkpoint import complete_checkpoints  # loads torch: only when a page asks

        return [path for _, path in complete_checkpoints(self.root)]

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.root) if os.path.isfile(self.path("metrics.jsonl")) else []

    def read_json(self, path: str) -> dict[str, Any] | None:
        """A JSON object of the run folder; a damaged one is named on the page (``problems``), not
        a server traceback."""
        try:
            with open(path, encoding="utf-8") as handle:
                value = json.load(handle)
        except (OSError, ValueError) as err:
            self.problems.add(f"{os.path.relpath(path, self.root)}: cannot be read ({str(err).splitlines()[0][:120]}); "
                              "the page shows the run without it")
            return None
        return value if isinstance(value, dict) else None

    def flags(self) -> dict[str, Any]:
        """The run's flags: the newest checkpoint's run_config.json."""
        for checkpoint in reversed(self.checkpoints()):
            config = os.path.join(checkpoint, "run_config.json")
            if os.path.isfile(config):
                return self.read_json(config) or {}
        return {}

    def best(self) -> dict[str, Any] | None:
        if not os.path.isfile(self.path("best_checkpoint.json")):
            return None
        best = self.read_json(self.path("best_checkpoint.json"))
        if best is not None and not {"checkpoint", "step", "metric", "value"} <= set(best):
            self.problems.add("best_checkpoint.json: incomplete; the page shows the run without it")
            return None
        return best

    def evaluations(self) -> list[dict[str, Any]]:
        """One row per evaluation in metrics.jsonl: step, split, clips, WER, CER, raw WER, loops and
        (long-form) the timestamp error; a long-form row counts recordings, not clips."""
        flags = self.flags()
        rows = []
        for record in self.metrics():
            for prefix, split_flag in (("eval", "eval_split_name"), ("test", "test_split_name"),
                                       ("eval_longform", None)):
                if f"{prefix}_samples" in record:
                    split = flags.get(split_flag, prefix) if split_flag else "long-form (recordings)"
                    rows.append({"step": record["step"], "split": split, "kind": prefix,
                                 "clips": record.get(f"{prefix}_samples"), "wer": record.get(f"{prefix}_wer"),
                                 "cer": record.get(f"{prefix}_cer"), "wer_raw": record.get(f"{prefix}_wer_raw"),
                                 "loops": record.get(f"{prefix}_loop_rate"),
                                 "timestamp_error": record.get(f"{prefix}_timestamp_error_s")})
        return rows

    def prediction_files(self) -> dict[str, str]:
        """label -> path of every per-clip prediction file, in step order."""
        folder = self.path("eval")
        if not os.path.isdir(folder):
            return {}
        found = []
        for name in os.listdir(folder):
            match = _STEP_FILE.match(name)
            if match:
                kind = "test" if match.group(1) else "eval"
                found.append((int(match.group(2)), kind, os.path.join(folder, name)))
        flags = self.flags()
        return {f"{flags.get(kind + '_split_name', kind)} @ step {step}" + (" (final model)" if kind == "test" else ""):
                path for step, kind, path in sorted(found)}

    def model_dir(self) -> str | None:
        """The final model, else the newest checkpoint (a run still training)."""
        if os.path.isfile(self.path("model.safetensors")):
            return self.root
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None


def read_predictions(path: str) -> list[dict[str, Any]]:
    """The clips of a predictions file; a damaged line is left out (a run may be writing it)."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "id" in row:
                rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Word differences
# --------------------------------------------------------------------------------------------


def word_diff_html(reference: str, prediction: str) -> str:
    """The prediction against the reference, word by word: substitutions show the reference
    word struck through and the predicted one, deletions struck through, insertions underlined."""
    import jiwer

    ref_words, hyp_words = reference.split(), prediction.split()
    if not ref_words:
        return " ".join(f'<ins class="ins" {_INSERTED}>{html.escape(w)}</ins>' for w in hyp_words)
    if not hyp_words:
        return " ".join(f'<del class="del" {_DELETED}>{html.escape(w)}</del>' for w in ref_words)
    parts = []
    for chunk in jiwer.process_words(reference, prediction).alignments[0]:
        ref = [html.escape(w) for w in ref_words[chunk.ref_start_idx:chunk.ref_end_idx]]
        hyp = [html.escape(w) for w in hyp_words[chunk.hyp_start_idx:chunk.hyp_end_idx]]
        if chunk.type == "equal":
            parts.append(" ".join(ref))
        elif chunk.type == "substitute":
            parts.extend(f'<del class="sub" {_DELETED}>{r}</del>&nbsp;<ins class="sub" {_SUBSTITUTED}>{h}</ins>' for r, h in zip(ref, hyp))
        elif chunk.type == "delete":
            parts.extend(f'<del class="del" {_DELETED}>{r}</del>' for r in ref)
        else:
            parts.extend(f'<ins class="ins" {_INSERTED}>{h}</ins>' for h in hyp)
    return " ".join(parts)


# Inline styles: Gradio's HTML component drops <style> blocks. The class names stay for tests.
_DELETED = 'style="color:#b00020;text-decoration:line-through"'
_SUBSTITUTED = 'style="color:#0b57d0;text-decoration:none;font-weight:600"'
_INSERTED = 'style="color:#0b57d0;text-decoration:underline;font-weight:600"'
_TABLE = 'class="clips" style="border-collapse:collapse;width:100%;font-size:0.92em"'


def clips_table(rows: list[dict[str, Any]], sort: str, text_filter: str, limit: int = 200) -> tuple[str, list[str]]:
    """(HTML table, clip ids in table order) of one evaluation's clips."""
    needle = text_filter.strip().lower()
    if needle:
        rows = [r for r in rows if needle in r["reference"].lower() or needle in r["prediction"].lower()
                or needle in r["id"].lower()]
    if sort == SORTS[0]:
        rows = sorted(rows, key=lambda r: (-r["word_errors"], r["id"]))
    elif sort == SORTS[1]:
        rows = sorted(rows, key=lambda r: (-r["word_errors"] / max(1, r["reference_words"]), r["id"]))
    else:
        rows = sorted(rows, key=lambda r: r["id"])
    shown = rows[:limit]
    lines = [f"<p>{len(rows)} clips" + (f" (first {limit} shown)" if len(rows) > limit else "") + "</p>",
             f'<table {_TABLE}><tr><th>clip</th><th>word errors</th><th>reference</th>'
             '<th>prediction (differences marked)</th></tr>']
    for r in shown:
        lines.append(f'<tr class="clip-row"><td>{html.escape(r["id"])}</td>'
                     f'<td>{r["word_errors"]} / {r["reference_words"]}</td>'
                     f'<td>{html.escape(r["reference"])}</td>'
                     f'<td>{word_diff_html(r["reference_normalized"], r["prediction_normalized"])}</td></tr>')
    lines.append("</table>")
    return "\n".join(lines), [r["id"] for r in shown]


def comparison_table(before: list[dict[str, Any]], after: list[dict[str, Any]], limit: int = 200) -> str:
    """Clips in both evaluations, the ones that got worse first."""
    old = {r["id"]: r for r in before}
    pairs = [(old[r["id"]], r) for r in after if r["id"] in old]
    pairs.sort(key=lambda pair: (-(pair[1]["word_errors"] - pair[0]["word_errors"]), pair[1]["id"]))
    better = sum(b["word_errors"] < a["word_errors"] for a, b in pairs)
    worse = sum(b["word_errors"] > a["word_errors"] for a, b in pairs)
    lines = [f'<p>{len(pairs)} clips in both: <span class="better" style="color:#137333;font-weight:600">{better} better</span>, '
             f'<span class="worse" style="color:#b00020;font-weight:600">{worse} worse</span>, {len(pairs) - better - worse} unchanged</p>',
             f'<table {_TABLE}><tr><th>clip</th><th>errors before → after</th><th>before</th><th>after</th></tr>']
    for a, b in pairs[:limit]:
        change = b["word_errors"] - a["word_errors"]
        mark = "worse" if change > 0 else "better" if change < 0 else ""
        color = {"worse": "#b00020", "better": "#137333"}.get(mark, "inherit")
        lines.append(f'<tr><td>{html.escape(b["id"])}</td><td class="{mark}" style="color:{color}">{a["word_errors"]} → {b["word_errors"]}</td>'
                     f'<td>{word_diff_html(a["reference_normalized"], a["prediction_normalized"])}</td>'
                     f'<td>{word_diff_html(b["reference_normalized"], b["prediction_normalized"])}</td></tr>')
    lines.append("</table>")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Audio of a clip, and transcription
# --------------------------------------------------------------------------------------------


class ClipAudio:
    """Clip id -> its audio file, from the run's data flags (the manifest is read, no audio)."""

    def __init__(self, flags: dict[str, Any]):
        self.flags = flags
        self._by_split: dict[str, dict[str, Any]] = {}

    def find(self, split: str, clip_id: str) -> tuple[Any, str]:
        """(audio for gr.Audio or None, a note)."""
        if not self.flags.get("data_dir") and not self.flags.get("dataset_name"):
            return None, "the run's data flags are unknown (no checkpoint with run_config.json yet)"
        if split not in self._by_split:
            try:
                from .data.sources import load_rows

                fields = {name: self.flags[name] for name in ("dataset_name", "dataset_config_name", "dataset_revision",
                                                              "data_dir", "audio_column_name", "text_column_name",
                                                              "cache_dir") if name in self.flags}
                rows = load_rows(SourceConfig(**fields), split).rows
                self._by_split[split] = dict(zip(rows["id"], rows["audio"]))
            except Exception as err:  # moved data, no connection for a Hub dataset, ...
                self._by_split[split] = {}
                return None, f"the audio of split '{split}' is not available here ({str(err).splitlines()[0]})"
        audio = self._by_split[split].get(clip_id)
        if audio is None:
            return None, f"{clip_id}: not in the split's manifest any more"
        try:
            import numpy as np

            samples = np.clip(decode_audio(audio), -1.0, 1.0)
            return (16000, (samples * 32767).astype(np.int16)), (audio if isinstance(audio, str) else clip_id)
        except AudioDecodeError as err:
            return None, f"{clip_id}: the audio is no longer where the run read it ({err})"


class Transcribers:
    """The run's model and the comparison model, loaded on first use."""

    def __init__(self, run_model: str | None, compare: str | None, language: str | None, max_new_tokens: int = 225):
        self.paths = {"run": run_model, "compare": compare}
        self.language = language
        self.max_new_tokens = max_new_tokens
        self.loaded: dict[str, Any] = {}

    def __call__(self, which: str, waveform) -> tuple[str, float]:
        from .evaluation.transcriber import Transcriber

        if which not in self.loaded:
            self.loaded[which] = Transcriber(self.paths[which], self.language, "transcribe",
                                             max_new_tokens=self.max_new_tokens)
        started = time.perf_counter()
        text, _ = self.loaded[which]([waveform], timestamps=False)[0]
        return text, time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------


def build_page(run: RunFolder, compare: str | None = None, max_new_tokens: int = 440):
    import gradio as gr

    flags = run.flags()
    language = (flags.get("language") or None)
    transcribers = Transcribers(run.model_dir(), compare, language, max_new_tokens)
    audio = ClipAudio(flags)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts: offline

    def run_summary():
        evaluations = run.evaluations()
        table = [[e["step"], e["split"], e["clips"], _pct(e["wer"]), _pct(e["cer"]), _pct(e["wer_raw"]),
                  _pct(e["loops"]), "" if e["timestamp_error"] is None else f"{e['timestamp_error']:.2f}"]
                 for e in evaluations]
        best = run.best()
        normalizer = flags.get("eval_normalizer", "belarusian")
        lines = [f"**Run** `{run.root}`: {len(run.metrics())} log lines, {len(evaluations)} evaluations, "
                 f"WER after the *{normalizer}* normalizer (raw WER: the text as written)."]
        if best:
            lines.append(f"**Best checkpoint**: `{best['checkpoint']}` (step {best['step']}), chosen by "
                         f"`{best['metric']}` = {best['value']:.2f}, lower is better, among the evaluations of "
                         f"`{flags.get('eval_split_name', 'the evaluation split')}`.")
        model = run.model_dir()
        lines.append(f"**Model used by 'Try it'**: `{model}`" if model else "**No model saved yet.**")
        lines += [f"**Note**: {problem}" for problem in sorted(run.problems)]
        return "\n\n".join(lines), table, _curves(run), [[k, str(v)] for k, v in sorted(flags.items())]

    def show_clips(label, sort, text_filter):
        files = run.prediction_files()
        if label not in files:
            return "<p>No per-clip predictions in eval/ yet.</p>", gr.update(choices=[], value=None)
        table, ids = clips_table(read_predictions(files[label]), sort or SORTS[0], text_filter or "")
        return table, gr.update(choices=ids, value=ids[0] if ids else None)

    def play(label, clip_id):
        if not clip_id:
            return None, ""
        split = label.split(" @ ")[0] if label else ""
        sound, note = audio.find(split, clip_id)
        return sound, note

    def compare_steps(first, second):
        files = run.prediction_files()
        if first not in files or second not in files:
            return "<p>Pick two evaluations.</p>"
        return comparison_table(read_predictions(files[first]), read_predictions(files[second]))

    def try_it(recording):
        return try_transcribing(transcribers, recording)

    with gr.Blocks(title=f"whisper-train-loop: {os.path.basename(os.path.normpath(run.root))}") as page:
        gr.Markdown(f"# {os.path.basename(os.path.normpath(run.root))}")
        with gr.Tab("Run"):
            summary = gr.Markdown()
            wer_table = gr.Dataframe(headers=["step", "split", "clips", "WER %", "CER %", "raw WER %", "loops %",
                                              "timestamp error s"],
                                     label="WER table", interactive=False, elem_id="wer-table")
            curves = gr.Plot(label="training curves")
            with gr.Accordion("the run's flags", open=False):
                flag_table = gr.Dataframe(headers=["flag", "value"], interactive=False)
            refresh = gr.Button("Reload the run folder")
        with gr.Tab("Errors"):
            labels = list(run.prediction_files())
            during = [label for label in labels if not label.endswith("(final model)")] or labels
            with gr.Row():
                evaluation = gr.Dropdown(labels, value=labels[-1] if labels else None, label="evaluation")
                sort = gr.Radio(list(SORTS), value=SORTS[0], label="order")
                text_filter = gr.Textbox(label="filter (reference, prediction or clip id contains)")
            with gr.Row():
                clip = gr.Dropdown([], label="listen to clip")
                player = gr.Audio(label="clip audio", type="numpy", interactive=False)
                note = gr.Markdown()
            clips = gr.HTML(elem_id="clips")
            gr.Markdown("### Compare two evaluations")
            with gr.Row():
                first = gr.Dropdown(labels, value=during[0] if during else None, label="before")
                second = gr.Dropdown(labels, value=during[-1] if during else None, label="after")
            comparison = gr.HTML()
        with gr.Tab("Try it"):
            # A file path, decoded by this project's decoder (FLAC, Ogg, float WAV, mp3: no FFmpeg).
            recording = gr.Audio(sources=["upload", "microphone"], type="filepath", label="audio",
                                 elem_id="try-audio")
            go = gr.Button("Transcribe", elem_id="transcribe")
            with gr.Row():
                run_text = gr.Textbox(label="this run's model", lines=4, elem_id="run-transcript")
                compare_text = gr.Textbox(label=f"comparison: {compare}" if compare else "comparison (start with --compare MODEL)",
                                          lines=4, elem_id="compare-transcript")

        outputs = [summary, wer_table, curves, flag_table]
        page.load(run_summary, outputs=outputs)
        refresh.click(run_summary, outputs=outputs)
        for trigger in (page.load, evaluation.change, sort.change, text_filter.submit):
            trigger(show_clips, [evaluation, sort, text_filter], [clips, clip])
        clip.change(play, [evaluation, clip], [player, note])
        for trigger in (page.load, first.change, second.change):
            trigger(compare_steps, [first, second], comparison)
        go.click(try_it, recording, [run_text, compare_text])
    return page, theme


def _curves(run: RunFolder):
    """The figure of plot.py, drawn in memory (nothing is written into the run folder)."""
    import matplotlib

    matplotlib.use("Agg")
    return draw_curves(run.metrics(), os.path.basename(os.path.normpath(run.root)))


def try_transcribing(transcribers: Transcribers, path: str | None) -> tuple[str, str]:
    """The two panes of "Try it": each model's transcript and time, or what went wrong with that
    model (a comparison model that cannot be loaded offline never hides the run's own)."""
    if not path:
        return "(upload or record audio first)", ""
    try:
        waveform = decode_audio(path, SAMPLING_RATE)
    except AudioDecodeError as err:
        message = f"error: this audio cannot be read ({str(err).split(': ', 1)[-1]})"
        return message, message if transcribers.paths["compare"] else ""
    outputs = []
    for which in ("run", "compare"):
        if transcribers.paths[which] is None:
            outputs.append("" if which == "compare" else "no model in the run folder yet")
            continue
        try:
            text, seconds = transcribers(which, waveform)
        except UserError as err:
            outputs.append(f"error: {err}")
            continue
        except Exception as err:  # a model that fails to load or run: say so in its pane, keep the page
            outputs.append(f"error: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
            continue
        outputs.append(f"{text}\n\n({seconds:.2f} s, {transcribers.paths[which]})")
    return outputs[0], outputs[1]


def _pct(value) -> str:
    return "" if value is None else f"{float(value):.2f}"


@dataclass
class AppConfig:
    """Where the page is served, and what it compares."""
    _argument_group_name = "The page (app)"

    compare: str | None = flag(None, "A second model for 'Try it' (e.g. the base model: a folder or Hub id).")
    port: int = flag(7860, "Port to serve on.", check=at_least(1))
    host: str = flag("127.0.0.1", "127.0.0.1: this machine only; 0.0.0.0: the network.")


def main(argv: list[str] | None = None) -> int:
    def body():
        parsed = parse_sections({"app": AppConfig, "decoding": DecodingConfig}, argv, prog="train_loop.app",
                                description=__doc__.split("\n\n")[0],
                                positional=("run_dir", "a run's output_dir"))
        if len(parsed["run_dir"]) != 1:
            raise UserError("name one run folder: python -m train_loop.app RUN_DIR")
        options, run_dir = parsed["app"], parsed["run_dir"][0]
        if importlib.util.find_spec("gradio") is None:
            raise UserError("the app needs Gradio: pip install '.[app]' (or pip install gradio)")
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        if "GRADIO_TEMP_DIR" not in os.environ:  # uploads go here, never into the run folder; gone at exit
            uploads = tempfile.mkdtemp(prefix="train-loop-app-")
            os.environ["GRADIO_TEMP_DIR"] = uploads
            atexit.register(shutil.rmtree, uploads, ignore_errors=True)
        run = RunFolder(run_dir)
        _check_port_free(options.host, options.port)
        page, theme = build_page(run, options.compare, parsed["decoding"].generation_max_length)
        print(f"serving {run_dir} at http://{options.host}:{options.port} (Ctrl-C stops)", flush=True)
        page.launch(server_name=options.host, server_port=options.port, theme=theme, show_error=True, quiet=True)

    return run_tool(body)


def _check_port_free(host: str, port: int) -> None:
    """A busy port is one line before anything says "serving" (Gradio would raise later)."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UserError(f"--port {port} on {host}: {err.strerror or err} (another program serves there?); "
                            "choose another --port") from None


if __name__ == "__main__":
    sys.exit(main())
