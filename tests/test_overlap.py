"""Training on all of Common Voice (validated.tsv) without leaking dev/test speakers, sentences or files."""

import csv

import datasets
import pytest
import soundfile as sf
from conftest import tone, train_args

from train_loop.core.text import get_normalizer
from train_loop.data.config import SourceConfig
from train_loop.data.overlap import (
    HELD_OUT_COLUMN,
    SKIP_HELD_OUT_CLIP,
    SKIP_HELD_OUT_SENTENCE,
    SKIP_HELD_OUT_SPEAKER,
    HeldOut,
    collect_held_out,
    exclude_held_out,
)
from train_loop.data.sources import RowSource, load_rows

COLUMNS = ["client_id", "path", "sentence_id", "sentence", "up_votes", "down_votes", "locale"]
DEV = [("dev-a", "dev_0.mp3", "Мая сям'я дома."), ("dev-b", "dev_1.mp3", "Наш сабака шукае хлеб.")]
TEST = [("test-a", "test_0.mp3", "Стары воўк у лесе!")]
# validated.tsv beyond dev and test: each row's expected fate
MORE = [("dev-a", "more_0.mp3", "Бабуля чакае раніцай.", SKIP_HELD_OUT_SPEAKER),
        ("test-a", "more_1.mp3", "Новую кнігу купляе.", SKIP_HELD_OUT_SPEAKER),
        ("new-1", "more_2.mp3", "мая сям’я дома", SKIP_HELD_OUT_SENTENCE),  # other case, apostrophe, no period
        ("new-1", "more_3.mp3", "Цёплы хлеб на двары.", ""),
        ("new-2", "more_4.mp3", "Мой сябар малюе.", ""),
        ("new-2", "more_5.mp3", "Раз’яднаць ўсё?", ""),
        ("new-3", "more_6.mp3", "Белая хмара ля школы.", "")]


def write_cv(root):
    """A Common Voice language folder whose overlaps are known: validated.tsv holds dev and test
    (3 'clip in dev/test') and MORE."""
    (root / "clips").mkdir(parents=True)

    def write(name, rows):
        with open(root / name, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
            writer.writerow(COLUMNS)
            for speaker, path, text in rows:
                if not (root / "clips" / path).exists():
                    sf.write(root / "clips" / path, tone(1.0, 48000), 48000, format="MP3")
                writer.writerow([speaker, path, "s", text, 2, 0, "be"])

    write("dev.tsv", DEV)
    write("test.tsv", TEST)
    write("validated.tsv", DEV + TEST + [row[:3] for row in MORE])
    return root


EXPECTED = {SKIP_HELD_OUT_CLIP: 3, SKIP_HELD_OUT_SPEAKER: 2, SKIP_HELD_OUT_SENTENCE: 1}


@pytest.mark.unit
def test_validated_minus_dev_and_test_by_speaker_sentence_and_file(tmp_path):
    source = SourceConfig(data_dir=str(write_cv(tmp_path / "be")))
    held_out = collect_held_out([(source, "validation"), (source, "test")], get_normalizer("belarusian"))
    exclusion = exclude_held_out(load_rows(source, "validated"), held_out, allow_overlap=False)
    assert dict(exclusion.counts) == EXPECTED
    kept = exclusion.selected()  # what a stream reads; a prepared split leaves the same rows out after preparing
    assert sorted(kept.rows["id"]) == sorted(f"validated/{path}" for _, path, _, why in MORE if not why)
    assert {reason: len(lines) for reason, lines in kept.dropped.items()} == EXPECTED
    assert exclusion.rows.num_rows == 10 and exclusion.reasons.count("") == 4
    assert "left out 3 clip in dev/test, 2 speaker in dev/test, 1 sentence in dev/test" in exclusion.summary()


@pytest.mark.unit
def test_allow_eval_overlap_counts_and_keeps(tmp_path):
    source = SourceConfig(data_dir=str(write_cv(tmp_path / "be")))
    held_out = collect_held_out([(source, "validation"), (source, "test")], get_normalizer("belarusian"))
    exclusion = exclude_held_out(load_rows(source, "validated"), held_out, allow_overlap=True)
    assert dict(exclusion.counts) == EXPECTED
    assert exclusion.selected().num_rows == len(DEV + TEST + MORE) and not exclusion.selected().dropped
    assert exclusion.summary().startswith("warning: validated: 3 clip in dev/test")


@pytest.mark.unit
def test_without_a_speaker_column_sentences_and_files_still_count(tmp_path):
    source = SourceConfig(data_dir=str(write_cv(tmp_path / "be")), speaker_column_name="no_such_column")
    held_out = collect_held_out([(source, "validation"), (source, "test")], get_normalizer("belarusian"))
    exclusion = exclude_held_out(load_rows(source, "validated"), held_out, allow_overlap=False)
    assert dict(exclusion.counts) == {SKIP_HELD_OUT_CLIP: 3, SKIP_HELD_OUT_SENTENCE: 1}


@pytest.mark.unit
def test_a_stream_tags_rows_and_the_reader_counts_them():
    rows = [{"id": f"train/{i}", "audio": {"path": f"c{i}.mp3", "bytes": b""}, "text": text, "speaker": speaker}
            for i, (speaker, text) in enumerate([("s1", "адзін"), ("dev", "два"), ("s2", "тры")])]
    stream = datasets.IterableDataset.from_generator(lambda: iter(rows))
    held_out = HeldOut(str.lower, splits=["dev"], speakers={"dev"}, sentences={"тры"})
    tagged = exclude_held_out(RowSource("hub", "train", stream, "f", None), held_out, allow_overlap=False)
    assert [row[HELD_OUT_COLUMN] for row in tagged.rows.rows] == ["", SKIP_HELD_OUT_SPEAKER, SKIP_HELD_OUT_SENTENCE]


def test_training_on_validated_reports_every_reason(tmp_path, tiny_model_dir, capsys):
    from train_loop.main import main

    data = write_cv(tmp_path / "be")
    args = train_args(tiny_model_dir, data, tmp_path / "run", tmp_path / "cache", train_split_name="validated",
                      allow_eval_overlap="false", max_steps=1)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "validated: left out 3 clip in dev/test, 2 speaker in dev/test, 1 sentence in dev/test" in out
    assert "validated: 10 clips, 4 used, 6 skipped (3 clip in dev/test, 2 speaker in dev/test, " \
           "1 sentence in dev/test)" in out
    # The prepared features cover every row: another evaluation split or --allow_eval_overlap reuses them.
    assert main(train_args(tiny_model_dir, data, tmp_path / "again", tmp_path / "cache", train_split_name="validated",
                           allow_eval_overlap="true", max_steps=1)) == 0
    out = capsys.readouterr().out
    assert "Preparing validated" not in out and "warning: validated: 3 clip in dev/test" in out
    assert "validated: 10 clips, none skipped" in out


def test_streaming_and_packing_leave_out_the_same_clips(tmp_path, tiny_model_dir, capsys):
    from train_loop.main import main

    data = write_cv(tmp_path / "be")
    for mode, flags in (("streaming", {"streaming": "true"}), ("packed", {"pack_to_window": "true",
                                                                           "speech_bounds": "file"})):
        args = train_args(tiny_model_dir, data, tmp_path / mode, tmp_path / "cache", train_split_name="validated",
                          allow_eval_overlap="false", max_steps=2, **flags)
        assert main(args) == 0, mode
        out = capsys.readouterr().out
        if mode == "packed":
            assert "validated: 10 clips, 4 used, 6 skipped (3 clip in dev/test" in out
        else:  # a stream counts the kept rows it reads; the left-out ones are counted at the start
            assert "validated: left out 3 clip in dev/test, 2 speaker in dev/test, 1 sentence in dev/test" in out


@pytest.mark.unit
def test_stats_prints_the_leak_counts_the_hours_left_and_speakers(tmp_path):
    from train_loop.stats import main as stats_main

    data = write_cv(tmp_path / "be")
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert stats_main(["--data_dir", str(data), "--splits", "validated,validation,test"]) == 0
    out = printed.getvalue()
    assert ("shared with validation + test: 3 clip in dev/test, 2 speaker in dev/test, 1 sentence in dev/test; "
            "as a training split it keeps 4 clips, 0.00 hours") in out
    assert "speakers: 6; clips per speaker: p5 1  p50 2  p95 2  p99 2  max 2" in out
    assert out.count("shared with") == 1  # the held-out splits are not checked against themselves
