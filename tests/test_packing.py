"""Packed 30 s windows (--pack_to_window): label formats on the real tokenizer, the prompt
without loss, windows as a pure function of (seed, epoch), exact resume and two processes equal
to one; long-form metrics on recordings whose boundaries are known; --show_examples."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
from conftest import SENTENCES, launch, train_args, write_audiofolder

from train_loop import main as train_main
from train_loop import stats
from train_loop.core.model import ASSETS
from train_loop.data.collator import IGNORE_INDEX, SpeechCollator
from train_loop.data.features import SkipReport
from train_loop.data.packing import ClipIndex, PackedBatchSampler, PackingPlan, WindowTokens, plan_windows

PACKED = {"pack_to_window": "true", "speech_bounds": "file", "timestamp_probability": 0.5,
          "prev_text_probability": 0.5, "no_speech_probability": 0.2}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import WhisperTokenizer

    tokenizer = WhisperTokenizer.from_pretrained(ASSETS)
    tokenizer.set_prefix_tokens(language="be", task="transcribe")
    return tokenizer


def names(tokenizer, ids):
    return tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def encode(tokenizer, text):
    return tokenizer.encode(" " + text, add_special_tokens=False)


# --------------------------------------------------------------------------------------------
# Label formats, token by token
# --------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_timestamped_window_is_labelled_as_whisper_was_trained(tokenizer):
    tokens = WindowTokens(tokenizer)
    first, second = encode(tokenizer, "Мая сям'я."), encode(tokenizer, "Добры дзень!")
    labels = tokens.window([(0.113, 1.5, first), (2.01, 3.999, second)], timestamps=True, prompt=[],
                           max_prompt_tokens=224)
    shown = names(tokenizer, labels)
    assert shown[:3] == ["<|startoftranscript|>", "<|be|>", "<|transcribe|>"]
    # times quantized to 0.02 s; each clip between its start and end timestamp
    assert shown[3] == "<|0.12|>" and shown[4 + len(first)] == "<|1.50|>"
    assert labels[4 : 4 + len(first)] == first
    assert shown[5 + len(first)] == "<|2.00|>" and shown[-2] == "<|4.00|>"
    assert labels[6 + len(first) : -2] == second
    assert shown[-1] == "<|endoftext|>" and "<|notimestamps|>" not in shown
    # the ids are the tokenizer's own (what large-v3 needs), and the text decodes back
    assert labels[3] == tokenizer.convert_tokens_to_ids("<|0.12|>")
    assert tokenizer.decode(labels, skip_special_tokens=True).strip() == "Мая сям'я. Добры дзень!"


@pytest.mark.unit
def test_plain_window_prompt_and_no_speech_labels(tokenizer):
    tokens = WindowTokens(tokenizer)
    first, second = encode(tokenizer, "Раз."), encode(tokenizer, "Два.")
    plain = tokens.window([(0.0, 1.0, first), (1.5, 2.0, second)], timestamps=False, prompt=[], max_prompt_tokens=224)
    assert names(tokenizer, plain[:4]) == ["<|startoftranscript|>", "<|be|>", "<|transcribe|>", "<|notimestamps|>"]
    assert plain[4:-1] == first + second and names(tokenizer, plain[-1:]) == ["<|endoftext|>"]

    previous = encode(tokenizer, "Папярэдні тэкст, даволі доўгі сказ.")
    prompted = tokens.window([(0.0, 1.0, first)], timestamps=False, prompt=previous, max_prompt_tokens=5)
    assert names(tokenizer, prompted[:1]) == ["<|startofprev|>"]
    assert prompted[1:6] == previous[-5:]  # at most max_prompt_tokens, the most recent ones
    assert names(tokenizer, prompted[6:7]) == ["<|startoftranscript|>"]

    # the multilingual vocabulary names the no-speech token <|nocaptions|> (large-v3: <|nospeech|>)
    assert names(tokenizer, tokens.no_speech()) == ["<|startoftranscript|>", "<|nocaptions|>", "<|endoftext|>"]


@pytest.mark.unit
def test_the_prompt_carries_no_loss(tokenizer):
    tokens = WindowTokens(tokenizer)
    prompt = encode(tokenizer, "Учора.")
    text = encode(tokenizer, "Сёння.")
    sequence = tokens.window([(0.0, 1.0, text)], timestamps=True, prompt=prompt, max_prompt_tokens=224)
    plain = tokens.window([(0.0, 1.0, text)], timestamps=True, prompt=[], max_prompt_tokens=224)
    collate = SpeechCollator(tokens.start, tokenizer.pad_token_id, total_frames=10)
    features = np.zeros((80, 10), dtype=np.float32)
    batch = collate([{"id": "a", "text": "", "input_features": features, "pad_value": 0.0, "labels": sequence},
                     {"id": "b", "text": "", "input_features": features, "pad_value": 0.0, "labels": plain}])
    labels, inputs = batch["labels"], batch["decoder_input_ids"]
    start = 1 + len(prompt)  # <|startofprev|> + the prompt
    assert inputs[0, : len(sequence) - 1].tolist() == sequence[:-1]
    assert (labels[0, :start] == IGNORE_INDEX).all()  # nothing up to <|startoftranscript|> is a target
    assert labels[0, start:len(sequence) - 1].tolist() == sequence[start + 1 :]
    # with or without the prompt, the same tokens carry loss
    assert labels[0][labels[0] != IGNORE_INDEX].tolist() == labels[1][labels[1] != IGNORE_INDEX].tolist()
    assert names(tokenizer, labels[1][:1]) == ["<|be|>"]


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


def toy_index(clips=60, speakers=4, seed=0):
    rng = np.random.default_rng(seed)
    durations = rng.uniform(1.0, 6.0, clips)
    starts = rng.uniform(0.0, 0.5, clips)
    speech = np.stack([starts, durations - rng.uniform(0.0, 0.4, clips)], axis=1)
    return ClipIndex(table=None, keep=np.arange(clips), durations=durations, speech=speech,
                     token_counts=rng.integers(5, 30, clips),
                     speakers=np.arange(clips) % speakers if speakers else -np.ones(clips, dtype=np.int64),
                     report=SkipReport(split="train"))


PLAN = PackingPlan(window_seconds=30.0, max_label_tokens=448, prefix_tokens=2, timestamp_probability=0.5,
                   prev_text_probability=0.5, no_speech_probability=0.1)


@pytest.mark.unit
def test_windows_are_a_pure_function_of_seed_and_epoch_and_use_every_clip_once():
    index = toy_index()
    first = plan_windows(index, PLAN, seed=3, epoch=0)
    assert plan_windows(index, PLAN, seed=3, epoch=0) == first
    assert plan_windows(index, PLAN, seed=3, epoch=1) != first
    speech = [w for w in first if not w.no_speech]
    used = sorted(piece.clip for window in speech for piece in window.pieces)
    assert used == list(range(len(index)))  # every clip exactly once an epoch
    for window in speech:
        assert len({int(index.speakers[p.clip]) for p in window.pieces}) == 1  # one speaker per window
        ends = [p.offset + p.cut_end - p.cut_start for p in window.pieces]
        assert max(ends) <= 30.0 + 1e-6
        for before, after in zip(window.pieces, window.pieces[1:]):  # in order, never overlapping
            assert after.offset >= before.offset + before.cut_end - before.cut_start
        for piece in window.pieces:  # each cut holds the clip's speech plus a margin inside the file
            start, end = index.speech[piece.clip]
            assert 0 <= piece.cut_start <= start and end <= piece.cut_end <= index.durations[piece.clip]
        if window.prompt_clips:  # the previous text comes from the same speaker
            assert {int(index.speakers[c]) for c in window.prompt_clips} == {int(index.speakers[window.pieces[0].clip])}
    assert sum(len(w.pieces) for w in speech) / len(speech) > 3  # windows hold several clips
    no_speech = [w for w in first if w.no_speech]
    assert 0 < len(no_speech) < len(speech) and all(0 < w.seconds <= 30 for w in no_speech)


@pytest.mark.unit
def test_windows_respect_the_label_length_limit():
    index = toy_index()
    tight = PackingPlan(**{**PLAN.__dict__, "max_label_tokens": 60})
    for window in plan_windows(index, tight, seed=0, epoch=0):
        if not window.no_speech:
            tokens = tight.prefix_tokens + 1 + sum(int(index.token_counts[p.clip]) + 2 for p in window.pieces)
            assert tokens <= 60 or len(window.pieces) == 1


@pytest.mark.unit
def test_packed_batches_split_across_processes_and_resume_at_any_batch():
    index = toy_index(clips=200)
    one = PackedBatchSampler(index, PLAN, batch_size=4, seed=1)
    two = [PackedBatchSampler(index, PLAN, batch_size=2, num_processes=2, process_index=p, seed=1) for p in (0, 1)]
    for epoch in (0, 1):
        one.set_epoch(epoch)
        for sampler in two:
            sampler.set_epoch(epoch)
        whole = list(one)
        halves = list(zip(*two))
        assert len(whole) == len(halves) == one.batches_per_epoch() > 0
        assert [a + b for a, b in halves] == whole
        one.set_epoch(epoch, start_batch=3)
        assert list(one) == whole[3:]


# --------------------------------------------------------------------------------------------
# Whole runs
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packed_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("packed-data")
    train = [f"{SENTENCES[i % len(SENTENCES)]} {i}" for i in range(24)]
    return write_audiofolder(root, {"train": train, "validation": SENTENCES[:4]}, seconds=0.5, speakers=3)


RUN = dict(per_device_train_batch_size=2, max_steps=6, warmup_steps=1, learning_rate=5e-3, eval_steps=3,
           save_steps=1, max_eval_samples=2, test_split_name="none", log_sample_ids="true",
           dataloader_num_workers=2, **PACKED)


def records(output_dir, name="metrics.jsonl"):
    drop = ("time", "elapsed_seconds", "eta_seconds", "samples_per_second", "audio_seconds_per_second",
            "eval_seconds", "eval_samples_per_second")
    with open(os.path.join(output_dir, name), encoding="utf-8") as handle:
        return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in handle]


def test_packed_run_resumes_exactly(tiny_model_dir, packed_data, tmp_path, capsys):
    full = tmp_path / "full"
    assert train_main.main(train_args(tiny_model_dir, packed_data, full, tmp_path / "cache", **RUN)) == 0
    out = capsys.readouterr().out
    assert "packing: 24 clips into" in out
    rows = [r for r in records(full) if "loss" in r]
    assert all(r["audio_seconds"] > 0 for r in rows)  # every row: the seconds of speech it trained
    results = json.loads((full / "results.json").read_text())
    assert results["train_audio_seconds"] == pytest.approx(sum(r["audio_seconds"] for r in rows), abs=0.05)
    assert results["train_audio_seconds_per_second"] > 0
    ids = [i for r in records(full, "samples.jsonl") for i in r["ids"]]
    assert any("+" in i for i in ids)  # several clips in one window

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")
    assert train_main.main(train_args(tiny_model_dir, packed_data, resumed, tmp_path / "cache",
                                      **{**RUN, "resume_from": "latest"})) == 0
    assert records(resumed) == [r for r in records(full) if r["step"] > 4]
    assert records(resumed, "samples.jsonl") == [r for r in records(full, "samples.jsonl") if r["step"] > 4]
    state = json.loads((resumed / "checkpoint-6" / "trainer_state.json").read_text())
    expected = json.loads((full / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["audio_seconds_seen"] == pytest.approx(expected["audio_seconds_seen"])


def test_packed_two_processes_equal_one(tiny_model_dir, packed_data, tmp_path):
    run = {**RUN, "max_steps": 3, "eval_steps": 0, "save_steps": 0}
    single = tmp_path / "single"
    assert train_main.main(train_args(tiny_model_dir, packed_data, single, tmp_path / "cache",
                                      **{**run, "per_device_train_batch_size": 4})) == 0
    ddp = tmp_path / "ddp"
    launch("launch/accelerate/multi_gpu.yaml", train_args(tiny_model_dir, packed_data, ddp, tmp_path / "cache", **run))
    # the same windows in every step (process p takes slice p of each global batch) ...
    assert records(ddp, "samples.jsonl") == records(single, "samples.jsonl")
    # ... so the same losses, up to the float reduction order (Adam at lr 5e-3 magnifies it a little)
    for mine, theirs in zip(records(ddp), records(single), strict=True):
        if "loss" in theirs:
            assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
            assert mine["audio_seconds"] == pytest.approx(theirs["audio_seconds"])


def test_show_examples_prints_what_the_decoder_sees(tiny_model_dir, packed_data, capsys):
    argv = ["--data_dir", str(packed_data), "--model", tiny_model_dir, "--splits", "train", "--show_examples", "6",
            "--pack_to_window", "--speech_bounds", "file", "--timestamp_probability", "1",
            "--prev_text_probability", "1", "--no_speech_probability", "0.3"]
    assert stats.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("example ") == 6
    assert "(<|startofprev|>)" in out and "[<|startoftranscript|>][<|be|>][<|transcribe|>][<|0." in out
    assert "[<|nocaptions|>] -> <|endoftext|>" in out
    assert "loss on" in out
    # without packing: one clip, <|notimestamps|>, every token carries loss
    assert stats.main(["--data_dir", str(packed_data), "--model", tiny_model_dir, "--splits", "train",
                       "--show_examples", "1"]) == 0
    plain = capsys.readouterr().out
    assert "[<|notimestamps|>]" in plain and "(<|startofprev|>)" not in plain


def test_packing_with_streaming_is_a_clear_error(tiny_model_dir, packed_data, tmp_path, capsys):
    code = train_main.main(train_args(tiny_model_dir, packed_data, tmp_path / "out", tmp_path / "cache",
                                      streaming="true", **PACKED))
    assert code == 2
    assert "--pack_to_window needs the whole split's index" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Speech bounds and long-form evaluation
# --------------------------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (scripts/setup.sh installs it)")
def test_silero_finds_speech_after_a_leading_silence(tmp_path):
    from train_loop.data.audio import decode_audio
    from train_loop.data.speech_bounds import SpeechBounds

    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "be", "-w", str(path), "Добры дзень, як справы?"], check=True)
    speech = decode_audio(str(path), 16000)
    padded = np.concatenate([np.zeros(16000, np.float32), speech, np.zeros(8000, np.float32)])
    start, end = SpeechBounds("silero")(padded)
    assert 0.9 <= start <= 1.3 and end <= len(padded) / 16000 - 0.3
    assert SpeechBounds("silero")(np.zeros(32000, np.float32)) is None  # silence: no speech
    assert SpeechBounds("file")(padded) == (0.0, len(padded) / 16000)


@pytest.mark.unit
def test_clips_without_detected_speech_are_counted_not_packed(processor, tmp_path):
    from train_loop.data.config import DataConfig, SourceConfig
    from train_loop.data.features import Filters, featurizer_for
    from train_loop.data.packing import SKIP_NO_SPEECH, index_split
    from train_loop.data.sources import load_rows

    data = write_audiofolder(tmp_path / "data", {"train": SENTENCES[:3]}, seconds=1.0)  # sine tones: no speech
    rows = load_rows(SourceConfig(data_dir=str(data)), "train")
    featurizer = featurizer_for(processor, DataConfig(), "belarusian")
    silero = index_split(rows, featurizer, Filters(max_seconds=2), "silero", str(tmp_path / "cache"), 1, "k")
    assert len(silero) == 0 and silero.report.skipped[SKIP_NO_SPEECH] == 3
    assert "no speech detected" in silero.report.summary()
    whole = index_split(rows, featurizer, Filters(max_seconds=2), "file", str(tmp_path / "cache"), 1, "k")
    assert len(whole) == 3 and whole.report.summary() == "train: 3 clips, none skipped"


@pytest.mark.unit
def test_indexed_audio_is_stored_exactly_for_16_bit_sources(tmp_path):
    from train_loop.data.audio import decode_audio
    from train_loop.data.packing import decode_flac, encode_flac

    pcm = (np.random.default_rng(0).standard_normal(16000) * 6000).clip(-32768, 32767).astype(np.int16)
    pcm[:2] = [-32768, 32767]
    sf.write(tmp_path / "clip.wav", pcm, 16000, subtype="PCM_16")
    waveform = decode_audio(str(tmp_path / "clip.wav"), 16000)
    data = encode_flac(waveform)
    assert np.array_equal(decode_flac(data), waveform)
    assert len(data) < 2 * len(pcm)  # compressed below raw 16-bit PCM


@pytest.mark.unit
def test_long_form_metrics_on_a_recording_with_known_boundaries():
    from train_loop.core.text import get_normalizer
    from train_loop.data.longform import LongRecording
    from train_loop.evaluation.longform import has_loop, score_long_form

    recording = LongRecording("r0", [], "раз два. тры чатыры. пяць", 40.0, [1.0, 12.0, 31.0])
    segments = [{"start": 1.2, "end": 5, "text": "раз два."}, {"start": 11.5, "end": 20, "text": "тры чатыры."},
                {"start": 30.0, "end": 33, "text": "пяць шэсць"}]
    result = score_long_form([recording], [("раз два. тры чатыры. пяць шэсць", segments)],
                             get_normalizer("belarusian"))
    assert result["wer"] == pytest.approx(100 * 1 / 5) and result["insertions"] == 1
    assert result["timestamp_error_s"] == pytest.approx((0.2 + 0.5 + 1.0) / 3, abs=1e-3)
    assert result["loop_rate"] == 0 and result["samples"] == 1

    looped = [{"start": 0, "end": 2, "text": "раз два"}] * 3
    assert has_loop(looped, "раз два раз два раз два")
    assert has_loop([], "так так так так")
    assert not has_loop(segments, "раз два тры чатыры пяць")
    # no segments: the recording's timestamps are unknown, not wrong
    assert score_long_form([recording], [("", [])], get_normalizer("belarusian"))["timestamp_error_s"] is None


@pytest.mark.unit
def test_long_recordings_are_built_per_speaker_with_true_starts(tmp_path):
    from train_loop.data.config import SourceConfig
    from train_loop.data.longform import build_long_recordings
    from train_loop.data.sources import load_rows

    data = write_audiofolder(tmp_path, {"validation": [f"сказ {i}" for i in range(12)]}, seconds=1.0, speakers=2)
    (tmp_path / "validation" / "metadata.csv").write_text(
        (tmp_path / "validation" / "metadata.csv").read_text() + "broken.wav,зламаны,speaker-0\n")
    (tmp_path / "validation" / "broken.wav").write_bytes(b"RIFFjunk")
    rows = load_rows(SourceConfig(data_dir=str(data)), "validation")
    built = build_long_recordings(rows, minutes=4 / 60, max_recordings=10, bounds="file")
    assert built.report.skipped["unreadable audio"] == 1
    for recording in built.recordings:
        assert recording.speaker in ("speaker-0", "speaker-1")
        assert 2.0 <= recording.duration  # at least half of the 4 s asked for
        clips = len(recording.speech_starts)
        assert recording.reference.count("сказ") == clips
        # 'file' bounds: each clip's speech starts where the clip starts; gaps of 0.3-1.2 s
        gaps = np.diff(recording.speech_starts)
        assert ((gaps >= 1.3 - 1e-6) & (gaps <= 2.2 + 1e-6)).all()
        audio = recording.waveform()
        assert len(audio) == pytest.approx(recording.duration * 16000, abs=2)
        assert abs(audio[int(recording.speech_starts[-1] * 16000) + 100]) > 0  # a clip is there
    speakers = [r.speaker for r in built.recordings]
    assert speakers == sorted(speakers)  # one speaker's recordings together, in order


@pytest.mark.unit
def test_real_long_recordings_are_read_from_a_folder(tmp_path):
    from train_loop.core.errors import UserError
    from train_loop.data.longform import read_long_recordings

    data = write_audiofolder(tmp_path / "long", {"talks": ["перша лекцыя", "другая лекцыя"]}, seconds=3.0)
    with open(data / "talks" / "metadata.csv", "a", encoding="utf-8") as handle:
        handle.write("missing.wav,трэцяя\n")
    found = read_long_recordings(str(data), "sentence", max_recordings=10)  # the one split folder is found
    assert [r.reference for r in found.recordings] == ["перша лекцыя", "другая лекцыя"]
    assert all(r.speech_starts is None and r.duration == pytest.approx(3.0) for r in found.recordings)
    assert found.report.skipped["unreadable audio"] == 1
    assert len(found.recordings[0].waveform()) == 48000
    with pytest.raises(UserError, match="--long_form_data_dir .*: no metadata.csv"):
        read_long_recordings(str(tmp_path / "nothing"), "sentence", max_recordings=10)


def test_eval_long_form_logs_its_metrics(tiny_model_dir, packed_data, tmp_path):
    out = tmp_path / "run"
    flags = {**RUN, "max_steps": 2, "eval_steps": 2, "save_steps": 0, "max_eval_samples": 4,
             "eval_long_form": "true", "long_form_minutes": 0.05}
    data = write_audiofolder(tmp_path / "data", {"train": [f"{SENTENCES[i % 8]} {i}" for i in range(12)],
                                                  "validation": [f"сказ {i}" for i in range(12)]},
                             seconds=0.5, speakers=2)
    assert train_main.main(train_args(tiny_model_dir, data, out, tmp_path / "cache", **flags)) == 0
    row = next(r for r in records(out) if "eval_longform_wer" in r)
    for key in ("eval_longform_wer", "eval_longform_cer", "eval_longform_loop_rate",
                "eval_longform_timestamp_error_s", "eval_longform_substitutions", "eval_longform_deletions",
                "eval_longform_insertions"):
        assert key in row, key
    lines = (out / "eval" / "longform-step-2.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["true_starts"] and first["speaker"] in ("speaker-0", "speaker-1")
    assert "| longform " in (out / "train.log").read_text()  # in the WER table


@pytest.mark.unit
def test_the_model_card_says_how_the_model_was_trained_and_reports_long_form():
    from train_loop.outputs.card import model_card

    evaluations = [{"step": 100, "split": "validation", "primary": True, "eval_samples": 80, "eval_wer": 20.0,
                    "eval_cer": 8.0, "eval_wer_raw": 25.0},
                   {"step": 100, "split": "longform", "primary": False, "eval_samples": 6, "eval_wer": 30.5,
                    "eval_cer": 12.25, "eval_loop_rate": 0.0, "eval_timestamp_error_s": 0.214}]
    packed = {"model_name_or_path": "openai/whisper-base", "language": "be", "task": "transcribe",
              "pack_to_window": True, "timestamp_probability": 0.5, "prev_text_probability": 0.2,
              "no_speech_probability": 0.05, "speech_bounds": "silero"}
    card = model_card(packed, evaluations, 100, 100, "be-packed")
    assert "| 100 | 6 | 30.50 | 12.25 | 0.00 | 0.21 |" in card  # the long-form table
    assert "50% of windows with segment timestamps, 20% conditioned on the previous text, 5% without speech" in card
    assert "| `--timestamp_probability` | `0.5` |" in card
    plain = model_card({**packed, "pack_to_window": False}, evaluations[:1], 100, 100, "be-utterances")
    assert "without timestamps (`--pack_to_window` off)" in plain and "--timestamp_probability" not in plain
