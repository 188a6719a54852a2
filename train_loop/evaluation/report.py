"""The WER table printed at the end of a run and by ``train_loop.evaluate``, and results.json."""

from __future__ import annotations

import json
import os
from typing import Any


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _count(value: int | None) -> str:
    return "" if value is None else str(value)


def format_wer_table(evaluations: list[dict[str, Any]], normalizer: str,
                     best_step: int | None = None) -> str:
    """One row per evaluation and set: step, set, clips, WER, CER, raw WER (in %), the % of
    clips whose generation ran to the length limit (repetition loops), and the word
    substitutions, deletions and insertions behind the WER."""
    long_form = any(record.get("split") == "longform" for record in evaluations)
    rows = []
    for record in evaluations:
        prefix = "test" if "test_samples" in record else "eval"
        best = (best_step is not None and record.get("step") == best_step and prefix == "eval"
                and record.get("primary", True))
        cells = (str(record.get("step", "")), record.get("split", ""),
                 str(record.get(f"{prefix}_samples", "")), _cell(record.get(f"{prefix}_wer")),
                 _cell(record.get(f"{prefix}_cer")), _cell(record.get(f"{prefix}_wer_raw")),
                 _cell(record.get(f"{prefix}_loop_rate")), _count(record.get(f"{prefix}_substitutions")),
                 _count(record.get(f"{prefix}_deletions")), _count(record.get(f"{prefix}_insertions")))
        if long_form:
            error = record.get(f"{prefix}_timestamp_error_s")
            cells += ("" if error is None else f"{error:.2f}",)
        rows.append((*cells, "best" if best else ""))
    header = ("step", "split", "clips", "WER %", "CER %", "raw WER %", "loops %", "sub", "del", "ins")
    if long_form:
        header += ("ts err s",)
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(len(header))]

    def line(cells, mark=""):
        text = " | ".join(c.ljust(w) if i == 1 else c.rjust(w)
                          for i, (c, w) in enumerate(zip(cells, widths)))
        return f"{text}  <- {mark}" if mark else text

    legend = ("WER table (normalizer: {}; raw WER: no normalization; loops: clips that ran to "
              "--generation_max_length without an end token").format(normalizer)
    if long_form:
        legend += ("; longform: whole recordings (clips = recordings, loops = recordings with a repetition loop, "
                   "ts err = mean distance of each true clip start to the nearest predicted segment start)")
    out = [legend + ")", line(header), "-+-".join("-" * w for w in widths)]
    out += [line(row[:-1], row[-1]) for row in rows]
    return "\n".join(out)


def train_audio_rate(state) -> float | None:
    """Seconds of clip audio trained per second of training (evaluation and saving excluded)."""
    return round(state.audio_seconds_seen / state.train_seconds, 3) if state.train_seconds > 0 else None


def write_results(output_dir: str, state, config) -> str:
    path = os.path.join(output_dir, "results.json")
    payload = {
        "evaluations": state.evaluations,
        "best": {"metric": config.checkpoint.metric_for_best_model, "value": state.best_metric,
                 "step": state.best_step, "checkpoint": state.best_checkpoint},
        "steps": state.step,
        "train_seconds": round(state.train_seconds, 1),
        "train_audio_seconds": round(state.audio_seconds_seen, 2),
        "train_audio_seconds_per_second": train_audio_rate(state),
        "normalizer": config.scoring.eval_normalizer,
    }
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False)
    os.replace(path + ".tmp", path)
    return path
