"""Flags from plain dataclasses: transformers' ``HfArgumentParser`` with one-line errors,
YAML recipes, and rules declared with each field.

Every field is one flag (``--field_name``) with its help text and default in ``--help``; the
types, optionals, lists and booleans come from the annotations. A YAML recipe (``--config
recipe.yaml``) may set any of the same names; flags on the command line override the file,
which overrides the defaults. A field's own rule (``check=at_least(1)``) is declared with it
and checked after parsing; every float must also be finite (NaN passes every ``< 0`` test).
Rules that involve several fields belong to the command's validation.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from transformers.hf_argparser import HfArgumentParser, string_to_bool

from .errors import UserError

CHECK = "check"  # the metadata key of a field's rule (not an argparse keyword: removed before)


@dataclass(frozen=True)
class Check:
    """A rule for one flag's value: ``test(value)`` must hold; ``says`` completes
    "--name ..." in the error (e.g. "must be at least 1")."""

    test: Callable[[Any], bool]
    says: str


def at_least(low: float) -> Check:
    return Check(lambda value: value >= low, f"must be at least {low:g}")


def positive() -> Check:
    return Check(lambda value: value > 0, "must be positive")


def between(low: float, high: float, high_inclusive: bool = True) -> Check:
    if high_inclusive:
        return Check(lambda value: low <= value <= high, f"must be between {low:g} and {high:g}")
    return Check(lambda value: low <= value < high, f"must be in [{low:g}, {high:g})")


def flag(default: Any, help: str, choices: Sequence[str] | None = None, check: Check | None = None,
         aliases: Sequence[str] = ()):
    """A field with its --help text, its choices, its own rule and other names it answers to."""
    metadata: dict[str, Any] = {"help": help}
    if aliases:
        metadata["aliases"] = list(aliases)
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if check is not None:
        metadata[CHECK] = check
    return field(default=default, metadata=metadata)


def check_fields(section) -> None:
    """Each field's declared rule, and finiteness of every float: one line naming the flag."""
    for item in dataclasses.fields(section):
        value = getattr(section, item.name)
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{item.name} must be a finite number, got {value}")
        rule = item.metadata.get(CHECK)
        if rule is not None and not rule.test(value):
            raise UserError(f"--{item.name} {rule.says}, got {value:g}" if isinstance(value, (int, float))
                            else f"--{item.name} {rule.says}, got {value}")


class FlagParser(HfArgumentParser):
    """HfArgumentParser whose errors are one line naming the flag (``UserError``), never an
    argparse usage dump; a misspelled flag gets the closest known one."""

    @staticmethod
    def _parse_dataclass_field(parser, dataclass_field: dataclasses.Field):
        if CHECK in dataclass_field.metadata:  # ours, not argparse's: checked after parsing
            dataclass_field = _without_check(dataclass_field)
        HfArgumentParser._parse_dataclass_field(parser, dataclass_field)

    def error(self, message: str):
        # "argument --max_steps/--max-steps: ..." -> name the flag once, as it is documented
        raise UserError(re.sub(r"(--\w+)/--[\w-]+", r"\1", message))

    def unknown(self, leftovers: list[str]) -> UserError:
        flags = [arg for arg in leftovers if arg.startswith("-")]
        if not flags:  # a stray value, e.g. a flag given two values
            return UserError(f"unexpected argument {' '.join(leftovers)}; flags take the form --name value")
        known = [option for action in self._actions for option in action.option_strings]
        hints = []
        for arg in flags:
            close = difflib.get_close_matches(arg.split("=")[0], known, n=1)
            hints.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
        return UserError(f"unknown flag {', '.join(hints)}; see --help for every flag")


def build_parser(sections: dict[str, type], prog: str, description: str, usage: str | None = None) -> FlagParser:
    # No abbreviations: a truncated flag in a week-long run's command must fail, not guess.
    # A short usage line: argparse's own lists every flag (90 lines before the first section).
    usage = usage or f"python -m {prog} [--config RECIPE.yaml] [--FLAG VALUE ...]"
    parser = FlagParser(list(sections.values()), prog=prog, description=description, allow_abbrev=False,
                        usage=usage)
    parser.add_argument("--config", metavar="RECIPE.yaml", default=None,
                        help="YAML file with any of these flags; command-line flags override it.")
    optional = {name for cls in sections.values() for name, hint in typing.get_type_hints(cls).items()
                if type(None) in typing.get_args(hint)}
    for action in parser._actions:
        # 'none' / 'null' clears an optional flag (e.g. a recipe's --max_eval_samples).
        if action.dest in optional and action.type not in (None, string_to_bool):
            action.type = _none_or(action.type)
    return parser


def parse_sections(sections: dict[str, type], argv: Sequence[str] | None, prog: str,
                   description: str, positional: tuple[str, str] | None = None) -> dict[str, Any]:
    """Defaults < YAML recipe < command line, returned as one instance per section.
    ``positional`` (name, help): also take any number of positional arguments, returned under
    that name (e.g. the files to transcribe)."""
    argv = _negative_values_attached(list(sys.argv[1:] if argv is None else argv))
    usage = f"python -m {prog} [--FLAG VALUE ...] [{positional[0].upper()} ...]" if positional else None
    parser = build_parser(sections, prog, description, usage)
    if positional:
        parser.add_argument(positional[0], nargs="*", help=positional[1])
    recipe_path = _recipe_path(argv)
    recipe = recipe_flags(recipe_path, parser) if recipe_path else []
    # The recipe becomes flags in front of the command line's: argparse keeps the last value of
    # a flag, so the command line wins, and the recipe's values get the same type checks.
    *built, leftovers = parser.parse_args_into_dataclasses(recipe + argv, return_remaining_strings=True,
                                                          look_for_args_file=False)
    if leftovers:
        raise parser.unknown(leftovers)
    parsed = dict(zip(sections, built))  # the namespace of --config (and positionals) comes last
    for section in parsed.values():
        check_fields(section)
    if positional:
        parsed[positional[0]] = getattr(built[-1], positional[0])
    return parsed


def _negative_values_attached(argv: list[str]) -> list[str]:
    """``--gain_db -6,6`` -> ``--gain_db=-6,6``: argparse takes a value that starts with '-' and is
    not a plain number for another flag."""
    out: list[str] = []
    for token in argv:
        if (out and out[-1].startswith("--") and "=" not in out[-1] and len(token) > 1 and token[0] == "-"
                and (token[1].isdigit() or token[1] == ".") and "," in token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _recipe_path(argv: list[str]) -> str | None:
    for position, arg in enumerate(argv):
        if arg == "--config":
            if position + 1 == len(argv):
                raise UserError("--config needs a file: --config RECIPE.yaml")
            return argv[position + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def recipe_flags(path: str, parser: FlagParser) -> list[str]:
    """A YAML recipe as command-line flags; every key must be a flag, every value valid for it."""
    import yaml

    if not os.path.isfile(path):
        raise UserError(f"--config {path}: no such file")
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
    except yaml.YAMLError as err:
        raise UserError(f"--config {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: expected a mapping of flag names to values")
    known = sorted({action.dest for action in parser._actions} - {"help", "config"})
    flags: list[str] = []
    for key, value in values.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(f"--config {path}: unknown key '{key}'{hint}")
        if isinstance(value, dict):
            raise UserError(f"--config {path}: key '{key}' holds a mapping; give a value")
        items = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *("none" if item is None else str(item).lower() if isinstance(item, bool)
                                else str(item) for item in items)]
    try:
        parser.parse_known_args(flags)
    except UserError as err:
        raise UserError(f"--config {path}: {err}") from None
    return flags


def _none_or(parse):
    def parse_optional(text: str):
        return None if text.lower() in ("none", "null") else parse(text)

    parse_optional.__name__ = getattr(parse, "__name__", "value")  # argparse names it in errors
    return parse_optional


def _without_check(dataclass_field: dataclasses.Field) -> dataclasses.Field:
    stripped = copy.copy(dataclass_field)
    stripped.metadata = types.MappingProxyType({k: v for k, v in dataclass_field.metadata.items() if k != CHECK})
    return stripped
