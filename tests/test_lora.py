"""--use_lora (PEFT): only the adapters train, checkpoints hold them alone and resume exactly,
and the final model is a plain, merged Whisper folder."""

import json
import os

import pytest
import torch
from conftest import tone, train_args
from safetensors.torch import load_file

from train_loop import main as train_main

LORA = dict(use_lora="true", lora_r=4, lora_alpha=8, lora_dropout=0.1, lora_target_modules="q_proj,v_proj",
            max_steps=4, save_steps=2, eval_steps=2, learning_rate=1e-2, test_split_name="none",
            log_sample_ids="true")


def records(out):
    keep = ("loss", "learning_rate", "grad_norm", "eval_wer")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("step", *keep) if k in r} for r in lines]


def test_lora_trains_adapters_only_resumes_exactly_and_merges(tiny_model_dir, dataset_dir, tmp_path, capsys):
    from transformers import WhisperForConditionalGeneration, pipeline

    full = tmp_path / "full"
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, full, tmp_path / "c", **LORA)) == 0
    printed = capsys.readouterr().out
    assert "parameters train (" in printed and "LoRA r 4 on q_proj,v_proj" in printed
    # the checkpoint's model file holds the adapters alone
    saved = load_file(full / "checkpoint-2" / "model.safetensors")
    assert saved and all(".lora_A." in name or ".lora_B." in name for name in saved)
    base = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    assert sum(t.numel() for t in saved.values()) < 0.2 * sum(t.numel() for t in base.values())
    # the final model is plain Whisper: base weights plus B @ A, and it loads in a pipeline
    final = load_file(full / "model.safetensors")
    assert not any("lora" in name or "base_layer" in name for name in final)
    changed = [name for name in final if not torch.equal(final[name], base[name])]
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed)
    WhisperForConditionalGeneration.from_pretrained(full)
    assert isinstance(pipeline("automatic-speech-recognition", model=str(full))(tone(1.0))["text"], str)

    # resume from checkpoint-2: the same losses, learning rates, WER and final weights
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    import shutil

    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, resumed, tmp_path / "c", resume_from="latest",
                                      **LORA)) == 0
    assert records(resumed) == [r for r in records(full) if r["step"] > 2]
    again = load_file(resumed / "model.safetensors")
    for name, tensor in final.items():
        assert torch.equal(tensor, again[name]), name


def test_lora_without_merge_saves_a_peft_adapter_folder(tiny_model_dir, dataset_dir, tmp_path):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    out = tmp_path / "adapters"
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, out, tmp_path / "c",
                                      **{**LORA, "lora_merge": "false", "max_steps": 2})) == 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    model = PeftModel.from_pretrained(WhisperForConditionalGeneration.from_pretrained(tiny_model_dir), out)
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0


@pytest.mark.parametrize("extra, expected", [
    ({"lora_r": 8}, "take effect with --use_lora"),
    ({"use_lora": "true", "lora_target_modules": "query"}, "--lora_target_modules query: no module named query"),
])
@pytest.mark.unit
def test_lora_flag_mistakes_are_one_line_errors(tiny_model_dir, dataset_dir, tmp_path, capsys, extra, expected):
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, tmp_path / "r", tmp_path / "c", **extra)) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.unit
def test_lora_with_a_frozen_encoder_adapts_the_decoder_only(tiny_model_dir):
    pytest.importorskip("peft")
    from transformers import WhisperForConditionalGeneration

    from train_loop.training.config import LoraConfig
    from train_loop.training.lora import apply_lora

    config = LoraConfig(use_lora=True, lora_r=4, lora_target_modules="q_proj,v_proj")
    for freeze_encoder, encoder_trains in ((False, True), (True, False)):
        model, adapters = apply_lora(WhisperForConditionalGeneration.from_pretrained(tiny_model_dir), config,
                                     freeze_encoder=freeze_encoder)
        trained = [name for name, param in model.named_parameters() if param.requires_grad]
        assert trained and all(".lora_" in name for name in trained)
        assert any(".decoder." in name for name in trained)
        assert any(".encoder." in name for name in trained) is encoder_trains
        assert adapters.whisper() is model.get_base_model()


@pytest.mark.unit
def test_an_adapter_only_checkpoint_is_never_taken_for_a_model(tiny_model_dir, tmp_path, capsys):
    """A LoRA run's checkpoint-N holds the adapters alone: evaluate, transcribe and export say what
    to pass instead of loading a Whisper whose base weights are random."""
    import shutil

    from safetensors.torch import save_file

    from train_loop import evaluate as evaluate_cli
    from train_loop import export as export_cli
    from train_loop import transcribe as transcribe_cli

    checkpoint = tmp_path / "run" / "checkpoint-2"
    shutil.copytree(tiny_model_dir, checkpoint)
    save_file({"base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.default.weight": torch.zeros(4, 32)},
              checkpoint / "model.safetensors")
    sf_path = tmp_path / "x.wav"
    import soundfile as sf

    sf.write(sf_path, tone(1.0), 16000)
    commands = [
        (evaluate_cli.main, ["--model", str(checkpoint), "--data_dir", str(tmp_path)]),
        (transcribe_cli.main, ["--model", str(checkpoint), str(sf_path)]),
        (export_cli.main, ["--model", str(checkpoint), "--format", "ggml", "--output_dir", str(tmp_path / "e")]),
    ]
    for main, args in commands:
        assert main(args) == 2
        assert f"--model {checkpoint} holds only LoRA adapters" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
