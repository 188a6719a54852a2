import numpy as np
import pytest
from conftest import SENTENCES, write_audiofolder, write_bad_rows

from train_loop.data.build import collator_for
from train_loop.data.config import DataConfig, SourceConfig
from train_loop.data.features import (
    SKIP_EMPTY_TEXT,
    SKIP_LABEL_TOO_LONG,
    SKIP_OVER_WINDOW,
    SKIP_TOO_SHORT,
    SKIP_UNREADABLE,
    Filters,
    featurizer_for,
)
from train_loop.data.prepared import prepare_split
from train_loop.data.samplers import LengthGroupedBatchSampler, ShardedBatchSampler, eval_batches
from train_loop.data.sources import load_rows
from train_loop.data.streaming import RowShards, StreamingBatches

FILTERS = Filters(min_seconds=0.5, max_seconds=2.0, max_label_tokens=40)
EXPECTED_SKIPS = {SKIP_UNREADABLE: 3, SKIP_EMPTY_TEXT: 1, SKIP_OVER_WINDOW: 1, SKIP_TOO_SHORT: 1,
                  SKIP_LABEL_TOO_LONG: 1}


def test_bad_rows_are_skipped_counted_and_named(tmp_path, processor):
    root = write_bad_rows(tmp_path / "data")
    featurizer = featurizer_for(processor, DataConfig(), "belarusian")
    prepared = prepare_split(load_rows(SourceConfig(data_dir=str(root)), "train"), featurizer,
                             FILTERS, str(tmp_path / "cache"), num_proc=1, cache_key="k")
    assert prepared.report.rows == 12
    assert dict(prepared.report.skipped) == EXPECTED_SKIPS
    assert len(prepared) == 5
    kept = sorted(prepared[i]["id"] for i in range(len(prepared)))
    assert kept == sorted([f"train/good{i}.wav" for i in range(4)] + ["train/stereo8k.wav"])
    summary = prepared.report.summary()
    assert "12 clips, 5 used, 7 skipped" in summary
    assert "3 unreadable audio" in summary and "corrupt.wav" in summary


@pytest.mark.unit
def test_streaming_skips_the_same_rows_and_counts_them(tmp_path, processor):
    root = write_bad_rows(tmp_path / "data")
    rows = load_rows(SourceConfig(data_dir=str(root)), "train", streaming=True)
    stream = StreamingBatches(RowShards(rows.rows), featurizer_for(processor, DataConfig(), "belarusian"), FILTERS,
                              collator_for(processor), batch_size=2, drop_last=True)
    batches = list(stream)
    skipped = {}
    for batch in batches:
        for reason, count in batch["skipped"].skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
    used = [clip for batch in batches for clip in batch["ids"]]
    assert len(used) == 4 and all(len(b["ids"]) in (0, 2) for b in batches)
    # 5 usable clips in batches of 2: one is left over at the end of the epoch, and counted.
    assert sum(skipped.values()) == 12 - 4
    assert {k: v for k, v in skipped.items() if k in EXPECTED_SKIPS} == EXPECTED_SKIPS


def test_prepared_features_are_cached_and_reused(tmp_path, processor):
    root = write_audiofolder(tmp_path / "data", {"train": SENTENCES})
    source = SourceConfig(data_dir=str(root))
    featurizer = featurizer_for(processor, DataConfig(), "belarusian")
    first = prepare_split(load_rows(source, "train"), featurizer, FILTERS, str(tmp_path / "c"), 2, "k")

    class Exploding:
        feature_extractor = featurizer.feature_extractor
        feature_dtype = featurizer.feature_dtype

        def __call__(self, *args):
            raise AssertionError("a cached split must not be decoded again")

    second = prepare_split(load_rows(source, "train"), Exploding(), FILTERS, str(tmp_path / "c"), 2, "k")
    assert len(second) == len(first) == len(SENTENCES)
    np.testing.assert_array_equal(second[3]["input_features"], first[3]["input_features"])
    # Another processor setting is another cache entry.
    with pytest.raises(AssertionError, match="must not be decoded again"):
        prepare_split(load_rows(source, "train"), Exploding(), FILTERS, str(tmp_path / "c"), 1, "other-key")


def _epoch(sampler, epoch, start=0):
    sampler.set_epoch(epoch, start)
    return list(sampler)


def test_two_processes_see_exactly_the_clips_of_one_process_with_twice_the_batch():
    one = ShardedBatchSampler(103, batch_size=4, seed=7)
    two = [ShardedBatchSampler(103, batch_size=2, num_processes=2, process_index=r, seed=7) for r in (0, 1)]
    single = _epoch(one, 3)
    split = [_epoch(s, 3) for s in two]
    assert len(single) == len(split[0]) == len(split[1]) == 103 // 4
    for big, a, b in zip(single, *split):
        assert big == a + b
    # batch 2 with 2 accumulation steps on one process reads the same clips per optimizer step
    small = _epoch(ShardedBatchSampler(103, batch_size=2, seed=7), 3)
    assert [small[2 * i] + small[2 * i + 1] for i in range(len(single))] == single


def test_sampler_resumes_at_a_batch_and_reshuffles_each_epoch():
    sampler = ShardedBatchSampler(50, batch_size=5, seed=1)
    full = _epoch(sampler, 0)
    assert _epoch(sampler, 0, start=4) == full[4:]
    assert len(sampler) == 10 - 4
    assert _epoch(sampler, 1) != full
    assert sorted(i for b in full for i in b) == list(range(50))


def _padding(batches, lengths):
    return sum(len(b) * max(lengths[b]) - sum(lengths[b]) for b in batches)


def test_grouped_batches_pad_less_stay_shuffled_and_resume_exactly():
    lengths = np.random.default_rng(0).integers(3, 60, size=1003)
    grouped = LengthGroupedBatchSampler(lengths, batch_size=8, seed=5, group_batches=10)
    plain = ShardedBatchSampler(1003, batch_size=8, seed=5)
    epoch = _epoch(grouped, 0)
    # every clip of the epoch's order once (the same remainder left out as without grouping)
    assert sorted(i for b in epoch for i in b) == sorted(i for b in _epoch(plain, 0) for i in b)
    assert _padding(epoch, lengths) < 0.3 * _padding(_epoch(plain, 0), lengths)
    # shuffled: long and short batches alternate, and every epoch has its own order
    longest = [max(lengths[b]) for b in epoch]
    assert longest != sorted(longest, reverse=True) and longest != sorted(longest)
    assert _epoch(grouped, 1) != epoch
    # a pure function of (seed, epoch): resuming at batch k gives the rest of the same epoch
    assert _epoch(LengthGroupedBatchSampler(lengths, 8, seed=5, group_batches=10), 0, start=17) == epoch[17:]
    # two processes with batch 4 see the clips of one process with batch 8 in every step
    two = [_epoch(LengthGroupedBatchSampler(lengths, 4, 2, rank, seed=5, group_batches=10), 0) for rank in (0, 1)]
    assert [a + b for a, b in zip(*two)] == epoch


def test_eval_batches_cover_every_clip_once_longest_first_with_equal_counts():
    durations = np.array([1.0, 5.0, 3.0, 2.0, 4.0, 0.5, 2.5])
    per_process = [eval_batches(durations, 2, 3, rank) for rank in range(3)]
    assert len({len(b) for b in per_process}) == 1  # ZeRO-3 generation needs equal counts
    seen = [i for batches in per_process for batch in batches for i in batch]
    assert set(seen) == set(range(7))
    assert per_process[0][0][0] == 1  # the longest clip goes first


def _stream_batches(rows, processor, workers: int):
    from train_loop.data.features import SkipReport
    from train_loop.data.loaders import TrainBatches, make_loader

    stream = StreamingBatches(RowShards(rows.rows), featurizer_for(processor, DataConfig(), "belarusian"),
                              Filters(max_seconds=2.0), collator_for(processor), batch_size=3,
                              shuffle_buffer_size=5, seed=7)
    return TrainBatches(make_loader(stream, None, workers, False), None, stream, SkipReport("train"), None)


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resumes_exactly_from_its_state_and_reshuffles_each_epoch(tmp_path, processor, workers):
    import io

    import torch

    texts = [f"{SENTENCES[i % len(SENTENCES)]} {i}" for i in range(30)]
    rows = load_rows(SourceConfig(data_dir=str(write_audiofolder(tmp_path, {"train": texts}, 0.3))), "train")
    batches = _stream_batches(rows, processor, workers)
    uninterrupted = [next(batches)["ids"] for _ in range(24)]  # 10 batches per epoch: 2.4 epochs
    per_epoch = [sorted(sum(uninterrupted[e * 10:(e + 1) * 10], [])) for e in range(2)]
    assert per_epoch[0] == per_epoch[1] and len(set(per_epoch[0])) == 30  # every clip once an epoch
    assert uninterrupted[:10] != uninterrupted[10:20]  # ... in a new order

    for stop in (4, 10, 13):  # mid-epoch, at the epoch's end, in the next epoch
        first = _stream_batches(rows, processor, workers)
        seen = [next(first)["ids"] for _ in range(stop)]
        saved = io.BytesIO()
        torch.save(first.state_dict(), saved)
        del first
        second = _stream_batches(rows, processor, workers)
        second.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=False))
        seen += [next(second)["ids"] for _ in range(24 - stop)]
        assert seen == uninterrupted, f"resumed after batch {stop}"


@pytest.mark.unit
def test_a_clip_far_too_loud_and_paths_that_leave_the_split_are_counted_skips(tmp_path, processor):
    """A float WAV written without scaling (samples of 1e30) would give NaN features; a manifest
    row pointing into another split is a leak; ./x.wav and x.wav are one clip."""
    import soundfile as sf

    from train_loop.data.sources import DUPLICATE_ROW, OUTSIDE_ROW

    root = write_audiofolder(tmp_path / "data", {"train": SENTENCES[:3], "validation": SENTENCES[:1]})
    train = root / "train"
    sf.write(train / "loud.wav", np.full(16000, 1e30, dtype=np.float32), 16000, subtype="FLOAT")
    with open(train / "metadata.csv", "a", encoding="utf-8") as handle:
        handle.write("loud.wav,Гучна.\n../validation/validation-000.wav,Уцечка.\n"
                     f"{root / 'validation' / 'validation-000.wav'},Уцечка.\n./train-000.wav,{SENTENCES[0]}\n")
    rows = load_rows(SourceConfig(data_dir=str(root)), "train")
    assert len(rows.dropped[OUTSIDE_ROW]) == 2 and len(rows.dropped[DUPLICATE_ROW]) == 1
    prepared = prepare_split(rows, featurizer_for(processor, DataConfig(), "belarusian"), FILTERS,
                             str(tmp_path / "cache"), num_proc=1, cache_key="k")
    prepared.report.add_left_out(rows.dropped)
    assert prepared.report.skipped[SKIP_UNREADABLE] == 1 and "far outside audio's [-1, 1]" in prepared.report.summary()
    assert prepared.report.skipped[OUTSIDE_ROW] == 2 and prepared.report.skipped[DUPLICATE_ROW] == 1
    assert sorted(prepared[i]["id"] for i in range(len(prepared))) == [f"train/train-00{i}.wav" for i in range(3)]
