"""--ema_decay: the average follows its recurrence, is saved in checkpoints, resumes exactly, and
is written as a Whisper folder (or evaluated and saved as the final model with --eval_with_ema)."""

import os
import shutil

import pytest
import torch
from conftest import train_args
from safetensors.torch import load_file

from train_loop import main as train_main

EMA = dict(ema_decay=0.5, max_steps=4, save_steps=1, eval_steps=2, learning_rate=1e-2, test_split_name="none")


def test_average_follows_its_recurrence_and_resumes_exactly(tiny_model_dir, dataset_dir, tmp_path):
    from transformers import WhisperForConditionalGeneration

    full = tmp_path / "full"
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, full, tmp_path / "c", **EMA)) == 0
    # average_k = 0.5 average_{k-1} + 0.5 weights_k, from the initial weights, with every
    # checkpoint-k holding weights_k
    average = {k: v.double() for k, v in load_file(os.path.join(tiny_model_dir, "model.safetensors")).items()}
    for step in range(1, 5):
        weights = load_file(full / f"checkpoint-{step}" / "model.safetensors")
        average = {k: 0.5 * average[k] + 0.5 * weights[k].double() for k in weights}
    saved = load_file(full / "ema" / "model.safetensors")
    for name, tensor in saved.items():
        if name in average:
            assert torch.allclose(tensor.double(), average[name], atol=1e-6), name
    final = load_file(full / "model.safetensors")
    assert not torch.equal(final["model.encoder.conv1.weight"], saved["model.encoder.conv1.weight"])
    WhisperForConditionalGeneration.from_pretrained(full / "ema")

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, resumed, tmp_path / "c", resume_from="latest",
                                      **EMA)) == 0
    again = load_file(resumed / "ema" / "model.safetensors")
    for name, tensor in saved.items():
        assert torch.equal(tensor, again[name]), name


def test_eval_with_ema_makes_the_average_the_final_model(tiny_model_dir, dataset_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, out, tmp_path / "c", eval_with_ema="true",
                                      **{**EMA, "ema_decay": 0.0})) == 0
    assert "final model = the weight average" in capsys.readouterr().out
    # decay 0: the average is the last weights, so the final model equals the last checkpoint's
    final, last = load_file(out / "model.safetensors"), load_file(out / "checkpoint-4" / "model.safetensors")
    for name, tensor in last.items():
        assert torch.allclose(final[name], tensor), name
    assert not (out / "ema").exists()


@pytest.mark.unit
def test_eval_with_ema_needs_the_decay(tiny_model_dir, dataset_dir, tmp_path, capsys):
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, tmp_path / "r", tmp_path / "c",
                                      eval_with_ema="true")) == 2
    assert "--eval_with_ema needs --ema_decay" in capsys.readouterr().err
