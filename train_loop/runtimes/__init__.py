"""The runtimes people deploy Whisper with: each exports a model in its format and transcribes
with it (for the parity check). Adding one is a module with ``QUANTIZATIONS``, ``export``,
``transcriber`` and ``long_form_transcriber``, and its entry here: ``python -m train_loop.export --format`` offers it."""

from __future__ import annotations

from types import ModuleType

from . import ctranslate2, ggml

RUNTIMES: dict[str, ModuleType] = {"ctranslate2": ctranslate2, "ggml": ggml}
