"""End-to-end runs of the training entry point on a tiny model (a few seconds each)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, train_args
from safetensors.torch import load_file

from train_loop import main as train_main
from train_loop.training.schedule import LRSchedule


def metrics(output_dir, key="loss"):
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return [row for row in rows if key in row]


def test_loss_decreases_on_a_fixed_batch(tiny_model_dir, dataset_dir, tmp_path):
    out = tmp_path / "run"
    code = train_main.main(train_args(
        tiny_model_dir, dataset_dir, out, tmp_path / "cache", max_train_samples=4,
        per_device_train_batch_size=4, max_steps=30, learning_rate=2e-2, warmup_steps=2,
        eval_split_name="none", test_split_name="none"))
    assert code == 0
    losses = [row["loss"] for row in metrics(out)]
    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0]
    rows = metrics(out)
    assert {"step", "loss", "learning_rate", "grad_norm", "samples_per_second", "epoch"} <= set(rows[0])
    assert rows[1]["learning_rate"] == 2e-2  # warmup ends at step 2 exactly on the peak
    schedule = LRSchedule("linear", 2e-2, warmup_steps=2, total_steps=30)
    assert [row["learning_rate"] for row in rows] == pytest.approx([schedule(s) for s in range(1, 31)], rel=1e-6)


def _final_weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


def test_batch_4_equals_batch_2_with_2_accumulation_steps(tiny_model_dir, dataset_dir, tmp_path):
    """Transcripts differ in length, so averaging per micro-batch would give another gradient."""
    common = dict(max_steps=3, eval_split_name="none", test_split_name="none", learning_rate=1e-2,
                  warmup_steps=0, lr_scheduler_type="constant")
    big, small = tmp_path / "big", tmp_path / "small"
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, big, tmp_path / "c",
                                      per_device_train_batch_size=4, **common)) == 0
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, small, tmp_path / "c",
                                      per_device_train_batch_size=2, gradient_accumulation_steps=2,
                                      **common)) == 0
    for a, b in zip(metrics(big), metrics(small)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    wa, wb = _final_weights(big), _final_weights(small)
    start = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    moved = max((wa[k] - start[k]).abs().max().item() for k in wa)
    assert moved > 1e-3  # the runs did learn something
    # float32 sums in another order: on an AMD EPYC 2.4e-6 apart after 3 steps at lr 1e-2,
    # against 1e-3 of movement (a wrong normalization differs by orders of magnitude more)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-5)


def test_log_lines_reach_a_pipe_before_the_run_ends(tiny_model_dir, dataset_dir, tmp_path):
    args = train_args(tiny_model_dir, dataset_dir, tmp_path / "run", tmp_path / "c", max_steps=100000,
                      eval_split_name="none", test_split_name="none")
    process = subprocess.Popen([sys.executable, "-m", "train_loop.main", *args], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in process.stdout:
            if line.startswith("step 1/100000 | "):
                break
        else:
            pytest.fail("the process ended without printing a step line")
        assert process.poll() is None, "the line arrived only when the process ended"
        assert "| loss " in line and "| lr " in line and "samples/s" in line and "eta" in line
    finally:
        process.kill()
        process.wait()


def test_final_model_and_checkpoint_load_in_a_pipeline(tiny_model_dir, dataset_dir, tmp_path):
    from conftest import tone
    from transformers import pipeline

    out = tmp_path / "run"
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, out, tmp_path / "c", max_steps=2,
                                      save_steps=1, eval_steps=2, gradient_checkpointing="true",
                                      report_to="tensorboard")) == 0
    for path in (out, out / "checkpoint-1"):
        asr = pipeline("automatic-speech-recognition", model=str(path), device="cpu")
        assert isinstance(asr(tone(1.0))["text"], str)
    config = json.loads((out / "config.json").read_text())
    assert config["use_cache"] is True  # switched off for checkpointed training, back on for users
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["language"] == "be" and generation["task"] == "transcribe"
    assert (out / "eval" / "step-2.jsonl").exists() and (out / "eval" / "test-step-2.jsonl").exists()
    results = json.loads((out / "results.json").read_text())
    assert [e["split"] for e in results["evaluations"]] == ["validation", "test"]
    assert (out / "train.log").read_text().count("WER table") == 1
    assert any(name.startswith("events.out.tfevents") for _, _, files in os.walk(out / "tensorboard")
               for name in files)


@pytest.mark.parametrize("extra, expected", [
    (["--data_dir", "/nonexistent/data"], "error: --data_dir /nonexistent/data: no such folder"),
    (["--text_column_name", "transcript"], "has no column 'transcript'"),
    (["--lerning_rate", "1"], "error: unknown flag --lerning_rate (did you mean --learning_rate?)"),
])
def test_user_errors_are_one_line_without_traceback(tiny_model_dir, dataset_dir, tmp_path, extra, expected):
    args = train_args(tiny_model_dir, dataset_dir, tmp_path / "run", tmp_path / "c") + extra
    result = subprocess.run([sys.executable, "-m", "train_loop.main", *args], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1


def test_streaming_run_decodes_in_workers_and_reports_skipped_rows(tiny_model_dir, tmp_path, capsys):
    from conftest import SENTENCES, write_audiofolder, write_bad_rows

    root = write_bad_rows(tmp_path / "data")
    write_audiofolder(root, {"validation": SENTENCES[:3]})
    out = tmp_path / "run"
    code = train_main.main(train_args(
        tiny_model_dir, root, out, tmp_path / "c", streaming="true", max_steps=6,
        dataloader_num_workers=1, shuffle_buffer_size=4, eval_steps=6, test_split_name="none",
        min_duration_in_seconds=0.5, max_label_length=40))
    assert code == 0
    log = capsys.readouterr().out
    assert "streamed so far: train:" in log and "unreadable audio" in log
    rows = metrics(out)
    assert len(rows) == 6 and all(r["samples_per_second"] > 0 for r in rows)
    evals = metrics(out, "eval_wer")
    assert evals[0]["eval_samples"] == 3


def test_adafactor_option_trains(tiny_model_dir, dataset_dir, tmp_path):
    out = tmp_path / "run"
    assert train_main.main(train_args(tiny_model_dir, dataset_dir, out, tmp_path / "c", optim="adafactor",
                                      max_steps=3, eval_split_name="none", test_split_name="none")) == 0
    losses = [row["loss"] for row in metrics(out)]
    assert len(losses) == 3 and all(loss == loss for loss in losses)  # finite, not NaN
    start = load_file(os.path.join(tiny_model_dir, "model.safetensors"))
    final = _final_weights(out)
    assert any(not torch.equal(start[k], final[k]) for k in final)


def test_a_new_best_is_saved_between_save_steps_and_a_later_better_one_replaces_it(
        tiny_model_dir, dataset_dir, tmp_path, monkeypatch, capsys):
    """Evaluations every step with scripted WERs 50, 40, 45, 30, 35; checkpoints only at the end
    (--save_steps 0), keeping one: each new best is saved when it is found, replaces the
    previous best, and --load_best_model_at_end makes it the final model."""
    from train_loop.training import loop

    scripted = iter([50.0, 40.0, 45.0, 30.0, 35.0])
    real_evaluate = loop.evaluate

    def evaluate_with_scripted_wer(*args, **kwargs):
        return {**real_evaluate(*args, **kwargs), "wer": next(scripted)}

    monkeypatch.setattr(loop, "evaluate", evaluate_with_scripted_wer)
    out = tmp_path / "run"
    assert train_main.main(train_args(
        tiny_model_dir, dataset_dir, out, tmp_path / "cache", max_steps=5, eval_steps=1, save_steps=0,
        save_total_limit=1, max_eval_samples=2, learning_rate=1e-2, test_split_name="none",
        load_best_model_at_end="true")) == 0
    log = capsys.readouterr().out
    for step, wer in [(1, 50), (2, 40), (4, 30)]:
        assert f"new best eval_wer {wer:.3f} at step {step}" in log
        assert f"saved checkpoint-{step}" in log
    assert "saved checkpoint-3" not in log and "new best eval_wer 35" not in log
    # Each new best removed the one before; the end keeps the newest and the best.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    pointer = json.loads((out / "best_checkpoint.json").read_text())
    assert (pointer["checkpoint"], pointer["step"], pointer["value"]) == ("checkpoint-4", 4, 30.0)
    final, best, last = _final_weights(out), _final_weights(out / "checkpoint-4"), _final_weights(out / "checkpoint-5")
    assert all(torch.equal(final[name], best[name]) for name in final)
    assert any(not torch.equal(final[name], last[name]) for name in final)
