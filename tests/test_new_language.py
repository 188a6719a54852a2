"""A language Whisper has no token for: --language xx --language_token_from uk."""

import json

import pytest
from conftest import train_args

from train_loop import evaluate as evaluate_cli
from train_loop import main as train_main
from train_loop.evaluation.transcriber import Transcriber


def test_a_new_language_borrows_a_token_and_every_tool_agrees(tiny_model_dir, dataset_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, out, tmp_path / "c", language="xx",
                                      language_token_from="uk", max_steps=2, test_split_name="none")) == 0
    assert "language xx: decoded with Whisper's <|uk|> token" in capsys.readouterr().out
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["language"].strip("<|>") == "uk" and generation["trained_language"] == "xx"
    card = (out / "README.md").read_text()
    assert "- xx" in card and "`<|uk|>` token" in card and 'language="uk"' in card

    def predictions(name, *flags):
        folder = tmp_path / name
        assert evaluate_cli.main(["--model", str(out), "--data_dir", str(dataset_dir), "--split", "validation",
                                  "--output_dir", str(folder), "--cache_dir", str(tmp_path / "c"),
                                  "--generation_max_length", "6", *flags]) == 0
        return (folder / "eval" / "validation-predictions.jsonl").read_text()

    assert predictions("as-xx", "--language", "xx") == predictions("as-uk", "--language", "uk") \
        == predictions("default")
    assert Transcriber(str(out), "xx", "transcribe").language == "uk"
    assert Transcriber(str(out), None, "transcribe").language == "uk"


@pytest.mark.unit
def test_an_unknown_language_without_a_token_says_how_to_borrow_one(tiny_model_dir, dataset_dir, tmp_path, capsys):
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, tmp_path / "r", tmp_path / "c", language="xx")) == 2
    assert "--language_token_from" in capsys.readouterr().err
