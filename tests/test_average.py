"""python -m train_loop.average: the element-wise mean of checkpoints, as a plain Whisper folder."""

import json

import pytest
import torch
from conftest import tone, train_args
from safetensors.torch import load_file

from train_loop import average as average_cli
from train_loop import main as train_main


@pytest.fixture(scope="module")
def run_with_checkpoints(tiny_model_dir, tmp_path_factory):
    from conftest import SENTENCES, write_audiofolder

    root = tmp_path_factory.mktemp("avg")
    data = write_audiofolder(root / "data", {"train": SENTENCES, "validation": SENTENCES[:2]})
    out = root / "run"
    assert train_main.main(train_args(tiny_model_dir, data, out, root / "c", max_steps=3, save_steps=1,
                                      test_split_name="none")) == 0
    return out, data


def test_average_is_the_elementwise_mean_and_loads_as_a_whisper_model(run_with_checkpoints, tmp_path, capsys):
    from transformers import WhisperForConditionalGeneration, pipeline

    run, data = run_with_checkpoints
    inputs = [run / "checkpoint-1", run / "checkpoint-2", run / "checkpoint-3"]
    out = tmp_path / "avg"
    assert average_cli.main([*map(str, inputs), "--output_dir", str(out)]) == 0
    assert "averaged 3 checkpoints" in capsys.readouterr().out
    weights = [load_file(path / "model.safetensors") for path in inputs]
    averaged = load_file(out / "model.safetensors")
    for name, tensor in averaged.items():
        expected = sum(w[name].double() for w in weights) / 3
        assert torch.allclose(tensor.double(), expected, atol=1e-7), name
    assert not torch.equal(averaged["model.encoder.conv1.weight"], weights[-1]["model.encoder.conv1.weight"])
    assert json.loads((out / "averaged_from.json").read_text())["checkpoints"][0].endswith("checkpoint-1")
    model = WhisperForConditionalGeneration.from_pretrained(out)
    asr = pipeline("automatic-speech-recognition", model=str(out))
    assert isinstance(asr(tone(1.0))["text"], str)
    assert model.config.d_model == 32


def test_average_refuses_one_input_a_missing_folder_and_different_models(run_with_checkpoints, tmp_path,
                                                                        tiny_model_dir, capsys):
    from train_loop.synthetic.models import build_tiny_whisper

    run, _ = run_with_checkpoints
    assert average_cli.main([str(run / "checkpoint-1"), "--output_dir", str(tmp_path / "a")]) == 2
    assert "two or more" in capsys.readouterr().err
    assert average_cli.main([str(run / "checkpoint-1"), str(tmp_path / "nope"), "--output_dir", str(tmp_path / "a")]) == 2
    assert "nope: no model.safetensors here" in capsys.readouterr().err
    other = build_tiny_whisper(str(tmp_path / "wide"), chunk_length=2, d_model=64, layers=1, heads=2)
    assert average_cli.main([str(run / "checkpoint-1"), other, "--output_dir", str(tmp_path / "a")]) == 2
    assert "has shape" in capsys.readouterr().err


def test_average_never_writes_over_what_it_did_not_write(run_with_checkpoints, tmp_path, capsys):
    run, _ = run_with_checkpoints
    inputs = [str(run / "checkpoint-1"), str(run / "checkpoint-2")]
    weights = (run / "model.safetensors").read_bytes()
    # Into the run the checkpoints belong to (it holds them), or into a checkpoint: refused.
    for output in (run, run / "checkpoint-1" / "avg"):
        assert average_cli.main([*inputs, "--output_dir", str(output)]) == 2
        assert "overlaps the input" in capsys.readouterr().err
    # Into another run's folder (not an average): refused, nothing touched.
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"another run's weights")
    assert average_cli.main([*inputs, "--output_dir", str(other)]) == 2
    assert "holds files this command did not write" in capsys.readouterr().err
    assert (other / "model.safetensors").read_bytes() == b"another run's weights"
    assert (run / "model.safetensors").read_bytes() == weights
    # An earlier average is replaced whole, and only by a complete new one.
    out = tmp_path / "avg"
    assert average_cli.main([*inputs, "--output_dir", str(out)]) == 0
    first = load_file(out / "model.safetensors")
    assert average_cli.main([*inputs, str(run / "checkpoint-3"), "--output_dir", str(out)]) == 0
    assert not torch.equal(first["model.encoder.conv1.weight"], load_file(out / "model.safetensors")["model.encoder.conv1.weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["avg", "other-run"]  # no staging folder left
