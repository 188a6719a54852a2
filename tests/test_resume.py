"""A resumed run equals an uninterrupted one; kills, signals and rotation leave a usable run."""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SENTENCES, train_args, write_audiofolder
from safetensors.torch import load_file

from train_loop import main as train_main
from train_loop.training.checkpoint import rotate_checkpoints

# 14 clips in batches of 2: 7 micro-batches an epoch. With 2 accumulation steps an optimizer
# step can span two epochs (step 4 = the last batch of epoch 0 + the first of epoch 1).
RUN = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=8,
           warmup_steps=2, learning_rate=5e-3, lr_scheduler_type="cosine", eval_steps=2,
           save_steps=1, max_eval_samples=2, test_split_name="none", log_sample_ids="true")


@pytest.fixture(scope="module")
def resume_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-data")
    train = [f"{SENTENCES[i % len(SENTENCES)]} {i}" for i in range(14)]
    return write_audiofolder(root, {"train": train, "validation": SENTENCES[:2]}, seconds=0.5)


def records(output_dir, name="metrics.jsonl"):
    with open(os.path.join(output_dir, name), encoding="utf-8") as handle:
        return [{k: v for k, v in json.loads(line).items() if k not in ("time", "elapsed_seconds",
                 "eta_seconds", "samples_per_second", "audio_seconds_per_second", "eval_seconds",
                 "eval_samples_per_second")}
                for line in handle]


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


@pytest.fixture(scope="module")
def dropout_model_dir(tmp_path_factory):
    """The tiny model with dropout, so that a resume must also continue the random stream."""
    from train_loop.synthetic.models import build_tiny_whisper

    path = tmp_path_factory.mktemp("tiny-dropout")
    return build_tiny_whisper(str(path), chunk_length=2, d_model=32, layers=1, heads=2, dropout=0.1)


@pytest.fixture(scope="module")
def uninterrupted(dropout_model_dir, resume_data, tmp_path_factory):
    runs = {}
    for mode in ("prepared", "streaming"):
        out = tmp_path_factory.mktemp(f"full-{mode}")
        assert train_main.main(_args(dropout_model_dir, resume_data, out, mode)) == 0
        runs[mode] = out
    return runs


def copy_checkpoints(run_dir, into, *names):
    """A new output folder holding only ``names`` of ``run_dir``'s checkpoints."""
    into.mkdir()
    for name in names:
        shutil.copytree(run_dir / name, into / name)
    return into


def _args(model, data, out, mode, **extra):
    streaming = {"streaming": "true", "dataloader_num_workers": 2, "shuffle_buffer_size": 4} \
        if mode == "streaming" else {}
    return train_args(model, data, out, os.path.join(out, "..", "cache"), **{**RUN, **streaming, **extra})


@pytest.mark.parametrize("mode", ["prepared", "streaming"])
@pytest.mark.parametrize("stop", [3, 4])  # 3: one batch before the epoch ends; 4: across it
def test_resumed_run_equals_uninterrupted(dropout_model_dir, resume_data, uninterrupted, tmp_path, mode, stop):
    full = uninterrupted[mode]
    resumed = copy_checkpoints(full, tmp_path / "resumed", "checkpoint-2", f"checkpoint-{stop}")
    assert train_main.main(_args(dropout_model_dir, resume_data, resumed, mode, save_total_limit=2,
                                 resume_from=f"checkpoint-{stop}")) == 0

    expected = [r for r in records(full) if r["step"] > stop]
    got = records(resumed)
    assert [r["step"] for r in got if "loss" in r] == list(range(stop + 1, 9))
    assert got == expected  # loss, learning rate, grad norm, epoch, eval WER: exactly equal
    assert records(resumed, "samples.jsonl") == [r for r in records(full, "samples.jsonl") if r["step"] > stop]
    final_full, final_resumed = weights(full), weights(resumed)
    for name, tensor in final_full.items():
        assert torch.equal(tensor, final_resumed[name]), name

    # The best survives the resume and rotation: the same as in the uninterrupted run.
    state = json.loads((resumed / "checkpoint-8" / "trainer_state.json").read_text())
    expected_state = json.loads((full / "checkpoint-8" / "trainer_state.json").read_text())
    assert (state["best_step"], state["best_metric"]) == (expected_state["best_step"], expected_state["best_metric"])
    best = expected_state["best_checkpoint"]
    pointer = json.loads((resumed / "best_checkpoint.json").read_text())
    assert pointer["checkpoint"] == best and pointer["step"] == expected_state["best_step"]
    # save_total_limit 2 kept the two newest and the best, wherever the best is.
    assert sorted(p.name for p in resumed.iterdir() if p.name.startswith("checkpoint-")) == \
        sorted({best, "checkpoint-7", "checkpoint-8"})


def test_length_grouped_run_resumes_exactly_and_a_switch_is_named(
        dropout_model_dir, resume_data, uninterrupted, tmp_path, capsys):
    full = tmp_path / "grouped"
    assert train_main.main(_args(dropout_model_dir, resume_data, full, "prepared", group_by_length="true")) == 0
    # the grouped order is not the plain one, but every clip of an epoch is still seen once
    grouped_ids = [r["ids"] for r in records(full, "samples.jsonl")]
    plain_ids = [r["ids"] for r in records(uninterrupted["prepared"], "samples.jsonl")]
    assert grouped_ids != plain_ids
    def epoch_0(ids):  # 7 micro-batches of 2: three steps and the first half of the fourth
        return sorted(sum(ids[:3], []) + ids[3][:2])
    assert epoch_0(grouped_ids) == epoch_0(plain_ids) == sorted(set(epoch_0(plain_ids)))
    resumed = copy_checkpoints(full, tmp_path / "resumed", "checkpoint-4")
    assert train_main.main(_args(dropout_model_dir, resume_data, resumed, "prepared", group_by_length="true",
                                 resume_from="latest")) == 0
    assert records(resumed) == [r for r in records(full) if r["step"] > 4]
    assert records(resumed, "samples.jsonl") == [r for r in records(full, "samples.jsonl") if r["step"] > 4]
    capsys.readouterr()

    switched = copy_checkpoints(uninterrupted["prepared"], tmp_path / "switched", "checkpoint-4")
    assert train_main.main(_args(dropout_model_dir, resume_data, switched, "prepared", group_by_length="true",
                                 resume_from="latest", max_steps=5)) == 0
    out = capsys.readouterr().out
    assert "the layout changed: --group_by_length False -> True" in out
    assert "--group_by_length changed: the rest of epoch 1 follows the new order" in out


def test_rotation_with_limit_1_keeps_the_best_and_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    deleted = rotate_checkpoints(str(tmp_path), 1, {"checkpoint-2"})
    assert sorted(os.path.basename(p) for p in deleted) == ["checkpoint-1", "checkpoint-3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_extending_max_steps_continues_the_learning_rate_without_a_jump(
        dropout_model_dir, resume_data, uninterrupted, tmp_path, capsys):
    full = uninterrupted["prepared"]
    longer = copy_checkpoints(full, tmp_path / "longer", "checkpoint-8")
    assert train_main.main(_args(dropout_model_dir, resume_data, longer, "prepared", max_steps=12,
                                 resume_from="latest")) == 0
    out = capsys.readouterr().out
    assert "--max_steps changed from 8 to 12: the rate continues from" in out
    last_lr = [r for r in records(full) if "loss" in r][-1]["learning_rate"]
    rates = [r["learning_rate"] for r in records(longer) if "loss" in r]
    assert len(rates) == 4 and rates[0] < last_lr and rates == sorted(rates, reverse=True)


def test_changed_layout_is_named_and_a_changed_stream_layout_is_an_error(
        dropout_model_dir, resume_data, uninterrupted, tmp_path, capsys):
    full = uninterrupted["prepared"]
    other = copy_checkpoints(full, tmp_path / "other", "checkpoint-4")
    assert train_main.main(_args(dropout_model_dir, resume_data, other, "prepared", resume_from="latest",
                                 per_device_train_batch_size=4, gradient_accumulation_steps=1)) == 0
    out = capsys.readouterr().out
    assert ("not an exact continuation, the layout changed: --per_device_train_batch_size 2 -> 4; "
            "--gradient_accumulation_steps 2 -> 1") in out
    assert "data position converted: 2 clips of epoch 1 were used, which is 0 batches of 4" in out

    stream = copy_checkpoints(uninterrupted["streaming"], tmp_path / "stream", "checkpoint-4")
    code = train_main.main(_args(dropout_model_dir, resume_data, stream, "streaming", resume_from="latest",
                                 dataloader_num_workers=1))
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot continue the checkpoint's data position" in err and "--reset_data_position" in err
    assert train_main.main(_args(dropout_model_dir, resume_data, stream, "streaming", resume_from="latest",
                                 dataloader_num_workers=1, reset_data_position="true")) == 0


# --------------------------------------------------------------------------------------------
# Kills and signals (real processes)
# --------------------------------------------------------------------------------------------

KILL_DURING_SAVE = """
import os, signal, sys
import train_loop.training.checkpoint as checkpoint
write = checkpoint._write_text
def dying_write(path, text):
    if path.endswith("trainer_state.json") and "checkpoint-4.partial" in path:
        os.kill(os.getpid(), signal.SIGKILL)  # power loss while checkpoint-4 is being written
    write(path, text)
checkpoint._write_text = dying_write
from train_loop.main import main
sys.exit(main(sys.argv[1:]))
"""


def _spawn(args, script=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "train_loop.main", *args]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _wait_for_step(process, step):
    """Read the run's console (flushed line by line, even into a pipe) until ``step`` is logged."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= step:
            return "".join(seen)
    raise AssertionError(f"training exited before step {step}: {''.join(seen[-20:])}")


def _steps_logged(out):
    return [r["step"] for r in records(out) if "loss" in r]


KILL_RUN = dict(max_steps=400, save_steps=2, eval_split_name="none", test_split_name="none",
                lr_scheduler_type="constant", warmup_steps=0)


def test_sigkill_during_training_resumes_from_the_newest_checkpoint(tiny_model_dir, resume_data, tmp_path):
    out = tmp_path / "run"
    process = _spawn(train_args(tiny_model_dir, resume_data, out, tmp_path / "c", **KILL_RUN))
    _wait_for_step(process, 5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = subprocess.run(
        [sys.executable, "-m", "train_loop.main",
         *train_args(tiny_model_dir, resume_data, out, tmp_path / "c",
                     **{**KILL_RUN, "max_steps": 30, "resume_from": "latest"})],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert _steps_logged(out) == list(range(1, 31))  # nothing twice, nothing missing


def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one(tiny_model_dir, resume_data, tmp_path):
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, resume_data, out, tmp_path / "c", **{**KILL_RUN, "max_steps": 6})
    killed = _spawn(args, script=KILL_DURING_SAVE)
    killed.wait(timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert (out / "checkpoint-4.partial").is_dir() and not (out / "checkpoint-4").exists()
    resumed = subprocess.run([sys.executable, "-m", "train_loop.main", *args, "--resume_from", "latest"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "removing checkpoint-4.partial: a save that was interrupted" in resumed.stdout
    assert "resumed from" in resumed.stdout and "at step 2 " in resumed.stdout
    assert not (out / "checkpoint-4.partial").exists() and (out / "checkpoint-6").is_dir()
    assert _steps_logged(out) == list(range(1, 7))
