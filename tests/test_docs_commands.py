"""Every command the documentation prints exists, and so does every flag written in it.

Reads README.md and every page under docs/, collects each `python -m train_loop...` and
`accelerate launch ... train_loop/main.py` (or `accelerate launch -m train_loop...`) command,
from fenced blocks (with their `\\` continuations) and from inline code, and checks that the
module answers `--help` with exit 0 and that each `--flag` written after the module is one of
the flags its `--help` lists.
"""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import sys
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]

# Where a command ends inside a line of documentation: a shell comment, a pipe or another command.
COMMAND_END = re.compile(r"\s(?:#|\||&&|;|>)\s")
PYTHON_COMMAND = re.compile(r"python3?\s+-m\s+(train_loop(?:\.\w+)*)(.*)")
ACCELERATE_COMMAND = re.compile(r"accelerate\s+launch\b(.*?)(?:\s|^)(?:train_loop/main\.py|-m\s+(train_loop(?:\.\w+)*))(.*)")
FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")


def command_texts(markdown: str) -> list[str]:
    """Fenced blocks as logical lines (continuations joined), then every inline code span."""
    texts: list[str] = []
    fenced = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
    for block in fenced.findall(markdown):
        texts += block.replace("\\\n", " ").splitlines()
    # Inline code never spans paragraphs: pairing backticks per paragraph keeps one stray
    # backtick from shifting every span after it.
    for paragraph in re.split(r"\n\s*\n", fenced.sub("", markdown)):
        texts += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", paragraph)]
    return texts


def documented_commands() -> list[tuple[str, str, tuple[str, ...], str]]:
    """(page, module, flags, the command as written) for each command in the documentation."""
    found = []
    for page in PAGES:
        for text in command_texts(page.read_text(encoding="utf-8")):
            text = COMMAND_END.split(f" {text} ")[0].strip()
            launched = ACCELERATE_COMMAND.search(text)
            direct = PYTHON_COMMAND.search(text)
            if launched:
                module, rest = launched.group(2) or "train_loop.main", launched.group(3)
            elif direct:
                module, rest = direct.group(1), direct.group(2)
            else:
                continue
            if rest and not rest[0].isspace():  # a placeholder such as `python -m train_loop.<tool>`
                continue
            flags = tuple(dict.fromkeys(FLAG.findall(rest)))
            found.append((page.name, module, flags, text))
    return found


COMMANDS = documented_commands()


def help_text(module: str) -> str:
    """What `python -m MODULE --help` prints, run in this process (imports are shared, so the
    whole check takes seconds); fails unless it exits 0."""
    runnable = module if module != "train_loop.bench" else "train_loop.bench.__main__"
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [runnable, "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy: "found in sys.modules" (imported already)
            runpy.run_module(runnable, run_name="__main__", alter_sys=False)
    finally:
        sys.argv = argv
    assert exit_info.value.code in (0, None), f"{module} --help exited with {exit_info.value.code}"
    return out.getvalue()


_HELP: dict[str, str] = {}


def accepted_flags(module: str) -> set[str]:
    if module not in _HELP:
        _HELP[module] = help_text(module)
    return set(FLAG.findall(_HELP[module]))


def test_the_documentation_names_commands():
    """The collector finds what the README shows (it cannot pass by finding nothing)."""
    modules = {module for _, module, _, _ in COMMANDS}
    assert {"train_loop.main", "train_loop.evaluate", "train_loop.transcribe", "train_loop.export",
            "train_loop.bench.finetune"} <= modules, modules
    assert any(flags and module == "train_loop.main" for _, module, flags, _ in COMMANDS)


@pytest.mark.parametrize("module", sorted({module for _, module, _, _ in COMMANDS}))
def test_every_documented_command_answers_help_and_accepts_its_flags(module):
    accepted = accepted_flags(module)
    unknown = [f"{page}: {flag} in `{text}`" for page, name, flags, text in COMMANDS if name == module
               for flag in flags if flag not in accepted]
    assert not unknown, f"{module} does not accept:\n" + "\n".join(unknown)


def test_an_unknown_flag_is_caught():
    """The check itself: a flag the module does not have is reported."""
    assert "--learning_rate" in accepted_flags("train_loop.main")
    assert "--no_such_flag" not in accepted_flags("train_loop.main")
