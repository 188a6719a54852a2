"""The package's imports point one way: the parts in the order a clip travels, the commands on top.

Read from the source (scripts/code_metrics.py parses it; nothing is imported), so a new import
that points the wrong way fails here with the edge named, not as a cycle somewhere later.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "train_loop"
_spec = importlib.util.spec_from_file_location("code_metrics", ROOT / "scripts" / "code_metrics.py")
code_metrics = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(code_metrics)

# Lowest first: a module may import only from its own layer or the ones before it.
LAYERS = ["train_loop.core", "train_loop.synthetic", "train_loop.data", "train_loop.outputs",
          "train_loop.evaluation", "train_loop.training", "train_loop.runtimes"]
CORE = ["train_loop.core.errors", "train_loop.core.paths", "train_loop.core.console", "train_loop.core.flags",
        "train_loop.core.text",
        "train_loop.core.processes", "train_loop.core.model"]
# What users run (python -m train_loop.<command>); nothing in the package imports them.
COMMANDS = {f"train_loop.{name}" for name in ("main", "evaluate", "transcribe", "export", "stats", "average",
                                              "plot", "app", "demo", "shard")}


def test_every_module_is_in_a_layer_or_is_a_command():
    modules = set(code_metrics.find_modules(str(PACKAGE)))
    placed = {m for m in modules if any(m == layer or m.startswith(layer + ".") for layer in LAYERS)}
    benchmarks = {m for m in modules if m.startswith("train_loop.bench")}
    assert modules - placed - benchmarks - COMMANDS == {"train_loop"}


@pytest.mark.parametrize("layers", [LAYERS, CORE], ids=["parts", "core"])
def test_imports_point_down_the_layers(layers):
    """E.g. data never imports training or evaluation; evaluation never imports training."""
    graph = code_metrics.all_imports(str(PACKAGE))  # lazy imports too: they are imports all the same
    assert code_metrics.layer_violations(graph, layers, code_metrics.import_graph(str(PACKAGE))) == []


def test_nothing_imports_a_command():
    graph = code_metrics.all_imports(str(PACKAGE))
    wrong = sorted(f"{source} -> {target}" for source, targets in graph.items() for target in targets
                   if target in COMMANDS)
    assert wrong == []


def test_no_import_cycles():
    assert code_metrics.cycles(code_metrics.all_imports(str(PACKAGE))) == []


def test_the_check_finds_a_wrong_way_import(tmp_path):
    """The checks above can fail: a planted data -> training import is found."""
    fake = tmp_path / "train_loop"
    for name in ("data", "training"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "training" / "loop.py").write_text("from ..data import rows\n")
    (fake / "data" / "rows.py").write_text("def f():\n    from ..training.loop import x\n")
    graph = code_metrics.all_imports(str(fake))
    assert code_metrics.layer_violations(graph, LAYERS, code_metrics.import_graph(str(fake)))
    assert code_metrics.cycles(graph)


def test_commands_import_their_heavy_parts_where_they_use_them():
    """`python -m train_loop.<command> --help` answers before torch loads: a command's module-level
    imports stay light (the flag sections and small helpers)."""
    heavy = re.compile(r"^(import|from) (torch|accelerate|datasets|transformers\.models)\b", re.M)
    for command in sorted(COMMANDS):
        source = (PACKAGE / f"{command.split('.')[-1]}.py").read_text(encoding="utf-8")
        assert not heavy.search(source), command
