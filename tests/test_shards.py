"""Parquet shards: every row back in order, a killed sharding continues, training streams them exactly."""

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest
import torch
from conftest import SENTENCES, train_args, write_audiofolder
from safetensors.torch import load_file
from test_overlap import write_cv

from train_loop import main as train_main
from train_loop import shard as shard_main
from train_loop.data.config import SourceConfig
from train_loop.data.sources import load_rows


def shard_files(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".parquet"))


@pytest.mark.unit
def test_every_row_comes_back_in_order_with_its_bytes(tmp_path, capsys):
    data = write_cv(tmp_path / "be")
    out = tmp_path / "shards" / "validated"
    assert shard_main.main(["--data_dir", str(data), "--split", "validated", "--output_dir", str(out),
                            "--shard_size_mb", "0.01"]) == 0
    assert "10 clips, 0.00 h, 6 speakers in 4 shards" in capsys.readouterr().out
    original = load_rows(SourceConfig(data_dir=str(data)), "validated").rows
    index = json.loads((out / "index.json").read_text())
    assert index["rows"] == 10 and index["split"] == "validated" and index["speakers"] == 6
    assert [s["file"] for s in index["shards"]] == shard_files(out)
    back = load_rows(SourceConfig(data_dir=str(tmp_path / "shards")), "validated")  # a folder of split folders
    assert back.num_rows == 10 and back.fingerprint == index["fingerprint"]
    for before, after in zip(original, back.rows, strict=True):
        assert (after["id"], after["text"], after["speaker"]) == (before["id"], before["text"], before["speaker"])
        assert after["audio"]["bytes"] == open(before["audio"], "rb").read()
        assert after["audio"]["path"] == os.path.basename(before["audio"])
    stream = load_rows(SourceConfig(data_dir=f"file://{out}"), "validated", streaming=True)  # a URL
    assert stream.rows.num_shards == 4 and [r["id"] for r in stream.rows] == list(original["id"])
    durations = pq.read_table(out / "shard-00000.parquet").column("duration").to_pylist()
    assert durations == pytest.approx([1.0] * len(durations), abs=0.05)


@pytest.mark.unit
def test_a_killed_sharding_continues_and_ends_as_a_clean_one(tmp_path, monkeypatch):
    import train_loop.data.shards as shards

    data = write_cv(tmp_path / "be")
    (data / "clips" / "more_6.mp3").unlink()  # a row whose audio is gone: counted, not sharded
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    args = ["--data_dir", str(data), "--split", "validated", "--shard_size_mb", "0.01"]
    assert shard_main.main([*args, "--output_dir", str(clean)]) == 0

    real_write = pq.write_table
    calls = []

    def dies_on_the_third_shard(table, path, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            open(path, "wb").write(b"half a shard")  # what a kill mid-write leaves
            raise KeyboardInterrupt
        return real_write(table, path, **kwargs)

    monkeypatch.setattr(pq, "write_table", dies_on_the_third_shard)
    assert shard_main.main([*args, "--output_dir", str(killed)]) == 130
    assert shard_files(killed) == ["shard-00000.parquet", "shard-00001.parquet"]
    assert not (killed / "index.json").exists()
    monkeypatch.setattr(pq, "write_table", real_write)
    assert shard_main.main([*args, "--output_dir", str(killed)]) == 0
    assert not any(name.endswith(".tmp") for name in os.listdir(killed))
    assert json.loads((killed / "index.json").read_text()) == json.loads((clean / "index.json").read_text())
    for name in shard_files(clean):
        assert pq.read_table(killed / name).equals(pq.read_table(clean / name))
    assert json.loads((clean / "index.json").read_text())["skipped"] == {shards.SKIP_MISSING_AUDIO: 1}


@pytest.mark.unit
def test_a_shard_folder_of_another_split_is_a_clear_error(tmp_path):
    from train_loop.core.errors import UserError

    data = write_cv(tmp_path / "be")
    assert shard_main.main(["--data_dir", str(data), "--split", "validated", "--output_dir", str(tmp_path / "s")]) == 0
    with pytest.raises(UserError, match="holds the shards of split 'validated', not 'test'"):
        load_rows(SourceConfig(data_dir=str(tmp_path / "s")), "test")


def test_training_streams_shards_and_resumes_exactly(tiny_model_dir, tmp_path):
    data = write_audiofolder(tmp_path / "data", {"train": [f"{SENTENCES[i % 8]} {i}" for i in range(24)],
                                                 "validation": SENTENCES[:2]}, seconds=0.5, speakers=3)
    for split in ("train", "validation"):
        assert shard_main.main(["--data_dir", str(data), "--split", split, "--output_dir",
                                str(tmp_path / "shards" / split), "--shard_size_mb", "0.05"]) == 0
    assert len(shard_files(tmp_path / "shards" / "train")) >= 4
    run = dict(streaming="true", dataloader_num_workers=2, shuffle_buffer_size=4, max_steps=6, save_steps=2,
               test_split_name="none", log_sample_ids="true")
    full = tmp_path / "full"
    assert train_main.main(train_args(tiny_model_dir, tmp_path / "shards", full, tmp_path / "cache", **run)) == 0
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")
    assert train_main.main(train_args(tiny_model_dir, tmp_path / "shards", resumed, tmp_path / "cache",
                                      resume_from="latest", **run)) == 0

    def rows(out, name="metrics.jsonl"):
        drop = ("time", "elapsed_seconds", "eta_seconds", "samples_per_second", "audio_seconds_per_second",
                "eval_seconds", "eval_samples_per_second")
        return [{k: v for k, v in json.loads(line).items() if k not in drop}
                for line in open(out / name, encoding="utf-8")]

    assert rows(resumed) == [r for r in rows(full) if r["step"] > 4]
    assert rows(resumed, "samples.jsonl") == [r for r in rows(full, "samples.jsonl") if r["step"] > 4]
    for name, tensor in load_file(full / "model.safetensors").items():
        assert torch.equal(tensor, load_file(resumed / "model.safetensors")[name]), name
