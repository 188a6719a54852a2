"""Training curves of a run as a PNG: loss, learning rate, gradient norm, evaluation WER/CER
(``python -m train_loop.plot`` draws them at any time).

Reads only ``metrics.jsonl``, so it works on a finished run and on one still training. A
finished run writes ``curves.png`` by itself.
"""

from __future__ import annotations

import json
import math
import os

CURVES_FILE = "curves.png"


def read_metrics(run_dir: str, malformed: list[int] | None = None) -> list[dict]:
    """The records of ``metrics.jsonl``; a line that is not a JSON object with a step (a line
    being written by a live run, or an edited file) is left out, its number added to ``malformed``."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl; is it a run's output_dir?")
    records = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
            elif malformed is not None:
                malformed.append(number)
    return records


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records
              if isinstance(r.get(key), (int, float)) and math.isfinite(r[key]) and "step" in r]
    return [p[0] for p in points], [p[1] for p in points]


def draw_curves(records: list[dict], title: str):
    """A matplotlib figure of the four panels (also shown by ``train_loop.app``)."""
    import matplotlib.pyplot as plt

    panels = [("training loss", [("loss", "loss")], "linear"),
              ("learning rate", [("learning_rate", "lr")], "linear"),
              ("gradient norm (before clipping)", [("grad_norm", "grad norm")], "log"),
              ("evaluation error rates (%)", [("eval_wer", "WER"), ("eval_cer", "CER"), ("eval_wer_raw", "raw WER"),
                                              ("test_wer", "test WER"), ("test_cer", "test CER"),
                                              ("eval_longform_wer", "long-form WER"),
                                              ("eval_longform_loop_rate", "long-form loops")], "linear")]
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    last_step = max(steps) if steps else 1
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for axis, (panel_title, keys, scale) in zip(axes.flat, panels):
        axis.set_xlim(0, last_step * 1.03 + 1)  # one step axis for all panels, even with one evaluation
        drawn = False
        for key, label in keys:
            xs, values = _series(records, key)
            if not xs:
                continue
            marker = "o" if key.startswith(("eval", "test")) else None
            axis.plot(xs, values, marker=marker, markersize=4, linewidth=1.4, label=label)
            drawn = True
        axis.set_title(panel_title)
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
        if drawn:
            values = [v for key, _ in keys for v in _series(records, key)[1]]
            if scale == "log" and all(v > 0 for v in values):
                axis.set_yscale("log")
            elif panel_title.startswith("evaluation") and max(values) > 100:
                # Before fine-tuning WER runs to 1000%+; on a linear axis every later point sits on
                # the floor. Linear up to 10%, logarithmic above: both ends readable.
                from matplotlib import ticker

                axis.set_yscale("symlog", linthresh=10)
                axis.set_ylim(bottom=0)  # an error rate starts at 0: the readable ticks below stay in view
                axis.yaxis.set_major_locator(ticker.FixedLocator([0, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000]))
                axis.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
            if len(keys) > 1:
                axis.legend()
        else:
            axis.text(0.5, 0.5, "no values yet", ha="center", va="center", transform=axis.transAxes, color="gray")
    figure.suptitle(title)
    return figure


def plot_run(run_dir: str, output: str | None = None, malformed: list[int] | None = None) -> str | None:
    """Write the curves; returns the PNG's path, or None when there is nothing to plot yet.
    ``malformed`` collects the numbers of the metrics lines left out."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir, malformed)
    if not any("loss" in r for r in records):
        return None
    figure = draw_curves(records, os.path.basename(os.path.normpath(run_dir)))
    output = output or os.path.join(run_dir, CURVES_FILE)
    try:
        figure.savefig(output + ".tmp.png", dpi=110)
        os.replace(output + ".tmp.png", output)
    finally:
        plt.close(figure)
        if os.path.exists(output + ".tmp.png"):  # a full disk: no half-written picture left behind
            os.remove(output + ".tmp.png")
    return output
