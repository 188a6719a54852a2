import dataclasses
import subprocess
import sys
import typing

import pytest

from train_loop.core.errors import UserError
from train_loop.training.config import TRAIN_SECTIONS, TrainConfig, parse_train_config

pytestmark = pytest.mark.unit

BASE = ["--output_dir", "out", "--data_dir", "data"]
FLOAT_FLAGS = sorted(name for cls in TRAIN_SECTIONS.values() for name, hint in typing.get_type_hints(cls).items()
                     if float in (hint, *typing.get_args(hint)))


def test_yaml_recipe_is_read_and_command_line_overrides_it(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("learning_rate: 3.0e-5\nmax_steps: 100\nstreaming: true\n"
                      "gradient_checkpointing: yes\nsave_total_limit: 2\n")
    config = parse_train_config(BASE + ["--config", str(recipe), "--max_steps", "7"])
    assert config.training.learning_rate == 3e-5
    assert config.training.max_steps == 7  # the flag wins over the file
    assert config.source.streaming is True
    assert config.model.gradient_checkpointing is True
    assert config.checkpoint.save_total_limit == 2


def test_boolean_flags_accept_bare_and_explicit_values():
    assert parse_train_config(BASE + ["--gradient_checkpointing"]).model.gradient_checkpointing
    assert not parse_train_config(BASE + ["--gradient_checkpointing", "false"]).model.gradient_checkpointing


@pytest.mark.parametrize("argv, message", [
    (["--learning_rat", "1e-4"], "unknown flag --learning_rat (did you mean --learning_rate?)"),
    (["--lr_scheduler_type", "exp"], "invalid choice: 'exp'"),
    (["--max_steps", "ten"], "invalid int value: 'ten'"),
])
def test_bad_flags_name_the_flag(argv, message):
    with pytest.raises(UserError) as err:
        parse_train_config(BASE + argv)
    assert message in str(err.value)


def test_recipe_with_unknown_key_or_bad_value_names_file_and_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lerning_rate: 1e-4\n")
    with pytest.raises(UserError, match=r"r\.yaml: unknown key 'lerning_rate' \(did you mean learning_rate\?\)"):
        parse_train_config(BASE + ["--config", str(recipe)])
    recipe.write_text("max_steps: many\n")
    with pytest.raises(UserError, match=r"r\.yaml: argument --max_steps: invalid int value: 'many'"):
        parse_train_config(BASE + ["--config", str(recipe)])


@pytest.mark.parametrize("argv, message", [
    (["--output_dir", "o"], "exactly one data source"),
    (["--output_dir", "o", "--data_dir", "d", "--dataset_name", "x"], "exactly one data source"),
    (["--data_dir", "d"], "--output_dir is required"),
    (BASE + ["--streaming"], "--streaming needs --max_steps"),
    (BASE + ["--max_duration_in_seconds", "40"], "cannot exceed 30"),
    (BASE + ["--warmup_steps", "10", "--max_steps", "5"], "longer than --max_steps"),
])
def test_inconsistent_flags_are_rejected(argv, message):
    with pytest.raises(UserError, match=message):
        parse_train_config(argv)


@pytest.mark.parametrize("name", FLOAT_FLAGS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_no_number_flag_takes_nan_or_infinity(name, value):
    """NaN passes every `< 0` check; each float flag is checked for finiteness at parse time."""
    with pytest.raises(UserError, match=f"--{name} must be a finite number"):
        parse_train_config(BASE + [f"--{name}={value}"])


def test_a_rule_declared_with_its_field_names_the_flag_and_the_value():
    from train_loop.core.flags import at_least, check_fields, flag

    @dataclasses.dataclass
    class Section:
        workers: int = flag(1, "workers", check=at_least(1))

    check_fields(Section(workers=3))
    with pytest.raises(UserError, match="--workers must be at least 1, got 0"):
        check_fields(Section(workers=0))
    assert {"learning_rate", "max_grad_norm", "weight_decay", "adam_epsilon"} <= set(FLOAT_FLAGS)


def test_help_starts_with_a_short_usage_and_loads_no_torch():
    """`--help` prints before torch, accelerate or datasets load (seconds saved on every look)."""
    probe = ("import runpy, sys; sys.argv = ['train_loop.main', '--help']\n"
             "try:\n    runpy.run_module('train_loop.main', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('LOADED', sorted(m for m in ('torch', 'accelerate', 'datasets') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: python -m train_loop.main [--config RECIPE.yaml] [--FLAG VALUE ...]\n")
    assert "LOADED []" in out


def test_help_lists_every_flag_with_its_default():
    out = subprocess.run([sys.executable, "-m", "train_loop.main", "--help"], capture_output=True,
                         text=True, check=True).stdout
    flat = TrainConfig().to_flat_dict()
    for name, default in flat.items():
        assert f"--{name}" in out, name
    assert "(default: 1e-05)" in out and "(default: validation)" in out
    # The flags the issue names, HF-style.
    for name in ["train_split_name", "eval_split_name", "test_split_name", "audio_column_name",
                 "text_column_name", "gradient_accumulation_steps", "lr_scheduler_type",
                 "mixed_precision", "max_eval_samples", "generation_max_length", "num_beams",
                 "streaming", "preprocessing_num_workers", "dataloader_num_workers",
                 "min_duration_in_seconds", "max_duration_in_seconds", "seed", "resume_from",
                 "save_total_limit", "metric_for_best_model"]:
        assert name in flat


def test_flag_names_are_unique_across_sections():
    names = [f.name for cls in TRAIN_SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names))


def test_choices_come_from_the_registries_that_hold_the_implementations():
    from train_loop.core.flags import build_parser
    from train_loop.core.text import NORMALIZERS
    from train_loop.data.config import SOURCE_FLAGS
    from train_loop.data.sources import SOURCES
    from train_loop.outputs.trackers import TRACKERS
    from train_loop.training.optim import OPTIMIZERS
    from train_loop.training.schedule import DECAYS

    parser = build_parser(TRAIN_SECTIONS, "t", "")
    choices = {action.dest: set(action.choices) for action in parser._actions if action.choices}
    assert choices["lr_scheduler_type"] == set(DECAYS)
    assert choices["optim"] == set(OPTIMIZERS)
    assert choices["eval_normalizer"] == set(NORMALIZERS)
    assert choices["report_to"] == set(TRACKERS)
    assert set(SOURCES) == set(SOURCE_FLAGS)


def test_list_and_optional_fields_parse_from_flags_and_recipes(tmp_path):
    from typing import Optional

    from train_loop.core.flags import flag, parse_sections

    @dataclasses.dataclass
    class Lists:
        target_modules: list[str] = dataclasses.field(default_factory=lambda: ["q_proj"])
        limit: Optional[int] = flag(None, "a limit")

    got = parse_sections({"lists": Lists}, ["--target_modules", "q_proj", "v_proj", "--limit", "3"], "t", "")
    assert got["lists"].target_modules == ["q_proj", "v_proj"] and got["lists"].limit == 3
    assert parse_sections({"lists": Lists}, ["--limit", "none"], "t", "")["lists"].limit is None
    recipe = tmp_path / "r.yaml"
    recipe.write_text("target_modules: [k_proj, out_proj]\nlimit: 5\n")
    got = parse_sections({"lists": Lists}, ["--config", str(recipe)], "t", "")
    assert got["lists"].target_modules == ["k_proj", "out_proj"] and got["lists"].limit == 5


@pytest.mark.parametrize("argv, message", [
    (BASE + ["--metric_for_best_model", "eval_seconds"], "not a quality metric of the evaluation"),
    (BASE + ["--eval_split_name", "none", "--load_best_model_at_end"], "needs evaluations"),
    (BASE + ["--eval_split_name", ",", "--load_best_model_at_end"], "names no set"),
    (BASE + ["--min_learning_rate", "1e-3", "--learning_rate", "1e-4"], "between 0 and --learning_rate"),
    (BASE + ["--use_lora", "--lora_r", "0"], "--lora_r must be at least 1"),
])
def test_combinations_that_make_no_sense_are_rejected(argv, message):
    with pytest.raises(UserError, match=message):
        parse_train_config(argv)


def test_an_output_dir_that_overlaps_an_input_is_refused(tmp_path):
    """--overwrite_output_dir (which an error suggests) would otherwise delete the base model."""
    model, data = tmp_path / "whisper-base", tmp_path / "data"
    model.mkdir()
    data.mkdir()
    for output, named in ((model, "--model_name_or_path"), (model / "run", "--model_name_or_path"),
                          (data, "--data_dir"), (tmp_path, "--model_name_or_path")):
        with pytest.raises(UserError, match=f"--output_dir {output} overlaps {named}"):
            parse_train_config(["--model_name_or_path", str(model), "--data_dir", str(data), "--output_dir",
                                str(output), "--overwrite_output_dir"])
