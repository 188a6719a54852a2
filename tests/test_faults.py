"""Faults and bad input, injected the way users meet them: each ends handled, or stopped with one
line that names the cause and the fix; never a silent wrong result, never a bare traceback."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from conftest import ROOT, SENTENCES, launch_command, tone, train_args, write_audiofolder

from train_loop import main as train_main
from train_loop.core.errors import UserError

TRAIN = [f"{SENTENCES[i % len(SENTENCES)]} {i}" for i in range(8)]
QUICK = dict(eval_split_name="none", test_split_name="none", max_steps=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_audiofolder(tmp_path_factory.mktemp("faults-data"), {"train": TRAIN, "validation": SENTENCES[:2]},
                             seconds=0.5)


def run_cli(args, script=None, timeout=300, **popen):
    command = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "train_loop.main", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **popen)


def one_line_error(result, expected: str, code: int = 2):
    assert result.returncode == code, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]


def strict_json_lines(path):
    """Every line parses as JSON as other tools parse it: NaN and Infinity are not JSON."""
    def reject(token):
        raise ValueError(f"{token} is not JSON")

    with open(path, encoding="utf-8") as handle:
        return [json.loads(line, parse_constant=reject) for line in handle]


# --------------------------------------------------------------------------------------------
# 1. Non-finite numbers
# --------------------------------------------------------------------------------------------


def test_a_diverging_run_skips_bad_steps_then_stops_with_the_last_good_checkpoint(tiny_model_dir, data, tmp_path):
    out = tmp_path / "run"
    result = run_cli(train_args(tiny_model_dir, data, out, tmp_path / "c", learning_rate=1e4, max_steps=40,
                                save_steps=1, max_nonfinite_steps=3, warmup_steps=0, max_grad_norm=0,
                                lr_scheduler_type="constant", eval_split_name="validation", eval_steps=1,
                                test_split_name="none"))
    one_line_error(result, "the last 3 steps had NaN or infinite gradients (their updates were skipped")
    assert "Lower --learning_rate (it was 1e+04" in result.stderr
    rows = strict_json_lines(out / "metrics.jsonl")  # valid JSON: NaN is written as null
    steps = [r for r in rows if "loss" in r]
    bad = [r["step"] for r in steps if r["grad_norm"] is None]
    assert bad and bad == list(range(bad[0], bad[0] + 3)) and steps[-1]["skipped_steps"] == 3
    last_good = bad[0] - 1
    # Nothing was saved or evaluated from the weights that produced the NaN gradients.
    checkpoints = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert checkpoints and max(checkpoints) == last_good
    assert all(r["step"] <= last_good for r in rows if "eval_wer" in r)
    assert not (out / "model.safetensors").exists()
    assert f"the newest checkpoint, checkpoint-{last_good}, is from before" in result.stderr


@pytest.mark.unit
def test_a_nan_metric_is_never_the_best_and_nan_weights_are_never_the_final_model(tiny_model_dir, tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from train_loop.training.checkpoint import is_improvement, save_final_model

    assert not is_improvement(float("nan"), None)
    assert not is_improvement(float("inf"), 50.0)
    assert is_improvement(40.0, 50.0)
    model = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir)
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    weights["model.decoder.layer_norm.weight"][0] = float("nan")
    out = tmp_path / "final"
    out.mkdir()
    with pytest.raises(UserError, match=r"the final weights contain NaN or infinite values \(1 tensors, e.g. "
                                        r"model.decoder.layer_norm.weight\): not saved"):
        save_final_model(model, WhisperProcessor.from_pretrained(tiny_model_dir), str(out), weights, "float32")
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------
# 2. The output folder belongs to one run
# --------------------------------------------------------------------------------------------


def test_a_fresh_run_into_another_runs_folder_stops_unless_told(tiny_model_dir, data, tmp_path, capsys):
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, data, out, tmp_path / "c", save_steps=2, **QUICK)
    assert train_main.main(args) == 0
    capsys.readouterr()
    assert train_main.main(args) == 2
    err = capsys.readouterr().err
    assert f"--output_dir {out} holds another run (checkpoint-2, metrics.jsonl, model.safetensors" in err
    assert "--resume_from latest" in err and "--overwrite_output_dir" in err

    before = (out / "metrics.jsonl").read_text()
    assert train_main.main(args + ["--max_steps", "1", "--overwrite_output_dir"]) == 0
    assert not (out / "checkpoint-2").exists() and (out / "checkpoint-1").is_dir()
    rows = strict_json_lines(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "loss" in r] == [1] and (out / "metrics.jsonl").read_text() != before


def _wait_for_line(process, prefix):
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return "".join(seen)
    raise AssertionError(f"the run ended before printing {prefix!r}: {''.join(seen[-30:])}")


def test_two_live_runs_cannot_share_a_folder_and_a_killed_runs_lock_is_taken_over(tiny_model_dir, data, tmp_path):
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, data, out, tmp_path / "c", max_steps=100000, save_steps=1,
                      eval_split_name="none", test_split_name="none")
    first = subprocess.Popen([sys.executable, "-m", "train_loop.main", *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_line(first, "step 2/")
        second = run_cli(args + ["--resume_from", "latest"])
        one_line_error(second, f"--output_dir {out} is in use by another run (pid {first.pid} on ")
    finally:
        first.kill()
        first.wait()
    newest = max(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
    third = run_cli(train_args(tiny_model_dir, data, out, tmp_path / "c", max_steps=newest + 2, save_steps=1,
                               eval_split_name="none", test_split_name="none", resume_from="latest"))
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"took over {out}/.run.lock from a run that is no longer running (pid {first.pid} on" in third.stdout
    assert not (out / ".run.lock").exists()  # a clean end leaves no lock behind


# --------------------------------------------------------------------------------------------
# 3. The environment: disk full, unusable output path, damaged checkpoints
# --------------------------------------------------------------------------------------------


def _mount_tmpfs(path: Path, size_bytes: int, read_only: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size_bytes}" + (",ro" if read_only else "")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here to fill ({result.stderr.decode().strip()})")


def _umount(path: Path):
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _parameters(model_dir) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(Path(model_dir) / "model.safetensors").values())


def test_a_full_disk_is_one_clear_line_and_leaves_the_previous_checkpoint(tiny_model_dir, data, tmp_path):
    disk = tmp_path / "disk"
    estimate = 12 * _parameters(tiny_model_dir)  # what the first checkpoint is expected to need
    # Room for the estimate but not for the real checkpoint (its processor files come on top):
    # the free-space check passes and the write itself fails, as when a disk fills up.
    _mount_tmpfs(disk, estimate + 512 * 1024)
    try:
        out = disk / "run"
        result = run_cli(train_args(tiny_model_dir, data, out, tmp_path / "c", save_steps=1, **QUICK))
        one_line_error(result, f"no space left on {out} while writing checkpoint-1")
        assert "the unfinished files were removed" in result.stderr
        assert not list(out.glob("checkpoint-*"))
    finally:
        _umount(disk)

    _mount_tmpfs(disk, int(estimate * 1.6))  # one checkpoint fits, a second does not
    try:
        out = disk / "run"
        result = run_cli(train_args(tiny_model_dir, data, out, tmp_path / "c", save_steps=1, **QUICK))
        one_line_error(result, f"no space left on {out} for checkpoint-2: it needs about")
        assert (out / "checkpoint-1" / "trainer_state.json").is_file()  # intact, resumable
        assert not (out / "checkpoint-2.partial").exists()
    finally:
        _umount(disk)


def test_an_output_folder_that_turns_read_only_mid_run_is_one_line_and_leaves_no_half_checkpoint(
        tiny_model_dir, data, tmp_path, monkeypatch, capsys):
    """The folder turns read-only while a checkpoint is written (a remount, a lost NFS lease): as
    root a test cannot make a folder refuse it, so accelerate's save is made to meet it."""
    import errno

    from accelerate import Accelerator

    save_state = Accelerator.save_state

    def read_only_now(self, output_dir, **kwargs):
        save_state(self, output_dir, **kwargs)  # some files are written, then the folder turns read-only
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(output_dir, "optimizer.bin"))

    monkeypatch.setattr(Accelerator, "save_state", read_only_now)
    out = tmp_path / "run"
    code = train_main.main(train_args(tiny_model_dir, data, out, tmp_path / "c", save_steps=1, **QUICK))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Read-only file system" in errors[0] and "checkpoint-1 was not saved" in errors[0]
    assert not list(out.glob("checkpoint-*"))  # no half-written checkpoint-1.partial left


def test_write_failures_of_torch_and_safetensors_are_recognized_as_a_full_disk():
    import errno

    from safetensors import SafetensorError

    from train_loop.training.rundir import is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed "
                                     "writing file data/3: file write failed"))
    assert is_disk_full(SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                        'message: "No space left on device" })'))
    assert not is_disk_full(RuntimeError("shape mismatch"))


def test_an_output_path_that_is_a_file_or_read_only_is_a_clear_error(tiny_model_dir, data, tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    one_line_error(run_cli(train_args(tiny_model_dir, data, a_file, tmp_path / "c", **QUICK)),
                   f"--output_dir {a_file} is a file; give a folder")
    read_only = tmp_path / "ro"
    _mount_tmpfs(read_only, 1 << 20, read_only=True)
    try:
        one_line_error(run_cli(train_args(tiny_model_dir, data, read_only / "run", tmp_path / "c", **QUICK)),
                       f"--output_dir {read_only / 'run'}: cannot write there (Read-only file system)")
    finally:
        _umount(read_only)


def test_a_damaged_checkpoint_is_named_and_latest_falls_back_to_a_readable_one(tiny_model_dir, data, tmp_path,
                                                                                capsys):
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, data, out, tmp_path / "c", save_steps=2, eval_split_name="none",
                      test_split_name="none", max_steps=4)
    assert train_main.main(args) == 0
    optimizer = out / "checkpoint-4" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])  # a copy cut short
    capsys.readouterr()

    assert train_main.main(args + ["--resume_from", "checkpoint-4", "--max_steps", "6"]) == 2
    err = capsys.readouterr().err
    assert "error: --resume_from checkpoint-4: checkpoint-4/optimizer.bin: " in err
    assert "--resume_from latest picks the newest readable one" in err

    assert train_main.main(args + ["--resume_from", "latest", "--max_steps", "6"]) == 0
    printed = capsys.readouterr().out
    assert "checkpoint-4/optimizer.bin: " in printed and "cannot resume from checkpoint-4, trying the one " \
        "before" in printed
    assert f"resumed from {out / 'checkpoint-2'} at step 2" in printed


# --------------------------------------------------------------------------------------------
# 4. Tables users write by hand
# --------------------------------------------------------------------------------------------


def _table(root, lines, encoding="utf-8"):
    folder = root / "train"
    folder.mkdir(parents=True)
    for i in range(4):
        sf.write(folder / f"{i}.wav", tone(0.5, freq=200 + 30 * i), 16000)
    (folder / "metadata.csv").write_bytes("\n".join(lines).encode(encoding) + b"\n")
    return root


@pytest.mark.unit
def test_a_manifest_in_another_encoding_names_the_file_line_and_fix(tmp_path):
    from train_loop.data.config import SourceConfig
    from train_loop.data.sources import load_rows

    root = _table(tmp_path / "d", ["file_name,sentence", "0.wav,Добры дзень", "1.wav,Дзякуй"], encoding="cp1251")
    with pytest.raises(UserError, match=r"metadata.csv is not UTF-8 text \(line 2, byte 0xc4\)\. Save it as UTF-8, "
                                        r"e.g. `iconv -f CP1251 -t UTF-8"):
        load_rows(SourceConfig(data_dir=str(root)), "train")
    utf16 = _table(tmp_path / "u", ["file_name,sentence", "0.wav,Добры дзень"], encoding="utf-16")
    with pytest.raises(UserError, match=r"metadata.csv is UTF-16 text; save it as UTF-8, e.g. `iconv -f UTF-16"):
        load_rows(SourceConfig(data_dir=str(utf16)), "train")


@pytest.mark.unit
def test_a_start_stopped_before_training_can_be_run_again_and_advice_never_points_at_a_missing_checkpoint(tmp_path):
    from train_loop.training.rundir import claim_output_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "train.log").write_text("whisper train_loop | 1 process(es) on cpu\n")
    (out / "metrics.jsonl").write_text("")
    claim_output_dir(str(out), resuming=False, overwrite=False).release()  # the same command works again
    assert not (out / "train.log").exists()
    (out / "metrics.jsonl").write_text('{"step": 3, "loss": 2.5}\n')  # it trained, saved nothing
    with pytest.raises(UserError) as err:
        claim_output_dir(str(out), resuming=False, overwrite=False)
    assert "no checkpoint to continue from" in str(err.value) and "--resume_from" not in str(err.value)
    (out / "checkpoint-3").mkdir()
    with pytest.raises(UserError, match="Continue it with --resume_from latest"):
        claim_output_dir(str(out), resuming=False, overwrite=False)


def test_bom_malformed_and_duplicate_rows_are_accepted_counted_and_named(tiny_model_dir, tmp_path, capsys):
    root = _table(tmp_path / "d", ["\ufefffile_name,sentence", "0.wav,Адзін", "1.wav,Два,лішняе", "2.wav",
                                   "3.wav,Чатыры", "0.wav,Адзін", '"1.wav","Два"'])
    code = train_main.main(train_args(tiny_model_dir, root, tmp_path / "o", tmp_path / "c",
                                      per_device_train_batch_size=1, **QUICK))
    assert code == 0
    out = capsys.readouterr().out
    assert ("train: 6 clips, 3 used, 3 skipped (2 malformed manifest row, 1 duplicate manifest row); e.g. "
            "metadata.csv line 3: 3 fields, the header has 2; metadata.csv line 4: 1 fields, the header has 2; "
            "metadata.csv line 6: 0.wav repeats line 2") in out


def test_a_second_row_with_another_transcript_is_an_error_naming_both_lines(tmp_path):
    from train_loop.data.config import SourceConfig
    from train_loop.data.sources import load_rows

    root = _table(tmp_path / "d", ["file_name,sentence", "0.wav,Адзін", "1.wav,Два", "0.wav,Тры"])
    with pytest.raises(UserError, match=r"metadata.csv: line 4 lists 0.wav again \(first on line 2\) with another "
                                        r"transcript"):
        load_rows(SourceConfig(data_dir=str(root)), "train")


# --------------------------------------------------------------------------------------------
# 5. Audio whose length disagrees with itself
# --------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_compressed_audio_cut_short_is_skipped_with_what_the_decoder_said(tmp_path):
    from train_loop.data.audio import AudioDecodeError, decode_audio

    whole = tmp_path / "whole.mp3"
    sf.write(whole, tone(3.0, 48000), 48000, format="MP3")
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert len(decode_audio(str(whole))) == pytest.approx(3 * 16000, abs=200)
    with pytest.raises(AudioDecodeError, match=r"cut.mp3: decodes to \d+ samples but its header declares 144000 "
                                               r"\(cut short or damaged\); the decoder said: .*Xing stream size"):
        decode_audio(str(cut))


# --------------------------------------------------------------------------------------------
# 6. Signals, through every launcher
# --------------------------------------------------------------------------------------------

SIGNAL_RUN = dict(max_steps=100000, save_steps=0, eval_split_name="none", test_split_name="none",
                  lr_scheduler_type="constant", warmup_steps=0, logging_steps=1)


def _descendants(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as handle:
            children = [int(child) for child in handle.read().split()]
    except OSError:
        return []
    return children + [grandchild for child in children for grandchild in _descendants(child)]


def _wait_gone(pids, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}") and
                 "zombie" not in open(f"/proc/{pid}/status").read()]
        if not alive:
            return
        time.sleep(0.2)
    raise AssertionError(f"processes still running: {alive}")


def _stopped_checkpoint(out, processes=1):
    checkpoints = [p for p in out.glob("checkpoint-*") if not p.name.endswith(".partial")]
    assert len(checkpoints) == 1, list(out.iterdir())
    step = int(checkpoints[0].name.split("-")[1])
    assert (checkpoints[0] / "trainer_state.json").is_file()
    for rank in range(processes):
        assert (checkpoints[0] / f"data_state_{rank}.pt").is_file()
    return step


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])  # SIGHUP: a closed terminal
def test_a_signal_to_the_trainer_finishes_the_step_saves_and_exits_75(tiny_model_dir, data, tmp_path, sig):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "train_loop.main",
                                *train_args(tiny_model_dir, data, out, tmp_path / "c", **SIGNAL_RUN)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    before = _wait_for_line(process, "step 3/")
    process.send_signal(sig)
    output = before + process.communicate(timeout=120)[0]
    assert process.returncode == 75, output[-2000:]
    step = _stopped_checkpoint(out)
    assert f"{sig.name} received: finishing this step, then writing a checkpoint" in output
    assert f"stopped at step {step} ({sig.name}); checkpoint-{step} is saved. Continue with the same command " \
        "plus --resume_from latest" in output
    assert "Traceback" not in output
    assert not (out / "model.safetensors").exists()  # no final model: the run is not finished


@pytest.mark.unit
def test_a_second_ctrl_c_stops_at_once_and_a_forwarded_copy_of_the_first_does_not(monkeypatch):
    """The handler's rule, on a clock the test sets: the same Ctrl-C arriving twice (from the
    terminal and forwarded by torchrun's agent) is one; a later one means "stop now"."""
    from train_loop.training import preemption

    now = [100.0]
    monkeypatch.setattr(preemption.time, "monotonic", lambda: now[0])
    stop = preemption.StopOnSignal(_OneProcess())
    try:
        with pytest.raises(preemption.StoppedBeforeTraining):  # before training: stop at once
            stop._handle(signal.SIGINT, None)
        stop.signal_name = None
        stop.training = True
        stop._handle(signal.SIGINT, None)  # the first: finish the step, then save
        assert stop.requested() and stop.signal_name == "SIGINT"
        now[0] += preemption.DUPLICATE_WINDOW_S / 2
        stop._handle(signal.SIGINT, None)  # the forwarded copy: ignored
        stop._handle(signal.SIGTERM, None)  # a SIGTERM after a SIGINT: already stopping
        now[0] += preemption.DUPLICATE_WINDOW_S
        with pytest.raises(KeyboardInterrupt):  # the user pressed Ctrl-C again
            stop._handle(signal.SIGINT, None)
    finally:
        stop.restore()


class _OneProcess:
    num_processes = 1


@pytest.mark.unit
def test_a_second_ctrl_c_ends_the_command_with_130_and_one_line(monkeypatch, capsys, tmp_path):
    """Wherever the second Ctrl-C lands (here: while the run is being set up), the command ends
    with exit status 130 and one line saying how to continue, never a traceback."""
    from train_loop.training import setup

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(setup, "session", interrupted)
    code = train_main.main(["--model_name_or_path", "m", "--data_dir", str(tmp_path / "data"), "--output_dir",
                            str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 130
    assert "stopped at once (second Ctrl-C), without a new checkpoint" in err and "Traceback" not in err


def test_ctrl_c_delivered_twice_at_once_is_one_ctrl_c(tiny_model_dir, data, tmp_path):
    """In a terminal, Ctrl-C reaches a worker directly and again forwarded by torchrun's agent."""
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "train_loop.main",
                                *train_args(tiny_model_dir, data, out, tmp_path / "c", **SIGNAL_RUN)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    before = _wait_for_line(process, "step 2/")
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    output = before + process.communicate(timeout=120)[0]
    assert process.returncode == 75, output[-2000:]
    _stopped_checkpoint(out)


@pytest.mark.parametrize("launcher, processes", [
    ("accelerate", 1), ("accelerate", 2),  # accelerate runs torchrun's agent in its own process
    pytest.param("torchrun", 2, marks=pytest.mark.slow)])
def test_sigterm_to_a_launcher_stops_every_process_with_a_checkpoint(tiny_model_dir, data, tmp_path, launcher,
                                                                      processes):
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, data, out, tmp_path / "c", **SIGNAL_RUN)
    if launcher == "accelerate" and processes > 1:
        command, env = launch_command("launch/accelerate/multi_gpu.yaml", args, processes=processes)
    elif launcher == "accelerate":  # one process: accelerate's simple launcher, which forwards no signal
        command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines",
                   "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "train_loop" / "main.py"),
                   *args]
        env = dict(os.environ)
    else:
        from conftest import free_port

        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                   "--master_port", str(free_port()), str(ROOT / "train_loop" / "main.py"), *args]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = "120"  # the launchers' grace before SIGKILL
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    before = _wait_for_line(process, "step 3/")
    trainers = _descendants(process.pid)
    assert len(trainers) >= processes
    process.send_signal(signal.SIGTERM)  # to the launcher alone, as Kubernetes or `kill PID` does
    output = before + process.communicate(timeout=300)[0]
    _wait_gone(trainers)  # no orphan keeps running
    step = _stopped_checkpoint(out, processes)
    assert f"stopped at step {step} (SIGTERM); checkpoint-{step} is saved" in output or processes == 1
    if processes == 1:  # the launcher died at once; its trainer, orphaned, finished the step and saved
        assert (out / "train.log").read_text().count(f"stopped at step {step} (SIGTERM)") == 1
    resumed = run_cli(train_args(tiny_model_dir, data, out, tmp_path / "c",
                                 **{**SIGNAL_RUN, "max_steps": step + 1, "resume_from": "latest"}))
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_sigterm_to_one_trainer_of_two_stops_both_after_the_same_step(tiny_model_dir, data, tmp_path):
    """The stop vote: a signal that reaches one rank only (rank 1 here) stops every rank after the
    same step, with one checkpoint holding every rank's data position."""
    out = tmp_path / "run"
    command, env = launch_command("launch/accelerate/multi_gpu.yaml",
                                  train_args(tiny_model_dir, data, out, tmp_path / "c", **SIGNAL_RUN), processes=2)
    env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] = "120"
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    before = _wait_for_line(process, "step 3/")
    trainers = _descendants(process.pid)
    rank_1 = [pid for pid in trainers if b"LOCAL_RANK=1" in open(f"/proc/{pid}/environ", "rb").read().split(b"\0")]
    assert rank_1, trainers
    os.kill(rank_1[0], signal.SIGTERM)
    output = before + process.communicate(timeout=300)[0]
    _wait_gone(trainers)
    step = _stopped_checkpoint(out, processes=2)
    assert f"stopped at step {step} (SIGTERM); checkpoint-{step} is saved" in output, output[-3000:]
    # The launcher got no signal itself, so it reports its workers' exit as a failure (with its
    # own traceback, see docs/faults.md); the status it reports is the resumable one.
    assert "exitcode  : 75" in output


# --------------------------------------------------------------------------------------------
# 7. Nonsense values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    ({"max_steps": -1, "num_train_epochs": 0}, "--num_train_epochs must be positive"),
    ({"max_steps": -1, "num_train_epochs": -2}, "--num_train_epochs must be positive"),
    ({"max_steps": 0}, "--max_steps must be positive, or -1"),
    ({"max_train_samples": 0}, "--max_train_samples must be at least 1"),
    ({"max_eval_samples": -5}, "--max_eval_samples must be at least 1"),
    ({"adam_beta2": 1.0}, "--adam_beta2 must be in [0, 1)"),
    ({"weight_decay": -0.1}, "--weight_decay must be at least 0"),
    ({"mask_time_prob": 1.5}, "--mask_time_prob must be between 0 and 1"),
    ({"max_nonfinite_steps": 0}, "--max_nonfinite_steps must be at least 1"),
    ({"resume_from": "latest", "overwrite_output_dir": "true"}, "--overwrite_output_dir deletes the run"),
])
def test_nonsense_values_are_one_line_errors(tiny_model_dir, data, tmp_path, flags, message):
    from train_loop.training.config import parse_train_config

    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_train_config(train_args(tiny_model_dir, data, tmp_path / "o", tmp_path / "c", **flags))


@pytest.mark.unit
def test_a_stream_that_yields_no_batch_is_a_clear_error(tiny_model_dir, tmp_path, capsys):
    root = write_audiofolder(tmp_path / "d", {"train": SENTENCES[:3]}, seconds=0.5)
    code = train_main.main(train_args(tiny_model_dir, root, tmp_path / "o", tmp_path / "c", streaming="true",
                                      min_duration_in_seconds=1.0, **QUICK))
    assert code == 2
    err = capsys.readouterr().err
    assert "error: the training data produced no batch in a whole epoch (train: 3 clips, 0 used, 3 skipped " \
           "(3 shorter than --min_duration_in_seconds)" in err


def test_overwriting_a_folder_with_tensorboard_and_workers_trains_and_exits(tiny_model_dir, data, tmp_path):
    """--overwrite_output_dir empties the folder before the trackers open their files (the
    TensorBoard writer used to lose its folder), and a run whose DataLoader workers ignore
    SIGTERM still exits at once (multiprocessing's exit handler would wait for them)."""
    out = tmp_path / "run"
    args = train_args(tiny_model_dir, data, out, tmp_path / "c", max_steps=2, report_to="tensorboard",
                      dataloader_num_workers=1)
    assert run_cli(args).returncode == 0
    started = time.monotonic()
    again = run_cli(args + ["--overwrite_output_dir"])
    assert again.returncode == 0, again.stderr[-2000:]
    assert time.monotonic() - started < 90
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert "Traceback" not in again.stderr


# --------------------------------------------------------------------------------------------
# A checkpoint is data, never code
# --------------------------------------------------------------------------------------------


class _Payload:
    """What a malicious checkpoint file would hold: loading it with pickle creates a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def saved_run(tiny_model_dir, data, tmp_path_factory):
    """A finished 2-step run with checkpoint-2 (and a weight average), copied by each test."""
    out = tmp_path_factory.mktemp("payload-run") / "run"
    args = train_args(tiny_model_dir, data, out, out.parent / "c", max_steps=2, save_steps=1, eval_steps=0,
                      eval_split_name="none", test_split_name="none", ema_decay=0.9)
    assert train_main.main(args) == 0
    return out, args


@pytest.mark.parametrize("planted", ["data_state_0.pt", "random_states_0.pkl", "optimizer.bin"])
def test_a_checkpoint_file_that_would_run_code_is_refused_and_never_run(saved_run, tmp_path, planted):
    import shutil

    import torch

    source, args = saved_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    marker = tmp_path / "code-ran"
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / planted).is_file()  # the file a resume reads
    torch.save({"state": _Payload(marker)}, checkpoint / planted)
    args = [str(out) if arg == str(source) else arg for arg in args]
    result = run_cli([*args[:args.index("--max_steps")], "--max_steps", "3",
                      *args[args.index("--max_steps") + 2:], "--resume_from", "latest"])
    one_line_error(result, "refused to load a file that holds more than plain data and tensors")
    assert not marker.exists()


@pytest.mark.parametrize("change, named", [
    ({"ema_decay": None}, "--ema_decay none (the checkpoint: 0.9)"),
    ({"use_lora": "true"}, "--use_lora true (the checkpoint: false)"),
    ({"freeze_encoder": "true"}, "--freeze_encoder true (the checkpoint: false)"),
    ({"optim": "adafactor"}, "--optim adafactor (the checkpoint: adamw_fused)"),
])
def test_a_resume_with_flags_the_checkpoint_does_not_fit_is_one_line(saved_run, tmp_path, capsys, change, named):
    import shutil

    source, args = saved_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    args = [str(out) if arg == str(source) else arg for arg in args]
    flags = dict(zip(args[::2], args[1::2]))
    flags.update({"--max_steps": "3", "--resume_from": "latest"})
    for name, value in change.items():
        if value is None:
            flags.pop(f"--{name}")
        else:
            flags[f"--{name}"] = value
    assert train_main.main([item for pair in flags.items() for item in pair]) == 2
    err = capsys.readouterr().err
    assert named in err and "resume with those, or start a new run" in err and "Traceback" not in err


def test_a_kill_during_the_final_save_is_finished_by_resuming(saved_run, tmp_path):
    """Trained to the last step, killed while the final model was written: --resume_from latest
    with the same flags trains nothing and writes the final model (it refused before)."""
    import shutil

    import torch
    from safetensors.torch import load_file

    source, args = saved_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    (out / "model.safetensors").unlink()  # the save never finished
    args = [str(out) if arg == str(source) else arg for arg in args]
    assert train_main.main([*args, "--resume_from", "latest"]) == 0
    final, last = load_file(out / "model.safetensors"), load_file(out / "checkpoint-2" / "model.safetensors")
    assert all(torch.equal(final[name], last[name]) for name in last if name in final)


@pytest.mark.parametrize("case", ["read-only", "full"])
def test_a_read_only_or_full_cache_dir_during_preparation_is_one_line(tiny_model_dir, data, tmp_path, case):
    cache = tmp_path / "cache"
    _mount_tmpfs(cache, 64 * 1024 if case == "full" else 1024 * 1024, read_only=case == "read-only")
    try:
        result = run_cli(train_args(tiny_model_dir, data, tmp_path / "run", cache, **QUICK))
        one_line_error(result, "Read-only file system" if case == "read-only" else "No space left on device")
    finally:
        _umount(cache)
