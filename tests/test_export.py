"""Export to CTranslate2 (faster-whisper) and ggml (whisper.cpp): the files hold the model, the
runtimes load them and decode as transformers does, and the parity check reports and gates.

Runtimes hard-code Whisper's 30 s window, so these tests use a random tiny model with it
(``model_30s``). A random model never ends a transcript, so its greedy tokens are compared as
prefixes (each runtime counts a length limit a little differently).
"""

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, SENTENCES, tone, write_audiofolder

ctranslate2 = pytest.importorskip("ctranslate2", reason="pip install '.[export]'")
MEL_FILTERS = Path(__file__).parent / "assets" / "whisper_mel_filters_80.npz"


def export(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "train_loop.export", *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def hf_greedy(model_dir, waveform, new_tokens):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    features = processor.feature_extractor([waveform], sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        out = model.generate(features, language="be", task="transcribe", max_new_tokens=new_tokens)
    return processor.tokenizer.decode(out[0], skip_special_tokens=True).strip(), model, processor, features


def read_ggml(path):
    """Parse a whisper.cpp model file: hyper-parameters, mel filters, vocabulary, tensors."""
    data = Path(path).read_bytes()
    offset = 0

    def take(fmt):
        nonlocal offset
        values = struct.unpack_from(fmt, data, offset)
        offset += struct.calcsize(fmt)
        return values

    magic, *hparams = take("12i")
    n_mels, n_fft = take("2i")
    filters = np.frombuffer(data, "<f4", n_mels * n_fft, offset).reshape(n_mels, n_fft)
    offset += 4 * n_mels * n_fft
    (n_tokens,) = take("i")
    tokens = []
    for _ in range(n_tokens):
        (length,) = take("i")
        tokens.append(data[offset:offset + length])
        offset += length
    tensors = {}
    while offset < len(data):
        n_dims, name_length, ftype = take("3i")
        dims = take(f"{n_dims}i")
        name = data[offset:offset + name_length].decode()
        offset += name_length
        dtype, size = ("<f2", 2) if ftype == 1 else ("<f4", 4)
        count = int(np.prod(dims))
        tensors[name] = np.frombuffer(data, dtype, count, offset).reshape(tuple(reversed(dims)))
        offset += size * count
    return magic, hparams, filters, tokens, tensors


def test_ggml_file_holds_the_weights_vocabulary_and_whispers_mel_filters(model_30s, tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperTokenizer

    from train_loop.runtimes.ggml import MAGIC, whisper_cpp_name

    export("--model", model_30s, "--format", "ggml", "--output_dir", tmp_path / "ggml")
    magic, hparams, filters, tokens, tensors = read_ggml(tmp_path / "ggml" / "ggml-model.bin")
    model = WhisperForConditionalGeneration.from_pretrained(model_30s)
    c = model.config
    assert magic == MAGIC
    assert hparams == [c.vocab_size, 1500, c.d_model, c.encoder_attention_heads, c.encoder_layers, 448,
                       c.d_model, c.decoder_attention_heads, c.decoder_layers, 80, 1]
    # The filterbank of OpenAI's whisper/assets/mel_filters.npz, to float32 precision.
    np.testing.assert_allclose(filters, np.load(MEL_FILTERS)["mel_80"], rtol=0, atol=1e-8)
    tokenizer = WhisperTokenizer.from_pretrained(model_30s)
    assert len(tokens) == tokenizer.convert_tokens_to_ids("<|endoftext|>") == 50257
    assert tokens[tokenizer.convert_tokens_to_ids("Ġhello")] == b" hello"
    # Belarusian text survives the byte mapping: its token ids spell it in the file's bytes.
    ids = tokenizer.encode(" Раз'яднаць ўсё", add_special_tokens=False)
    assert b"".join(tokens[i] for i in ids).decode("utf-8") == " Раз'яднаць ўсё"
    expected = {whisper_cpp_name(name): tensor for name, tensor in model.state_dict().items()
                if whisper_cpp_name(name) is not None}
    assert set(tensors) == set(expected) and "decoder.token_embedding.weight" in tensors
    for name, tensor in expected.items():
        want = tensor.float().numpy().reshape(tensors[name].shape)
        tolerance = 1e-3 * max(1.0, float(np.abs(want).max())) if tensors[name].dtype == np.float16 else 0
        np.testing.assert_allclose(tensors[name].astype(np.float32), want, rtol=0, atol=tolerance, err_msg=name)


def test_ggml_model_decodes_in_whisper_cpp_as_in_transformers(model_30s, tmp_path):
    pytest.importorskip("pywhispercpp", reason="pip install '.[export]'")
    from train_loop.runtimes import RUNTIMES

    export("--model", model_30s, "--format", "ggml", "--output_dir", tmp_path / "ggml")
    waveform = tone(2.0, freq=300)
    expected, *_ = hf_greedy(model_30s, waveform, new_tokens=12)
    got = RUNTIMES["ggml"].transcriber(str(tmp_path / "ggml" / "ggml-model.bin"), "be", "transcribe", 12)(waveform)
    assert expected and got.startswith(expected[: len(expected) // 2]), (expected, got)


def test_ctranslate2_export_loads_in_faster_whisper_with_the_models_numbers(model_30s, tmp_path):
    pytest.importorskip("faster_whisper", reason="pip install '.[export]'")
    from train_loop.runtimes import RUNTIMES

    out = tmp_path / "ct2"
    export("--model", model_30s, "--format", "ctranslate2", "--output_dir", out, "--quantization", "float32")
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    waveform = tone(2.0, freq=300)
    expected, model, processor, features = hf_greedy(model_30s, waveform, new_tokens=12)
    # The encoder output and the first step's logits equal transformers' (float32 both sides).
    whisper = ctranslate2.models.Whisper(str(out), device="cpu", compute_type="float32")
    encoded = np.array(whisper.encode(ctranslate2.StorageView.from_array(features.numpy())))
    with torch.no_grad():
        reference = model.model.encoder(features).last_hidden_state.numpy()
        prompt = torch.tensor([[50258, 50330, 50359, 50363]])
        logits = model(input_features=features, decoder_input_ids=prompt).logits[0, -1].numpy()
    np.testing.assert_allclose(encoded, reference, rtol=0, atol=1e-4)
    result = whisper.generate(ctranslate2.StorageView.from_array(features.numpy()), [prompt[0].tolist()],
                              beam_size=1, max_length=8, return_logits_vocab=True)[0]
    first = np.array(result.logits[0][0])
    assert int(first.argmax()) == int(logits.argmax())
    got = RUNTIMES["ctranslate2"].transcriber(str(out), "be", "transcribe", 12)(waveform)
    assert got and (expected.startswith(got) or got.startswith(expected)), (expected, got)


def test_parity_check_prints_both_wers_writes_a_report_and_gates_the_exit_status(model_30s, tmp_path):
    pytest.importorskip("faster_whisper", reason="pip install '.[export]'")
    data = write_audiofolder(tmp_path / "data", {"test": SENTENCES[:3]}, seconds=1.0)
    # A threshold no runtime can meet: the check must say FAILED and exit 1 (the passing side
    # is the real-model slow test in test_real_whisper.py).
    failing = export("--model", model_30s, "--format", "ctranslate2", "--check_data_dir", data, "--check_split",
                     "test", "--generation_max_length", "6", "--language", "be", "--output_dir", tmp_path / "a",
                     "--max_wer_increase", "-1000", check=False)
    assert failing.returncode == 1, failing.stderr[-2000:]
    assert "transformers   WER" in failing.stdout and "ctranslate2    WER" in failing.stdout
    assert "differing transcripts" in failing.stdout and "FAILED:" in failing.stdout
    report = json.loads((tmp_path / "a" / "parity.json").read_text())
    assert report["clips"] == 3 and report["passed"] is False
    assert {"transformers_wer", "runtime_wer", "differing", "examples"} <= set(report)
    assert "long-form check skipped: the check split's clips make 4 s" in failing.stdout
    assert report["long_form"] is None


@pytest.fixture(scope="module")
def model_30s_one_layer(tmp_path_factory):
    """A 30 s model with one decoder layer: whisper.cpp takes a 2-layer decoder for the first
    distil-whisper release and switches its timestamps off."""
    from train_loop.synthetic.models import build_random_whisper

    return build_random_whisper(str(tmp_path_factory.mktemp("tiny-30s-1")), chunk_length=30, d_model=64,
                                encoder_layers=1, decoder_layers=1, heads=4)


@pytest.mark.parametrize("fmt", ["ctranslate2", pytest.param("ggml", marks=pytest.mark.slow)])
def test_parity_check_decodes_a_long_file_with_timestamps_in_both(model_30s_one_layer, tmp_path, fmt):
    """The check split's clips joined into one file past the 30 s window: transformers and the
    runtime both decode it sequentially with timestamps; segments increase and stay inside the file.
    (A random model's words mean nothing, so the WER gate is opened; test_real_whisper holds it.)"""
    pytest.importorskip("faster_whisper" if fmt == "ctranslate2" else "pywhispercpp")
    data = write_audiofolder(tmp_path / "data", {"test": SENTENCES}, seconds=4.0)
    result = export("--model", model_30s_one_layer, "--format", fmt, "--check_data_dir", data, "--check_split", "test",
                    "--generation_max_length", "20", "--language", "be", "--output_dir", tmp_path / "out",
                    "--max_wer_increase", "10000")
    long_form = json.loads((tmp_path / "out" / "parity.json").read_text())["long_form"]
    assert long_form["clips"] == 8 and long_form["seconds"] == pytest.approx(8 * 4.5, abs=0.1)
    for side in ("transformers", fmt):
        assert long_form[side]["segments"] > 1 and long_form[side]["increasing"], long_form[side]
    assert long_form["transformers"]["inside"]  # clamped to the file, as train_loop.transcribe does
    # the runtime decodes as transformers does: the first window's segments start at the same times
    first = [start for start, _ in long_form["transformers"]["segment_times"] if start < 30]
    assert [start for start, _ in long_form[fmt]["segment_times"][: len(first)]][:3] == pytest.approx(first[:3], abs=0.05)
    assert "long-form, timestamps on (8 clips in one 36 s file)" in result.stdout


def test_export_from_a_checkpoint_folder_and_clear_errors(model_30s, tmp_path, capsys):
    import shutil

    # A checkpoint-N holds optimizer files beside the weights; it exports like any model folder.
    checkpoint = tmp_path / "run" / "checkpoint-7"
    shutil.copytree(model_30s, checkpoint)
    (checkpoint / "optimizer.bin").write_bytes(b"not a model file")
    export("--model", checkpoint, "--format", "ggml", "--output_dir", tmp_path / "from-checkpoint")
    assert (tmp_path / "from-checkpoint" / "ggml-model.bin").stat().st_size > 1_000_000
    from train_loop import export as export_cli

    for args, message in [
        (["--model", model_30s, "--format", "ggml", "--quantization", "float32"], "--quantization float32: ggml takes float16"),
        (["--model", model_30s, "--format", "ctranslate2", "--quantization", "q4"], "--quantization q4: ctranslate2 takes"),
        (["--model", model_30s, "--format", "ggml"], "is not empty; add --overwrite_output_dir"),
        (["--model", tmp_path / "nowhere", "--format", "ggml", "--overwrite_output_dir"], "cannot load a Whisper model"),
    ]:
        assert export_cli.main([*map(str, args), "--output_dir", str(tmp_path / "from-checkpoint")]) == 2
        assert message in capsys.readouterr().err


def test_an_export_never_replaces_its_input_and_refuses_a_window_faster_whisper_cannot_run(model_30s, tiny_model_dir,
                                                                                          tmp_path, capsys):
    import shutil

    from train_loop import export as export_cli

    model = tmp_path / "model"
    shutil.copytree(model_30s, model)
    before = sorted(p.name for p in model.iterdir())
    for output in (model, model / "export", tmp_path):  # the same folder, inside it, holding it
        code = export_cli.main(["--model", str(model), "--format", "ggml", "--output_dir", str(output),
                                "--overwrite_output_dir"])
        assert code == 2 and "overlaps --model" in capsys.readouterr().err
    assert sorted(p.name for p in model.iterdir()) == before  # nothing deleted
    # --overwrite_output_dir replaces an earlier export, never a folder the export did not write.
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert export_cli.main(["--model", str(model), "--format", "ggml", "--output_dir", str(other),
                            "--overwrite_output_dir"]) == 2
    assert "holds files this command did not write" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "mine"
    again = tmp_path / "ggml"
    for _ in range(2):
        assert export_cli.main(["--model", str(model), "--format", "ggml", "--output_dir", str(again),
                                "--overwrite_output_dir"]) == 0
    assert (again / "ggml-model.bin").is_file() and (again / "exported_from.json").is_file()
    assert f"to {again / 'ggml-model.bin'} (ggml" in capsys.readouterr().out
    # A 2 s window: faster-whisper cuts audio into 30 s windows. Refused before anything is written.
    out = tmp_path / "ct2"
    assert export_cli.main(["--model", tiny_model_dir, "--format", "ctranslate2", "--output_dir", str(out)]) == 2
    assert "faster-whisper (CTranslate2) always cuts audio into 30 s windows" in capsys.readouterr().err
    assert not out.exists()
