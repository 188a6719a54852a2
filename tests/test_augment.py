"""Augmentation: every draw a pure function of (seed, epoch, example id), so resume stays exact."""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SENTENCES, tone, train_args, write_audiofolder
from safetensors.torch import load_file

from train_loop import main as train_main
from train_loop.core.errors import UserError
from train_loop.data.augment import Augmenter, add_noise, augmenter_for
from train_loop.data.config import AugmentConfig


def noise_folder(root):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sf.write(root / "hum.wav", (0.1 * rng.standard_normal(16000 * 3)).astype(np.float32), 16000)
    sf.write(root / "hiss.flac", (0.05 * rng.standard_normal(8000)).astype(np.float32), 8000)
    return root


@pytest.mark.unit
def test_a_draw_depends_only_on_seed_epoch_and_id(tmp_path):
    augmenter = Augmenter(seed=1, speeds=(0.9, 1.1), gain_db=(-6, 6), noise_dir=str(noise_folder(tmp_path / "n")),
                          snr_db=(5, 30), noise_probability=0.5)
    wave = tone(1.0)
    same = [augmenter(wave, 3, "train/a.wav") for _ in range(2)]
    np.testing.assert_array_equal(same[0], same[1])
    # a fresh object (a restarted worker, a resumed run) gives the same audio
    again = Augmenter(seed=1, speeds=(0.9, 1.1), gain_db=(-6, 6), noise_dir=str(tmp_path / "n"), snr_db=(5, 30),
                      noise_probability=0.5)
    np.testing.assert_array_equal(again(wave, 3, "train/a.wav"), same[0])
    assert augmenter.draw(4, "train/a.wav") != augmenter.draw(3, "train/a.wav")
    assert augmenter.draw(3, "train/b.wav") != augmenter.draw(3, "train/a.wav")
    assert Augmenter(seed=2, speeds=(0.9, 1.1)).draw(3, "train/a.wav") != augmenter.draw(3, "train/a.wav")
    draws = [augmenter.draw(0, f"c{i}") for i in range(400)]
    assert all(0.9 <= d.speed <= 1.1 and -6 <= d.gain_db <= 6 for d in draws)
    assert 0.4 < np.mean([d.noise_file >= 0 for d in draws]) < 0.6


@pytest.mark.unit
def test_speed_gain_and_noise_do_what_they_say():
    wave = tone(2.0)
    slower = Augmenter(seed=0, speeds=(0.8, 0.8))(wave, 0, "x")  # a one-point range
    assert len(slower) == pytest.approx(len(wave) / 0.8, abs=2)
    louder = Augmenter(seed=0, gain_db=(6.0, 6.0))(wave, 0, "x")
    assert np.max(np.abs(louder)) == pytest.approx(np.max(np.abs(wave)) * 10 ** (6 / 20), rel=1e-4)
    noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    noisy = add_noise(wave, noise, 0.3, snr_db=10.0)
    snr = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean((noisy - wave).astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=0.01)
    listed = Augmenter(seed=0, speeds=(0.9, 1.0, 1.1))  # three or more: a list to pick from
    assert {listed.draw(0, f"c{i}").speed for i in range(100)} == {0.9, 1.0, 1.1}


@pytest.mark.unit
def test_bad_augmentation_flags_name_the_flag(tmp_path):
    for config, message in [(AugmentConfig(speed_perturbation="0.9,fast"), "--speed_perturbation 0.9,fast"),
                            (AugmentConfig(speed_perturbation="0.1,1.1"), "between 0.5 and 2"),
                            (AugmentConfig(noise_dir=str(tmp_path / "none")), "no such folder"),
                            (AugmentConfig(noise_dir=str(tmp_path)), "holds no audio")]:
        with pytest.raises(UserError, match=message):
            augmenter_for(config, 0)
    (tmp_path / "bad.wav").write_bytes(b"RIFFjunk")
    with pytest.raises(UserError, match="bad.wav cannot be read"):
        augmenter_for(AugmentConfig(noise_dir=str(tmp_path)), 0)


def test_prepared_features_with_augmentation_is_a_clear_error(tiny_model_dir, dataset_dir, tmp_path, capsys):
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, tmp_path / "run", tmp_path / "c",
                                      gain_db="-6,6")) == 2
    assert "add --pack_to_window (recommended) or --streaming" in capsys.readouterr().err


def records(output_dir, name="metrics.jsonl"):
    drop = ("time", "elapsed_seconds", "eta_seconds", "samples_per_second", "audio_seconds_per_second",
            "eval_seconds", "eval_samples_per_second")
    with open(os.path.join(output_dir, name), encoding="utf-8") as handle:
        return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in handle]


@pytest.mark.parametrize("mode", ["packed", "streaming"])
def test_an_augmented_run_resumes_exactly(tiny_model_dir, tmp_path, mode):
    data = write_audiofolder(tmp_path / "data", {"train": [f"{SENTENCES[i % 8]} {i}" for i in range(16)],
                                                 "validation": SENTENCES[:2]}, seconds=0.5, speakers=2)
    run = dict(per_device_train_batch_size=2, max_steps=5, warmup_steps=1, save_steps=2, test_split_name="none",
               dataloader_num_workers=2, speed_perturbation="0.9,1.1", gain_db="-6,6",
               noise_dir=str(noise_folder(tmp_path / "noise")), noise_probability=0.5)
    if mode == "packed":
        run.update(pack_to_window="true", speech_bounds="file", prev_text_probability=0.5)
    else:
        run.update(streaming="true", shuffle_buffer_size=4)
    full, plain = tmp_path / "full", tmp_path / "plain"
    assert train_main.main(train_args(tiny_model_dir, data, full, tmp_path / "cache", **run)) == 0
    no_augment = {k: v for k, v in run.items() if k not in ("speed_perturbation", "gain_db", "noise_dir")}
    assert train_main.main(train_args(tiny_model_dir, data, plain, tmp_path / "cache", **no_augment)) == 0
    losses = [r["loss"] for r in records(full) if "loss" in r]
    assert losses != [r["loss"] for r in records(plain) if "loss" in r]  # the audio did change

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    assert train_main.main(train_args(tiny_model_dir, data, resumed, tmp_path / "cache",
                                      **{**run, "resume_from": "latest"})) == 0
    assert records(resumed) == [r for r in records(full) if r["step"] > 2]
    for name, tensor in load_file(full / "model.safetensors").items():
        assert torch.equal(tensor, load_file(resumed / "model.safetensors")[name]), name
