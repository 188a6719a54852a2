"""The real pretrained Whisper base (slow; needs ../shared and espeak-ng): the project's
evaluation transcribes exactly what a plain ``model.generate`` with the checkpoint's own
generation config transcribes, so no prompt, forced-token or suppression setting differs."""

import csv
import json
import shutil

import pytest
from conftest import espeak

from train_loop import evaluate as evaluate_cli

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="synthesizes speech with espeak-ng")]

ENGLISH = ["The quick brown fox jumps over the lazy dog.", "Please call Stella and ask her to bring these things.",
           "I would like a cup of coffee with milk.", "The weather is cold and windy today.",
           "We will meet at the station at nine o'clock.", "Reading books is a good way to learn.",
           "She opened the window and looked outside.", "Thank you very much for your help."]
BELARUSIAN = ["Добры дзень, як вашы справы?", "Дзякуй вам за дапамогу.", "Мая сям'я жыве ў Мінску.",
              "Сёння халаднавата і ідзе дождж."]
MAX_NEW_TOKENS = 64  # the same cap on both sides: zero-shot Belarusian loops until the cap


def _speech(root, texts, voice):
    folder = root / "test"
    folder.mkdir(parents=True)
    with open(folder / "metadata.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "sentence"])
        for i, text in enumerate(texts):
            espeak(text, folder / f"{i:02d}.wav", voice)
            writer.writerow([f"{i:02d}.wav", text])
    return root


def _plain_generate(model_dir, data_dir, language):
    """What a user writes with transformers alone."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from train_loop.data.audio import decode_audio

    model = WhisperForConditionalGeneration.from_pretrained(model_dir)
    processor = WhisperProcessor.from_pretrained(model_dir)
    with open(data_dir / "test" / "metadata.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    audio = [decode_audio(str(data_dir / "test" / row["file_name"])) for row in rows]
    features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        tokens = model.generate(features, language=language, task="transcribe", max_new_tokens=MAX_NEW_TOKENS)
    texts = processor.batch_decode(tokens, skip_special_tokens=True)
    return {f"test/{row['file_name']}": text.strip() for row, text in zip(rows, texts)}


@pytest.mark.parametrize("language, voice, texts", [("en", "en-us", ENGLISH), ("be", "be", BELARUSIAN)])
def test_evaluate_transcribes_like_plain_generate_on_the_real_base(real_whisper_base, tmp_path, language, voice,
                                                                   texts):
    data = _speech(tmp_path / "speech", texts, voice)
    out = tmp_path / "eval"
    assert evaluate_cli.main(["--model", str(real_whisper_base), "--data_dir", str(data), "--split", "test",
                              "--language", language, "--output_dir", str(out), "--cache_dir", str(tmp_path / "c"),
                              "--per_device_eval_batch_size", "3", "--generation_max_length",
                              str(MAX_NEW_TOKENS)]) == 0
    ours = {row["id"]: row["prediction"] for row in map(json.loads, open(out / "eval" / "test-predictions.jsonl"))}
    assert ours == _plain_generate(real_whisper_base, data, language)
    if language == "en":  # the real model, zero-shot, on clear synthetic English
        result = json.loads((out / "eval" / "test-results.json").read_text())
        assert result["wer"] < 35


@pytest.mark.parametrize("fmt", ["ctranslate2", "ggml"])
def test_the_real_base_exported_transcribes_in_its_runtime_within_the_parity_threshold(real_whisper_base, tmp_path,
                                                                                      fmt):
    pytest.importorskip("faster_whisper" if fmt == "ctranslate2" else "pywhispercpp")
    import subprocess
    import sys

    from conftest import ROOT

    data = _speech(tmp_path / "speech", ENGLISH, "en-us")
    out = tmp_path / fmt
    result = subprocess.run([sys.executable, "-m", "train_loop.export", "--model", str(real_whisper_base),
                             "--format", fmt, "--output_dir", str(out), "--check_data_dir", str(data),
                             "--check_split", "test", "--language", "en", "--eval_normalizer", "basic"],
                            cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    report = json.loads((out / "parity.json").read_text())
    assert report["clips"] == len(ENGLISH) and report["passed"]
    assert report["runtime_wer"] < 35


def test_long_audio_is_transcribed_whole_by_the_real_base(real_whisper_base, tmp_path):
    """Eight sentences with pauses, 40 s in one file: sequential long-form decoding must give
    every sentence, in order, with segment times inside the file."""
    import subprocess
    import sys

    import numpy as np
    import soundfile as sf
    from conftest import ROOT

    from train_loop.data.audio import decode_audio

    parts = []
    for i, text in enumerate(ENGLISH):
        parts += [decode_audio(str(espeak(text, tmp_path / f"{i}.wav", "en-us"))), np.zeros(32000, np.float32)]
    audio = np.concatenate(parts)
    sf.write(tmp_path / "long.wav", audio, 16000)
    result = subprocess.run([sys.executable, "-m", "train_loop.transcribe", "--model", str(real_whisper_base),
                             "--language", "en", "--format", "jsonl", str(tmp_path / "long.wav")],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["duration"] > 30
    words = record["text"].lower()
    last_words = [text.rstrip(".").split()[-1].lower() for text in ENGLISH]
    positions = [words.find(word) for word in last_words]
    assert sum(p >= 0 for p in positions) >= 7, (words, last_words)
    found = [p for p in positions if p >= 0]
    assert found == sorted(found)  # in the order spoken
    assert record["segments"][-1]["end"] <= record["duration"] and record["segments"][-1]["start"] > 20
