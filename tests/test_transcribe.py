"""python -m train_loop.transcribe: files and folders in, one line per file or txt/srt/vtt/jsonl
files out; audio longer than the window is transcribed whole; unreadable files are named."""

import json
import re
import subprocess
import sys

import pytest
import soundfile as sf
from conftest import ROOT, tone


def transcribe(*args):
    # A random model never ends a window by itself: cap the tokens per window to keep this fast.
    return subprocess.run([sys.executable, "-m", "train_loop.transcribe", "--generation_max_length", "12",
                           *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def _clips(root):
    (root / "talks" / "day1").mkdir(parents=True)
    sf.write(root / "talks" / "day1" / "long.wav", tone(65.0, freq=220), 16000)  # > 30 s: long-form
    sf.write(root / "talks" / "short.flac", tone(2.0, freq=330), 16000)
    sf.write(root / "other.ogg", tone(1.5, freq=260), 16000)
    (root / "talks" / "broken.mp3").write_bytes(b"not audio")
    (root / "talks" / "notes.txt").write_text("not audio, not picked up")
    return root


def test_files_and_folders_give_one_line_each_in_order_and_unreadable_files_are_named(model_30s, tmp_path):
    root = _clips(tmp_path)
    result = transcribe("--model", model_30s, "--language", "be", root / "talks", root / "other.ogg")
    assert result.returncode == 1, result.stderr[-2000:]  # one file could not be read
    lines = result.stdout.strip().splitlines()
    paths = [line.split("\t")[0] for line in lines]
    assert paths == [str(root / "talks" / "day1" / "long.wav"), str(root / "talks" / "short.flac"),
                     str(root / "other.ogg")]
    assert all(line.split("\t")[1].strip() for line in lines)
    assert "1 file(s) could not be read and were skipped" in result.stderr
    assert "broken.mp3" in result.stderr and "notes.txt" not in result.stderr + result.stdout


def test_long_audio_is_transcribed_whole_with_segment_times(model_30s, tmp_path):
    root = _clips(tmp_path)
    out = tmp_path / "out"
    result = transcribe("--model", model_30s, "--language", "be", "--output_dir", out, "--format", "jsonl",
                        root / "talks" / "day1" / "long.wav", root / "talks" / "short.flac")
    assert result.returncode == 0, result.stderr[-2000:]
    records = {r["path"].split("/")[-1]: r for r in map(json.loads, (out / "transcripts.jsonl").read_text().splitlines())}
    long = records["long.wav"]
    assert long["duration"] == 65.0
    # Sequential long-form: windows follow each other to the end of the file, so segments
    # reach beyond the first 30 s window, in order, within the file.
    starts = [segment["start"] for segment in long["segments"]]
    assert starts == sorted(starts) and long["segments"][-1]["end"] > 30.0
    assert all(0 <= s["start"] <= s["end"] <= 65.0 + 1e-6 for s in long["segments"])
    assert records["short.flac"]["text"]


def test_srt_and_vtt_files_mirror_the_input_folders(model_30s, tmp_path):
    root = _clips(tmp_path)
    (root / "talks" / "broken.mp3").unlink()
    for fmt, first_line, clock in [("srt", "1", r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}")]:
        out = tmp_path / fmt
        result = transcribe("--model", model_30s, "--language", "be", "--output_dir", out, "--format", fmt,
                            root / "talks")
        assert result.returncode == 0, result.stderr[-2000:]
        written = sorted(p.relative_to(out).as_posix() for p in out.rglob(f"*.{fmt}"))
        assert written == [f"day1/long.{fmt}", f"short.{fmt}"]
        text = (out / f"short.{fmt}").read_text()
        assert text.splitlines()[0] == first_line and re.search(clock, text)


def test_subtitle_files_count_segments_and_times_as_players_expect():
    from train_loop.transcribe import Transcript, render

    transcript = Transcript("a.wav", "Добры дзень. Як справы?", [
        {"start": 0.0, "end": 1.5, "text": "Добры дзень."}, {"start": 61.25, "end": 3725.004, "text": "Як справы?"}], 3726.0)
    assert render(transcript, "srt") == ("1\n00:00:00,000 --> 00:00:01,500\nДобры дзень.\n\n"
                                         "2\n00:01:01,250 --> 01:02:05,004\nЯк справы?\n\n")
    assert render(transcript, "vtt") == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nДобры дзень.\n\n"
                                         "00:01:01.250 --> 01:02:05.004\nЯк справы?\n\n")
    assert render(transcript, "txt") == "Добры дзень. Як справы?\n"


@pytest.mark.unit
def test_clear_errors_for_a_missing_path_or_model(model_30s, tmp_path, capsys):
    from train_loop.transcribe import main

    (tmp_path / "empty").mkdir()
    assert main(["--model", model_30s, str(tmp_path / "nowhere.wav")]) == 2
    assert "nowhere.wav: no such file or folder" in capsys.readouterr().err
    assert main(["--model", model_30s, str(tmp_path / "empty")]) == 2
    assert "no .wav, .flac, .ogg, .mp3 files in this folder" in capsys.readouterr().err
    sf.write(tmp_path / "empty" / "clip.wav", tone(1.0), 16000)
    assert main(["--model", str(tmp_path / "no-model"), str(tmp_path / "empty")]) == 2
    assert "cannot load a Whisper model" in capsys.readouterr().err


def test_one_output_per_input_even_for_files_of_one_name_and_a_bad_language_is_one_line(model_30s, tmp_path):
    sf.write(tmp_path / "x.wav", tone(1.0, freq=220), 16000)
    sf.write(tmp_path / "x.flac", tone(1.2, freq=330), 16000)
    sf.write(tmp_path / "y.wav", tone(1.0, freq=260), 16000)
    out = tmp_path / "out"
    result = transcribe("--model", model_30s, "--language", "be", "--output_dir", out, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["x.flac.txt", "x.wav.txt", "y.txt"]
    assert "transcribed 3 file(s)" in result.stderr
    bad = transcribe("--model", model_30s, "--language", "zz", tmp_path / "y.wav")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --language zz: not a language Whisper has a token")
