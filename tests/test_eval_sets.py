"""Several evaluation sets, the forgetting guard and transcript health, end to end on a tiny model."""

import json

import pytest
import torch
from conftest import train_args, write_audiofolder

from train_loop import main as train_main
from train_loop.evaluation.generation import reached_limit

ENGLISH = ["The cat sat on the mat.", "A quick brown fox.", "Good morning to you.", "It is raining today."]


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_reached_limit_counts_rows_without_an_end_token_up_to_the_limit():
    eos = 50257
    tokens = torch.tensor([[5, 6, 7, 8],        # four tokens, no end: ran to the limit
                           [5, 6, eos, eos],    # ended, padded with the end token
                           [5, 6, 7, eos]])     # ended one token before the limit
    assert reached_limit(tokens, eos, max_length=4) == [True, False, False]
    assert reached_limit(tokens, [eos], max_length=5) == [False, False, False]


@pytest.fixture
def guard_dir(tmp_path):
    return write_audiofolder(tmp_path / "english", {"validation": ENGLISH})


def test_every_set_gets_its_own_rates_file_and_table_row_and_the_guard_its_language(
        tiny_model_dir, dataset_dir, guard_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, dataset_dir, out, tmp_path / "c", max_steps=2, eval_steps=1,
                      eval_split_name="validation,test", test_split_name="none", guard_data_dir=guard_dir,
                      guard_language="en", metric_for_best_model="eval_test_wer")
    assert train_main.main(args) == 0
    printed = capsys.readouterr().out
    evals = [row for row in lines(out / "metrics.jsonl") if any(k.startswith("eval_") for k in row)]
    merged = {}
    for row in evals:
        if row["step"] == 2:
            merged.update(row)
    for name in ("validation", "test", "guard"):
        for key in ("wer", "cer", "wer_raw", "loop_rate", "substitutions", "deletions", "insertions", "samples"):
            assert f"eval_{name}_{key}" in merged, f"eval_{name}_{key}"
    # eval_wer is the first set's
    assert merged["eval_wer"] == merged["eval_validation_wer"]
    assert merged["eval_validation_samples"] == 4 and merged["eval_test_samples"] == 4
    assert merged["eval_guard_samples"] == len(ENGLISH)
    # each set has its own predictions file; the first keeps the single-set name
    assert len(lines(out / "eval" / "step-2.jsonl")) == 4
    assert len(lines(out / "eval" / "test-step-2.jsonl")) == 4
    guard = lines(out / "eval" / "guard-step-2.jsonl")
    assert sorted(row["reference"] for row in guard) == sorted(ENGLISH)
    # transcript health: the loop rate is the share of clips that reached the length limit
    for name, file_name in (("validation", "step-2.jsonl"), ("guard", "guard-step-2.jsonl")):
        rows = lines(out / "eval" / file_name)
        assert merged[f"eval_{name}_loop_rate"] == pytest.approx(100 * sum(r["reached_limit"] for r in rows) / len(rows))
    # the edit counts add up to the word errors of the predictions file
    rows = lines(out / "eval" / "step-2.jsonl")
    assert (merged["eval_substitutions"] + merged["eval_deletions"] + merged["eval_insertions"]
            == sum(r["word_errors"] for r in rows))
    # the WER table: a row per set and step, with the loop share and edit counts
    table = printed[printed.index("WER table"):]
    assert "loops %" in table and " sub " in table and " del " in table and " ins" in table
    for name in ("validation", "test", "guard"):
        assert f"| {name}" in table
    # the best checkpoint follows --metric_for_best_model eval_test_wer
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    best_test = min(row["eval_test_wer"] for row in evals if "eval_test_wer" in row)
    assert state["best_metric"] == best_test
    assert "forgetting guard (en" in printed


@pytest.mark.parametrize("extra, expected", [
    ({"eval_split_name": "validation,validation"}, "a set is named twice"),
    ({"metric_for_best_model": "eval_guard_wer"}, "--metric_for_best_model eval_guard_wer: not a quality metric"),
    ({"guard_language": "xx"}, "--guard_language xx: not a language Whisper knows"),
    ({"guard_split_name": "dev"}, "--guard_data_dir"),  # the guard's folder is named by its own flag
])
def test_bad_evaluation_set_flags_are_one_line_errors(tiny_model_dir, dataset_dir, tmp_path, capsys, extra,
                                                      expected, guard_dir):
    if extra.get("guard_language") or extra.get("guard_split_name"):
        extra = {**extra, "guard_data_dir": guard_dir}
    code = train_main.main(train_args(tiny_model_dir, dataset_dir, tmp_path / "run", tmp_path / "c", **extra))
    assert code == 2
    err = capsys.readouterr().err
    assert expected in err and (" --data_dir" not in err or "guard_split_name" not in extra)


def test_prepare_only_prepares_every_split_and_trains_nothing(tiny_model_dir, dataset_dir, tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, out, cache, prepare_only="true")) == 0
    printed = capsys.readouterr().out
    assert "--prepare_only: every split is prepared in" in printed
    assert len(list(cache.glob("prepared/*/features.arrow"))) == 3  # train, validation, test
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()
    # a run with the same data flags finds them: nothing new is prepared
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, tmp_path / "run2", cache, max_steps=1)) == 0
    assert len(list(cache.glob("prepared/*/features.arrow"))) == 3
