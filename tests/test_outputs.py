"""What a finished run leaves for the people who use the model: a folder every standard tool
loads (with preprocessor_config.json and a model card the Hub reads), training curves, tracker
scalars grouped by train/eval/test, and a Hub upload that is checked at the start."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, train_args

from train_loop import main as train_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def finished_run(tiny_model_dir, dataset_dir, tmp_path):
    out = tmp_path / "run"
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, out, tmp_path / "cache", max_steps=4,
                                      eval_steps=2, save_steps=2, report_to="tensorboard")) == 0
    return out


def test_every_saved_folder_has_preprocessor_config_and_a_model_card_with_the_results(finished_run):
    from transformers import WhisperFeatureExtractor

    results = json.loads((finished_run / "results.json").read_text())
    test = [r for r in results["evaluations"] if "test_wer" in r][-1]
    for folder in (finished_run, finished_run / "checkpoint-4"):
        assert (folder / "preprocessor_config.json").is_file()
        WhisperFeatureExtractor.from_pretrained(folder)  # what CTranslate2's converter and older tools read
        card = (folder / "README.md").read_text()
        front = yaml.safe_load(card.split("---")[1])
        assert front["language"] == ["be"] and front["pipeline_tag"] == "automatic-speech-recognition"
        assert "faster_whisper" in card and "whisper-cli" in card and "pipeline(" in card
        # The flags as the run used them: the precision it ran in, no unused epoch count.
        assert "| `--mixed_precision` | `no` |" in card and "num_train_epochs" not in card
    # Every file of the final model is readable as the umask says (transformers writes its
    # weights 0600: a shared model folder would be half unreadable).
    mask = os.umask(0)
    os.umask(mask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in finished_run.iterdir() if path.is_file()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o666 & ~mask
    front = yaml.safe_load((finished_run / "README.md").read_text().split("---")[1])
    entries = front["model-index"][0]["results"]
    test_entry = [e for e in entries if e["dataset"]["split"] == "test"][0]
    wer = [m for m in test_entry["metrics"] if m["name"].startswith("WER (belarusian")][0]
    assert wer["value"] == round(test["test_wer"], 2)
    assert {m["name"] for m in test_entry["metrics"]} == {"WER (belarusian normalizer)", "CER (belarusian normalizer)",
                                                          "WER (raw text)"}
    assert "apostrophe" in (finished_run / "README.md").read_text()  # the normalizer, and why


def test_a_finished_run_plots_its_curves_and_the_plot_command_redraws_them(finished_run, tmp_path):
    curves = finished_run / "curves.png"
    assert curves.read_bytes()[:8] == PNG_MAGIC and curves.stat().st_size > 20_000
    again = tmp_path / "again.png"
    result = subprocess.run([sys.executable, "-m", "train_loop.plot", str(finished_run), "--output", str(again)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and again.read_bytes()[:8] == PNG_MAGIC
    result = subprocess.run([sys.executable, "-m", "train_loop.plot", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no metrics.jsonl" in result.stderr
    # A damaged metrics file: the malformed lines are left out and named, the rest is drawn.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    lines = (finished_run / "metrics.jsonl").read_text().splitlines()
    (damaged / "metrics.jsonl").write_text("\n".join([lines[0], "[1, 2]", '{"step": "x"}', "{cut sh", *lines[1:]]))
    result = subprocess.run([sys.executable, "-m", "train_loop.plot", str(damaged)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "left out 3 line(s)" in result.stderr and "(line 2, 3, 4)" in result.stderr
    assert "Traceback" not in result.stderr and (damaged / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_tracker_scalars_are_grouped_as_train_eval_and_test(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [os.path.join(root, name) for root, _, names in os.walk(finished_run / "tensorboard")
              for name in names if name.startswith("events.")]
    tags = set()
    for path in events:
        accumulator = EventAccumulator(path)
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "eval/wer", "eval/cer", "test/wer"} <= tags
    assert not any(tag.startswith(("eval_", "test_")) for tag in tags)


@pytest.mark.unit
def test_a_tracker_that_is_not_installed_is_named_at_the_start(tiny_model_dir, dataset_dir, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    if __import__("importlib").util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    code = train_main.main(train_args(tiny_model_dir, dataset_dir, tmp_path / "o", tmp_path / "c") +
                           ["--report_to", "tensorboard", "wandb"])
    assert code == 2 and "--report_to wandb: wandb is not installed (pip install wandb)" in capsys.readouterr().err


def test_the_upload_holds_exactly_the_final_model_files(finished_run, tmp_path):
    from train_loop.outputs.hub import stage_final_files

    staging = tmp_path / "staging"
    staging.mkdir()
    names = stage_final_files(str(finished_run), str(staging))
    assert sorted(os.listdir(staging)) == names
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "preprocessor_config.json", "processor_config.json", "README.md", "results.json", "curves.png",
            "metrics.jsonl"} == set(names)
    assert (staging / "README.md").read_text() == (finished_run / "README.md").read_text()


@pytest.mark.parametrize("env, message", [
    ({"HF_HUB_OFFLINE": "1"}, "--push_to_hub: HF_HUB_OFFLINE is set"),
    ({"HF_HUB_OFFLINE": "0", "HF_TOKEN": "", "HF_HOME": "EMPTY"}, "--push_to_hub: no Hugging Face token"),
])
def test_push_to_hub_fails_at_the_start_offline_or_without_a_token(tiny_model_dir, dataset_dir, tmp_path, env, message):
    env = {**os.environ, **{k: (str(tmp_path / "hf-home") if v == "EMPTY" else v) for k, v in env.items()}}
    env.pop("HF_TOKEN", None) if env.get("HF_TOKEN") == "" else None
    result = subprocess.run([sys.executable, "-m", "train_loop.main",
                             *train_args(tiny_model_dir, dataset_dir, tmp_path / "o", tmp_path / "c"),
                             "--push_to_hub", "--hub_model_id", "someone/whisper-be"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert "step 1/" not in result.stdout  # before any training
