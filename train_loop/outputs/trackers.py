"""Experiment trackers: the --report_to choices, each the name of an accelerate tracker.

Metrics always go to ``metrics.jsonl`` and stdout; trackers get a copy, with the scalars named
``train/loss``, ``train/learning_rate``, ``eval/wer``, ``test/wer``... so each group is one
section of the tracker's page. One entry here adds a choice to --report_to (accelerate does the
rest); the package it needs is checked when the flags are read.
"""

from __future__ import annotations

import importlib.util

# --report_to name -> (accelerate's tracker name, the package it needs)
TRACKERS: dict[str, tuple[str, str] | None] = {
    "tensorboard": ("tensorboard", "tensorboard"),  # output_dir/tensorboard
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),  # MLFLOW_TRACKING_URI, else ./mlruns
    "none": None,
}


def missing_packages(names: list[str]) -> list[tuple[str, str]]:
    """(tracker, package) for every chosen tracker whose package is not installed."""
    return [(name, TRACKERS[name][1]) for name in names
            if TRACKERS.get(name) and importlib.util.find_spec(TRACKERS[name][1]) is None]


def scalar_name(key: str) -> str:
    """``eval_wer`` -> ``eval/wer``, ``test_cer`` -> ``test/cer``, ``loss`` -> ``train/loss``."""
    for group in ("eval", "test"):
        if key.startswith(group + "_"):
            return f"{group}/{key[len(group) + 1:]}"
    return f"train/{key}"
