"""Several training sources in fixed shares: proportions, determinism, process splits, resume."""

import json
import shutil
from collections import Counter

import pytest
import torch
from conftest import SENTENCES, launch, train_args, write_audiofolder
from safetensors.torch import load_file

from train_loop import main as train_main
from train_loop.core.errors import UserError
from train_loop.data.config import MixConfig, SourceConfig
from train_loop.data.mixing import MixedBatchSampler
from train_loop.data.samplers import ShardedBatchSampler

ENGLISH = ["The cat sleeps.", "A red apple.", "We walk home.", "It is raining.", "Good morning."]


def mixed_sampler(batch_size=8, processes=1, index=0, seed=3, weights=(0.1, 0.05), sizes=(1000, 60, 500)):
    parts = [ShardedBatchSampler(size, batch_size, processes, index, seed=seed + 1_000_003 * n)
             for n, size in enumerate(sizes)]
    return MixedBatchSampler(parts, ["be", "en", "uk"], list(weights), batch_size, processes, index, seed=seed)


@pytest.mark.unit
def test_each_source_gives_its_share_and_a_small_source_cycles_through_all_its_clips():
    sampler = mixed_sampler()
    drawn = Counter()
    en_items = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        for batch in sampler:
            drawn.update(source for source, _ in batch)
            en_items += [item for source, item in batch if source == 1]
    total = sum(drawn.values())
    assert drawn[1] / total == pytest.approx(0.10, abs=0.005)
    assert drawn[2] / total == pytest.approx(0.05, abs=0.005)
    # 60 English clips, 111 drawn per epoch: read in cycles, so no clip is drawn twice more than another
    seen = Counter(en_items)
    assert set(seen) == set(range(60)) and max(seen.values()) - min(seen.values()) == 1
    assert sampler.clips_drawn(4, 0) == {"be": drawn[0], "en": drawn[1], "uk": drawn[2]}


@pytest.mark.unit
def test_the_order_depends_only_on_the_seed_and_resumes_at_any_batch():
    first, second = mixed_sampler(), mixed_sampler()
    second.set_epoch(2)
    list(second)  # a sampler that has seen other epochs gives the same order
    first.set_epoch(1), second.set_epoch(1)
    full = list(first)
    assert full == list(second)
    second.set_epoch(1, start_batch=7)
    assert list(second) == full[7:]
    assert mixed_sampler(seed=4).mixed(1) != first.mixed(1)
    assert first.clips_drawn(1, 7) == {name: sum(1 for batch in full[:7] for s, _ in batch if s == n)
                                       + first.clips_drawn(1, 0)[name] for n, name in enumerate(["be", "en", "uk"])}


@pytest.mark.unit
def test_two_processes_draw_what_one_process_draws_with_the_global_batch():
    one = mixed_sampler(batch_size=8)
    halves = [mixed_sampler(batch_size=4, processes=2, index=i) for i in range(2)]
    for epoch in (0, 3):
        for sampler in [one, *halves]:
            sampler.set_epoch(epoch)
        assert list(one) == [a + b for a, b in zip(*halves)]
        assert halves[0].clips_drawn(epoch, 5) == one.clips_drawn(epoch, 5)


@pytest.mark.unit
def test_mix_flags_are_checked_with_their_names():
    main = SourceConfig(data_dir="be")
    sources = MixConfig(mix_data_dir="en,uk", mix_language="en,uk", mix_weight="0.1,0.05").sources(main)
    assert [(s.name, s.split, s.language, s.weight) for s in sources] == [("en", "train", "en", 0.1),
                                                                         ("uk", "train", "uk", 0.05)]
    assert MixConfig(mix_data_dir="en", mix_dataset_name="user/uk", mix_language="en,uk",
                     mix_weight="0.1,0.1").sources(main)[1].source.dataset_name == "user/uk"
    for config, message in [
            (MixConfig(mix_data_dir="en", mix_language="en"), "--mix_weight is needed"),
            (MixConfig(mix_data_dir="en,uk", mix_language="en", mix_weight="0.1"), "1 values for 2 mixed"),
            (MixConfig(mix_data_dir="en", mix_language="en", mix_weight="1.2"), "each share must be above 0"),
            (MixConfig(mix_data_dir="en,uk", mix_language="en", mix_weight="0.6,0.5"), "together below 1"),
            (MixConfig(mix_data_dir="en", mix_language="en", mix_weight="ten"), "'ten' is not a number"),
            (MixConfig(mix_weight="0.1"), "take effect with --mix_data_dir")]:
        with pytest.raises(UserError, match=message):
            config.sources(main)


RUN = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=6, warmup_steps=1,
           learning_rate=5e-3, save_steps=2, test_split_name="none", mix_language="en", mix_weight="0.3",
           log_sample_ids="true")


@pytest.fixture(scope="module")
def mix_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    be = write_audiofolder(root / "be", {"train": [f"{SENTENCES[i % 8]} {i}" for i in range(14)],
                                         "validation": SENTENCES[:2]}, seconds=0.5)
    en = write_audiofolder(root / "en", {"train": ENGLISH}, seconds=0.5)
    return be, en


@pytest.fixture(scope="module")
def mixed_run(tiny_model_dir, mix_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed-run")
    be, en = mix_data
    assert train_main.main(train_args(tiny_model_dir, be, out, out / "cache", mix_data_dir=str(en), **RUN)) == 0
    return out


def rows(out, name="metrics.jsonl"):
    with open(out / name, encoding="utf-8") as handle:
        return [{k: v for k, v in json.loads(line).items()
                 if k not in ("time", "elapsed_seconds", "eta_seconds", "samples_per_second", "audio_seconds_per_second",
                              "eval_seconds", "eval_samples_per_second")}
                for line in handle]


def test_a_mixed_run_prints_its_plan_and_logs_clips_per_source(mixed_run, mix_data):
    be, en = mix_data
    last = [r for r in rows(mixed_run) if "loss" in r][-1]
    assert last["mix_clips"] == {str(be): last["mix_clips"][str(be)], str(en): last["mix_clips"][str(en)]}
    assert sum(last["mix_clips"].values()) == 6 * 4  # 6 steps x 2 x 2 accumulation
    assert 0.1 < last["mix_clips"][str(en)] / 24 < 0.5
    samples = [json.loads(line) for line in open(mixed_run / "samples.jsonl", encoding="utf-8")]
    assert any(i.startswith(f"{en}:train/") for r in samples for i in r["ids"])  # a mixed source's ids name it
    log = (mixed_run / "train.log").read_text(encoding="utf-8")
    assert "mixing 2 sources" in log and f"{en} (en): " in log and "% of the examples" in log


@pytest.mark.unit
def test_mixed_examples_carry_their_own_language_token(tiny_model_dir, processor, mix_data, tmp_path):
    from accelerate import Accelerator

    from train_loop.data.build import build_train_batches
    from train_loop.data.config import DataConfig, FilterConfig

    be, en = mix_data
    source = SourceConfig(data_dir=str(be), cache_dir=str(tmp_path))
    mix = MixConfig(mix_data_dir=str(en), mix_language="en", mix_weight="0.3").sources(source)
    batches = build_train_batches(source, DataConfig(dataloader_num_workers=0), FilterConfig(max_duration_in_seconds=2),
                                  processor, Accelerator(cpu=True), batch_size=4, seed=0, eval_normalizer="belarusian",
                                  mix=mix)
    tokens = processor.tokenizer.convert_tokens_to_ids
    language_of = {}
    for _ in range(8):
        batch = next(batches)
        for row_id, labels in zip(batch["ids"], batch["labels"]):
            language_of[row_id] = int(labels[0])  # the first target after <|startoftranscript|>
    batches.close()
    assert set(language_of.values()) == {tokens("<|be|>"), tokens("<|en|>")}
    for row_id, language in language_of.items():
        assert language == tokens("<|en|>" if row_id.startswith(f"{en}:") else "<|be|>"), row_id


def test_a_mixed_run_resumes_exactly(mixed_run, mix_data, tiny_model_dir, tmp_path):
    be, en = mix_data
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(mixed_run / "checkpoint-2", resumed / "checkpoint-2")
    assert train_main.main(train_args(tiny_model_dir, be, resumed, mixed_run / "cache", mix_data_dir=str(en),
                                      resume_from="latest", **RUN)) == 0
    assert rows(resumed) == [r for r in rows(mixed_run) if r["step"] > 2]
    assert rows(resumed, "samples.jsonl") == [r for r in rows(mixed_run, "samples.jsonl") if r["step"] > 2]
    for name, tensor in load_file(mixed_run / "model.safetensors").items():
        assert torch.equal(tensor, load_file(resumed / "model.safetensors")[name]), name


def test_a_mixed_run_on_two_processes_gives_the_numbers_of_one(mixed_run, mix_data, tiny_model_dir, tmp_path):
    be, en = mix_data
    out = tmp_path / "ddp"
    result = launch("launch/accelerate/multi_gpu.yaml",
                    train_args(tiny_model_dir, be, out, tmp_path / "cache", mix_data_dir=str(en),
                               **{**RUN, "per_device_train_batch_size": 1}))
    assert "2 process(es) on cpu" in result.stdout
    mine, theirs = [r for r in rows(out) if "loss" in r], [r for r in rows(mixed_run) if "loss" in r]
    assert [r["mix_clips"] for r in mine] == [r["mix_clips"] for r in theirs]
    assert [sorted(r["ids"]) for r in rows(out, "samples.jsonl")] == \
        [sorted(r["ids"]) for r in rows(mixed_run, "samples.jsonl")]  # the same clips in every step
    for a, b in zip(mine, theirs, strict=True):  # batches of 1 and 2 pad differently: float rounding only
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_packed_windows_mix_too(tiny_model_dir, mix_data, tmp_path):
    be, en = mix_data
    out = tmp_path / "packed"
    run = {**RUN, "pack_to_window": "true", "speech_bounds": "file", "max_steps": 3, "save_steps": 0}
    assert train_main.main(train_args(tiny_model_dir, be, out, tmp_path / "cache", mix_data_dir=str(en), **run)) == 0
    last = [r for r in rows(out) if "loss" in r][-1]
    assert last["mix_clips"][str(en)] > 0 and last["mix_clips"][str(be)] > 0
    log = (out / "train.log").read_text(encoding="utf-8")
    assert "windows per epoch" in log and "packing: " in log
