"""Training curves of a run as a PNG: loss, learning rate, gradient norm, evaluation WER/CER.

    python -m train_loop.plot runs/small-be                 # writes runs/small-be/curves.png
    python -m train_loop.plot runs/small-be --output x.png

Reads only ``metrics.jsonl``, so it works on a finished run and on one still training. A
finished run writes ``curves.png`` by itself.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from .core.console import run_tool
from .core.errors import UserError
from .core.flags import flag, parse_sections
from .outputs.plot import CURVES_FILE, plot_run


@dataclass
class PlotConfig:
    """Where the picture goes."""
    _argument_group_name = "Curves (plot)"

    output: str | None = flag(None, f"PNG to write (default: RUN_DIR/{CURVES_FILE}).")


def main(argv: list[str] | None = None) -> int:
    def body():
        parsed = parse_sections({"plot": PlotConfig}, argv, prog="train_loop.plot",
                                description=__doc__.split("\n\n")[0],
                                positional=("run_dir", "a run's output_dir (holding metrics.jsonl)"))
        if len(parsed["run_dir"]) != 1:
            raise UserError("name one run folder: python -m train_loop.plot RUN_DIR")
        run_dir = parsed["run_dir"][0]
        if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
            raise UserError(f"{run_dir}: no metrics.jsonl (not a run's output_dir, or the run has not logged yet)")
        malformed: list[int] = []
        path = plot_run(run_dir, parsed["plot"].output, malformed)
        if malformed:
            print(f"note: left out {len(malformed)} line(s) of {run_dir}/metrics.jsonl that are not a JSON record "
                  f"with a step (line {', '.join(map(str, malformed[:5]))}{', ...' if len(malformed) > 5 else ''})",
                  file=sys.stderr, flush=True)
        if path is None:
            raise UserError(f"{run_dir}/metrics.jsonl holds no training step yet")
        print(path)

    return run_tool(body)


if __name__ == "__main__":
    sys.exit(main())
