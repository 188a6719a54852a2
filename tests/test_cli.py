"""The standalone tools: evaluation of a saved model, dataset statistics."""

import json

import jiwer
import pytest
from conftest import write_bad_rows

from train_loop import evaluate as evaluate_cli
from train_loop import stats as stats_cli
from train_loop.core.text import BelarusianTextNormalizer


def test_evaluate_a_saved_model_on_a_split(tiny_model_dir, dataset_dir, tmp_path, capsys):
    out = tmp_path / "eval-out"
    code = evaluate_cli.main(["--model", tiny_model_dir, "--data_dir", str(dataset_dir), "--split", "test",
                              "--output_dir", str(out), "--cache_dir", str(tmp_path / "c"),
                              "--per_device_eval_batch_size", "3", "--generation_max_length", "6",
                              "--dataloader_num_workers", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "WER table" in printed and "| test" in printed
    rows = [json.loads(line) for line in (out / "eval" / "test-predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and len({row["id"] for row in rows}) == 4
    result = json.loads((out / "eval" / "test-results.json").read_text())
    normalize = BelarusianTextNormalizer()
    expected = 100 * jiwer.wer([normalize(r["reference"]) for r in rows],
                               [normalize(r["prediction"]) for r in rows])
    assert result["wer"] == pytest.approx(expected)
    assert f"{expected:.2f}" in printed


@pytest.fixture(scope="module")
def audio_sensitive_model_dir(tmp_path_factory):
    """The tiny model with large random weights, so that every clip gets its own transcript
    (at the usual init they all get the same one, which would hide a mix-up of clips)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    from train_loop.synthetic.models import build_tiny_whisper

    path = str(tmp_path_factory.mktemp("tiny-sensitive"))
    build_tiny_whisper(path, chunk_length=2, d_model=32, layers=1, heads=2)
    model = WhisperForConditionalGeneration.from_pretrained(path)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.dim() > 1 and "embed_positions" not in name:
                weight.normal_(0, 0.3)
    model.save_pretrained(path)
    return path


def test_evaluation_speed_switches_leave_every_transcript_unchanged(audio_sensitive_model_dir, dataset_dir,
                                                                     tmp_path):
    """The encoder in sub-batches and the static KV cache are speed switches, never a change
    in what is transcribed."""
    def predictions(name, *flags):
        out = tmp_path / name
        assert evaluate_cli.main(["--model", audio_sensitive_model_dir, "--data_dir", str(dataset_dir), "--split", "train",
                                  "--output_dir", str(out), "--cache_dir", str(tmp_path / "c"),
                                  "--per_device_eval_batch_size", "5", "--generation_max_length", "12",
                                  "--dataloader_num_workers", "0", *flags]) == 0
        lines = (out / "eval" / "train-predictions.jsonl").read_text().splitlines()
        return [(row["id"], row["prediction"]) for row in map(json.loads, lines)]

    whole = predictions("whole", "--eval_encoder_batch_size", "0")
    assert len(whole) == 8 and len({text for _, text in whole}) >= 4
    assert predictions("chunks-of-2", "--eval_encoder_batch_size", "2") == whole
    assert predictions("default", ) == whole
    assert predictions("static", "--eval_static_cache", "--eval_encoder_batch_size", "3") == whole


@pytest.mark.unit
def test_evaluate_reports_a_missing_model_as_one_line(tmp_path, dataset_dir, capsys):
    code = evaluate_cli.main(["--model", str(tmp_path / "no-model"), "--data_dir", str(dataset_dir)])
    assert code == 2
    assert "error: --model_name_or_path" in capsys.readouterr().err


def test_stats_counts_hours_percentiles_and_drops(tiny_model_dir, tmp_path, capsys):
    root = write_bad_rows(tmp_path / "data")
    code = stats_cli.main(["--data_dir", str(root), "--splits", "train", "--model_name_or_path", tiny_model_dir,
                           "--cache_dir", str(tmp_path / "c"), "--min_duration_in_seconds", "0.5",
                           "--max_label_length", "40"])
    assert code == 0
    out = capsys.readouterr().out
    # 12 rows: 3 unreadable, 1 empty transcript, 8 decodable (one of them 3 s long).
    assert "12 listed, 8 decodable with a transcript" in out
    assert f"{(6 * 1.0 + 0.1 + 3.0) / 3600:.2f} hours" in out
    assert "duration s:" in out and "p50 1.00" in out and "max 3.00" in out
    assert "label tokens:" in out
    assert "training would drop 7" in out
    for reason in ("3 unreadable audio", "1 empty transcript", "1 longer than the model's input window",
                   "1 shorter than --min_duration_in_seconds", "1 transcript longer than --max_label_length"):
        assert reason in out


@pytest.mark.unit
def test_stats_without_a_model_on_a_common_voice_release_offline(tmp_path, capsys):
    """Counts, hours and durations need no tokenizer: nothing to download, mp3 clips decoded."""
    from test_sources import write_common_voice

    root = write_common_voice(tmp_path / "cv-corpus-23.0-2025-09-05" / "be",
                              {"train": ["Адзін.", "Два.", ""], "dev": ["Тры."], "test": ["Чатыры."]})
    (root / "clips" / "common_voice_be_train_1.mp3").write_bytes(b"not an mp3")
    code = stats_cli.main(["--data_dir", str(root), "--splits", "train,validation,test",
                           "--cache_dir", str(tmp_path / "c")])
    assert code == 0
    out = capsys.readouterr().out
    assert "label lengths in tokens need --model_name_or_path" in out
    assert "train (" in out and "3 listed, 1 decodable with a transcript, 0.00 hours" in out
    assert "training would drop 2: 1 unreadable audio, 1 empty transcript" in out
    assert "common_voice_be_train_1.mp3" in out  # the unreadable file is named
    assert out.count("1 listed, 1 decodable") == 2 and "p50 1.00" in out  # dev (as validation) and test
    assert "label tokens:" not in out
