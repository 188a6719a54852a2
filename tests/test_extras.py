"""A missing optional extra is one line naming the `pip install '.[extra]'` to run, never a traceback."""

from __future__ import annotations

import importlib.util
import sys

import pytest

pytestmark = pytest.mark.unit


@pytest.fixture
def without(monkeypatch):
    """Make packages look uninstalled: `import x` fails and find_spec finds nothing."""
    real_find_spec = importlib.util.find_spec

    def hide(*names):
        for name in names:
            for loaded in [key for key in sys.modules if key.startswith(name + ".")]:
                monkeypatch.setitem(sys.modules, loaded, None)  # also `from name.sub import x`
            monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name.split(".")[0] in names else real_find_spec(name, *a))

    return hide


def test_the_app_without_gradio(without, tmp_path, capsys):
    from train_loop import app

    without("gradio")
    (tmp_path / "metrics.jsonl").write_text("")
    assert app.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: the app needs Gradio: pip install '.[app]' (or pip install gradio)"


def test_lora_without_peft(without):
    from train_loop.core.errors import UserError
    from train_loop.training.config import LoraConfig
    from train_loop.training.lora import apply_lora

    without("peft")
    with pytest.raises(UserError, match=r"--use_lora needs PEFT: pip install '\.\[lora\]'"):
        apply_lora(object(), LoraConfig(use_lora=True))


def test_export_without_ctranslate2_or_pywhispercpp(without):
    from train_loop.core.errors import UserError
    from train_loop.runtimes import ctranslate2, ggml

    without("ctranslate2", "faster_whisper", "pywhispercpp")
    with pytest.raises(UserError, match=r"pip install '\.\[export\]'"):
        ctranslate2.export(None, None, "out", "float16")
    with pytest.raises(UserError, match=r"pip install '\.\[export\]'"):
        ctranslate2.transcriber("out", "be", "transcribe", 10)
    with pytest.raises(UserError, match=r"pip install '\.\[export\]'"):
        ggml.transcriber("out/ggml-model.bin", "be", "transcribe", 10)


def test_eight_bit_adam_without_bitsandbytes(without, monkeypatch):
    import torch

    from train_loop.core.errors import UserError
    from train_loop.training.optim import OPTIMIZERS

    without("bitsandbytes")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the check after the GPU one
    with pytest.raises(UserError, match=r"--optim adamw_8bit needs bitsandbytes: pip install '\.\[8bit\]'"):
        OPTIMIZERS["adamw_8bit"]([], {"lr": 1e-3})


def test_a_deepspeed_launch_without_deepspeed(without, monkeypatch, tmp_path):
    from train_loop.core.errors import UserError
    from train_loop.training.config import parse_train_config
    from train_loop.training.setup import build_accelerator

    without("deepspeed")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    (tmp_path / "data").mkdir()
    config = parse_train_config(["--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "run")])
    with pytest.raises(UserError, match=r"pip install '\.\[deepspeed\]'"):
        build_accelerator(config)


def test_a_full_disk_or_a_read_only_folder_is_one_line_in_every_command(capsys):
    """The tools share run_tool: an OSError the user fixes (space, permissions) is one line naming
    the file; any other OSError is a bug and keeps its traceback."""
    import errno

    from train_loop.core.console import run_tool

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "/out/model.safetensors")

    def read_only():
        raise OSError(errno.EROFS, "Read-only file system", "/out")

    assert run_tool(full) == 2
    assert capsys.readouterr().err == ("error: /out/model.safetensors: No space left on device; free some space or "
                                       "choose another folder\n")
    assert run_tool(read_only) == 2
    assert "error: /out: Read-only file system; the file system is read-only" in capsys.readouterr().err

    def bug():
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError):
        run_tool(bug)


def test_the_app_on_a_busy_port_is_one_line_before_it_says_serving(tmp_path, capsys):
    import socket

    pytest.importorskip("gradio")
    from train_loop import app

    (tmp_path / "metrics.jsonl").write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert app.main([str(tmp_path), "--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert f"error: --port {port} on 127.0.0.1:" in captured.err and "serving" not in captured.out


def test_try_it_decodes_with_the_projects_decoder_and_a_failing_model_only_fails_its_own_pane(tiny_model_dir, tmp_path):
    """An Ogg upload is read without FFmpeg; a comparison model that cannot load (a Hub id
    offline) says why in its pane, and the run's model still transcribes."""
    import soundfile as sf
    from conftest import tone

    from train_loop.app import Transcribers, try_transcribing

    clip = tmp_path / "clip.ogg"
    sf.write(clip, tone(1.0), 16000, format="OGG")
    panes = try_transcribing(Transcribers(tiny_model_dir, "openai/whisper-small", "be", max_new_tokens=4), str(clip))
    assert not panes[0].startswith("error") and "s, " in panes[0]
    assert panes[1].startswith("error: --model openai/whisper-small: cannot load")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEjunk")
    run, compare = try_transcribing(Transcribers(tiny_model_dir, None, "be"), str(broken))
    assert run.startswith("error: this audio cannot be read") and compare == ""


def test_a_damaged_run_file_is_a_note_on_the_page_not_a_server_error(tmp_path):
    from train_loop.app import RunFolder, read_predictions

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{cut')
    (tmp_path / "best_checkpoint.json").write_text("{not json")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "step-1.jsonl").write_text('{"id": "a", "reference": "x", "prediction": "y"}\n{cut\n')
    run = RunFolder(str(tmp_path))
    assert run.best() is None and len(run.metrics()) == 1
    assert any(problem.startswith("best_checkpoint.json: cannot be read") for problem in run.problems)
    assert [row["id"] for row in read_predictions(str(tmp_path / "eval" / "step-1.jsonl"))] == ["a"]
