"""Try faults the way a user meets them and classify what the run does (for the closing notes).

    .venv/bin/python scripts/fault_sweep.py [--only NAME_SUBSTRING]

Each scenario builds its own bad input or situation in a temp folder, runs the real entry point
as a user would (a subprocess, HF_HUB_OFFLINE=1), and is classified:
* handled   - exit 0 (the fault was absorbed and reported) or 2/75 with one ``error:`` line
              (or the stop message), and no traceback;
* traceback - a Python traceback reached the user;
* wrong     - the run claims success but the result is wrong (the scenario's own check fails).
The last line is a JSON summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = ["Мая сям'я дома.", "Наш сабака шукае хлеб.", "Стары воўк у лесе!", "Бабуля чакае раніцай.",
             "Новую кнігу купляе.", "Раз’яднаць ўсё?", "Цёплы хлеб на двары.", "Мой сябар малюе."]


def tone(seconds, rate=16000, freq=220.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def audiofolder(root: Path, rows=None, seconds=0.5, split="train", encoding="utf-8", raw_lines=None):
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    rows = rows if rows is not None else [(f"{i}.wav", text) for i, text in enumerate(SENTENCES)]
    for name, _ in rows:
        if not (folder / name).exists() and name.endswith(".wav"):
            sf.write(folder / name, tone(seconds, freq=150 + 13 * len(name)), 16000)
    if raw_lines is not None:
        (folder / "metadata.csv").write_bytes("\n".join(raw_lines).encode(encoding) + b"\n")
    else:
        with open(folder / "metadata.csv", "w", encoding=encoding, newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", "sentence"])
            writer.writerows(rows)
    return root


class Sweep:
    def __init__(self, work: Path):
        self.work = work
        self.model = str(work / "tiny")
        self.cache = str(work / "cache")
        self.results: list[dict] = []
        sys.path.insert(0, str(ROOT))
        from train_loop.synthetic.models import build_tiny_whisper

        build_tiny_whisper(self.model, chunk_length=2, d_model=32, layers=1, heads=2)
        self.data = audiofolder(work / "data")
        audiofolder(self.data, [(f"{i}.wav", t) for i, t in enumerate(SENTENCES[:3])], split="validation")

    def args(self, out, **flags):
        base = {"model_name_or_path": self.model, "data_dir": str(self.data), "output_dir": str(out),
                "cache_dir": self.cache, "max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3,
                "logging_steps": 1, "eval_steps": 0, "save_steps": 0, "generation_max_length": 4,
                "dataloader_num_workers": 0, "max_duration_in_seconds": 2, "report_to": "none",
                "test_split_name": "none"}
        base.update(flags)
        return [item for key, value in base.items() if value is not None for item in (f"--{key}", str(value))]

    def run(self, args, module="train_loop.main", timeout=300):
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=timeout)

    def record(self, name, result, check=None):
        text = result.stdout + result.stderr
        if "Traceback (most recent call last)" in text:
            verdict = "traceback"
        elif check is not None and not check(result):
            verdict = "wrong"
        elif result.returncode in (0, 75) or (result.returncode == 2 and text.count("error:") >= 1):
            verdict = "handled"
        else:
            verdict = f"exit {result.returncode}"
        line = next((l for l in result.stderr.splitlines() if l.startswith("error:")), "")
        self.results.append({"fault": name, "verdict": verdict, "exit": result.returncode, "message": line[:160]})
        print(f"{verdict:9} | {name:55} | exit {result.returncode:3} | {line[:110]}", flush=True)


def scenarios(sweep: Sweep):
    w, S = sweep.work, sweep
    out = lambda name: w / "runs" / name  # noqa: E731

    def data_case(name, build, check=None, **flags):
        root = build(w / "cases" / name)
        S.record(name, S.run(S.args(out(name), data_dir=root, eval_split_name="none", **flags)), check)

    def summary_says(*words):
        return lambda r: r.returncode == 0 and all(word in r.stdout for word in words)

    # ---- data ----
    data_case("data_dir missing", lambda p: p)
    data_case("data_dir is a file", lambda p: (p.parent.mkdir(parents=True, exist_ok=True), p.write_text("x"), p)[2])
    data_case("split missing", lambda p: audiofolder(p, split="other"))
    data_case("text column missing", lambda p: audiofolder(p, raw_lines=["file_name,text", "0.wav,Адзін"]))
    data_case("manifest in cp1251", lambda p: audiofolder(p, encoding="cp1251"))
    data_case("manifest with a UTF-8 BOM", lambda p: audiofolder(p, encoding="utf-8-sig"), summary_says("8 clips"))
    data_case("rows with too many / too few fields", lambda p: audiofolder(
        p, rows=[(f"{i}.wav", "x") for i in range(6)], raw_lines=[
            "file_name,sentence", "0.wav,Адзін", "1.wav,Два,тры", "2.wav", "3.wav,Чатыры", "4.wav,Пяць", "5.wav,Шэсць"]),
        summary_says("2 malformed manifest row"))
    data_case("duplicate row, same text", lambda p: audiofolder(
        p, rows=[(f"{i}.wav", "x") for i in range(5)], raw_lines=[
            "file_name,sentence", "0.wav,Адзін", "1.wav,Два", "2.wav,Тры", "3.wav,Чатыры", "0.wav,Адзін"]),
        summary_says("1 duplicate manifest row"))
    data_case("duplicate row, other text", lambda p: audiofolder(
        p, rows=[(f"{i}.wav", "x") for i in range(4)], raw_lines=[
            "file_name,sentence", "0.wav,Адзін", "1.wav,Два", "2.wav,Тры", "0.wav,Іншы"]))
    data_case("manifest with a header only", lambda p: audiofolder(p, raw_lines=["file_name,sentence"]))

    def broken_audio(p, kind):
        root = audiofolder(p)
        folder = root / "train"
        if kind == "corrupt wav":
            (folder / "0.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
        elif kind == "truncated wav":
            (folder / "0.wav").write_bytes((folder / "0.wav").read_bytes()[:200])
        elif kind == "missing file":
            (folder / "0.wav").unlink()
        elif kind == "truncated mp3":
            sf.write(folder / "0.mp3", tone(1.5, 48000), 48000, format="MP3")
            data = (folder / "0.mp3").read_bytes()
            (folder / "0.mp3").write_bytes(data[: len(data) // 2])
            text = (folder / "metadata.csv").read_text(encoding="utf-8").replace("0.wav", "0.mp3")
            (folder / "metadata.csv").write_text(text, encoding="utf-8")
        elif kind == "empty transcript":
            text = (folder / "metadata.csv").read_text(encoding="utf-8").replace(SENTENCES[0], "")
            (folder / "metadata.csv").write_text(text, encoding="utf-8")
        elif kind == "40 s clip":
            sf.write(folder / "0.wav", tone(40.0), 16000)
        elif kind == "8 kHz stereo":
            sf.write(folder / "0.wav", np.stack([tone(0.5, 8000)] * 2, axis=1), 8000)
        elif kind == "all unreadable":
            for wav in folder.glob("*.wav"):
                wav.write_bytes(b"junk")
        return root

    for kind, words in [("corrupt wav", "1 unreadable audio"), ("truncated wav", "1 unreadable audio"),
                        ("missing file", "1 unreadable audio"), ("truncated mp3", "1 unreadable audio"),
                        ("empty transcript", "1 empty transcript"), ("40 s clip", "1 longer than"),
                        ("8 kHz stereo", "none skipped"), ("all unreadable", None)]:
        data_case(f"audio: {kind}", lambda p, k=kind: broken_audio(p, k),
                  summary_says(words) if words else None)

    def cv_release(p, with_clips=True):
        lang = p / "cv-corpus-23.0-2025-09-05" / "be"
        (lang / "clips").mkdir(parents=True)
        with open(lang / "train.tsv", "w", encoding="utf-8") as handle:
            handle.write("client_id\tpath\tsentence\n")
            for i, text in enumerate(SENTENCES):
                sf.write(lang / "clips" / f"{i}.mp3", tone(0.5, 48000), 48000, format="MP3")
                handle.write(f"c{i}\t{i}.mp3\t\"{text}\n")  # a lone quote, as Common Voice has
        if not with_clips:
            shutil.rmtree(lang / "clips")
        return p / "cv-corpus-23.0-2025-09-05"

    data_case("Common Voice release root instead of be/", cv_release)
    data_case("Common Voice be/ with lone quotes", lambda p: cv_release(p) / "be", summary_says("8 clips"))
    data_case("Common Voice be/ without clips/", lambda p: cv_release(p, with_clips=False) / "be")

    # ---- model ----
    S.record("model folder missing", S.run(S.args(out("m1"), model_name_or_path=w / "nope")))
    bare = w / "bare-model"
    shutil.copytree(sweep.model, bare)
    (bare / "tokenizer.json").unlink()
    (bare / "tokenizer_config.json").unlink()
    S.record("model folder without tokenizer", S.run(S.args(out("m2"), model_name_or_path=bare)))
    S.record("model path is a data folder", S.run(S.args(out("m3"), model_name_or_path=sweep.data)))

    # ---- flags ----
    for name, flags in [
        ("unknown flag", {"lerning_rate": 1}), ("bad number", {"max_steps": "ten"}),
        ("bad choice", {"lr_scheduler_type": "exp"}), ("learning rate 0", {"learning_rate": 0}),
        ("max_steps 0", {"max_steps": 0}), ("epochs 0", {"max_steps": -1, "num_train_epochs": 0}),
        ("max_train_samples 0", {"max_train_samples": 0}), ("warmup longer than max_steps", {"warmup_steps": 9}),
        ("batch size 0", {"per_device_train_batch_size": 0}),
        ("batch larger than the data", {"per_device_train_batch_size": 64}),
        ("fp16 without a GPU", {"mixed_precision": "fp16"}), ("adamw_8bit without a GPU", {"optim": "adamw_8bit"}),
        ("max duration 40 s", {"max_duration_in_seconds": 40}), ("generation_max_length 1000", {"generation_max_length": 1000}),
        ("streaming without max_steps", {"streaming": "true", "max_steps": -1}),
        ("missing eval split", {"eval_split_name": "dev2"}), ("negative weight decay", {"weight_decay": -1}),
        ("mask probability 2", {"mask_time_prob": 2}), ("resume latest with nothing", {"resume_from": "latest"}),
        ("resume from a missing checkpoint", {"resume_from": "checkpoint-77"}),
        ("overwrite and resume together", {"overwrite_output_dir": "true", "resume_from": "latest"}),
    ]:
        S.record(f"flag: {name}", S.run(S.args(out("f-" + name.replace(" ", "-")), **flags)))
    recipe = w / "recipe.yaml"
    recipe.write_text("lerning_rate: 1e-4\n")
    S.record("recipe with an unknown key", S.run(S.args(out("r1")) + ["--config", str(recipe)]))
    S.record("recipe file missing", S.run(S.args(out("r2")) + ["--config", str(w / "none.yaml")]))

    # ---- numbers ----
    diverging = out("nan")
    result = S.run(S.args(diverging, learning_rate=1e4, max_steps=30, save_steps=1, warmup_steps=0,
                          lr_scheduler_type="constant", max_grad_norm=0, eval_split_name="validation", eval_steps=1))
    S.record("learning rate 1e4 (divergence)", result,
             lambda r: not (diverging / "model.safetensors").exists() and "NaN" not in (diverging / "metrics.jsonl").read_text())

    # ---- output folder ----
    taken = w / "taken-file"
    taken.write_text("x")
    S.record("output_dir is a file", S.run(S.args(taken)))
    finished = out("finished")
    S.run(S.args(finished, save_steps=2))
    S.record("fresh run into another run's folder", S.run(S.args(finished)))
    S.record("overwrite_output_dir", S.run(S.args(finished, overwrite_output_dir="true")),
             lambda r: r.returncode == 0 and (finished / "metrics.jsonl").read_text().count('"loss"') == 2)
    S.record("resume a finished run with the same max_steps", S.run(S.args(finished, resume_from="latest")))
    damaged = out("damaged")
    S.run(S.args(damaged, save_steps=1))
    optimizer = damaged / "checkpoint-2" / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:100])
    S.record("damaged newest checkpoint, resume latest", S.run(S.args(damaged, resume_from="latest", max_steps=3)),
             lambda r: "resumed from" in r.stdout and "checkpoint-1" in r.stdout)
    S.record("damaged checkpoint, resume it by name", S.run(S.args(damaged, resume_from="checkpoint-2", max_steps=3)))
    truncated = out("truncated-state")
    S.run(S.args(truncated, save_steps=1))
    state = truncated / "checkpoint-2" / "trainer_state.json"
    state.write_text(state.read_text()[:50])
    S.record("truncated trainer_state.json, resume latest", S.run(S.args(truncated, resume_from="latest", max_steps=3)),
             lambda r: "checkpoint-1" in r.stdout)
    other = out("other-layout")
    S.run(S.args(other, save_steps=2))
    S.record("resume with another batch size", S.run(S.args(other, resume_from="checkpoint-2", max_steps=3,
                                                            per_device_train_batch_size=4)),
             lambda r: "not an exact continuation" in r.stdout)
    S.record("resume switching --streaming", S.run(S.args(other, resume_from="checkpoint-2", max_steps=4,
                                                          streaming="true")))

    # ---- signals ----
    for name, sig in [("SIGTERM to the trainer", signal.SIGTERM), ("Ctrl-C to the trainer", signal.SIGINT),
                      ("SIGHUP to the trainer (a closed terminal)", signal.SIGHUP)]:
        folder = out(name.replace(" ", "-"))
        process = subprocess.Popen([sys.executable, "-m", "train_loop.main",
                                    *S.args(folder, max_steps=100000, eval_split_name="none")],
                                   cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        for line in process.stdout:
            if line.startswith("step 3/"):
                break
        process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=120)
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        S.record(name, result, lambda r, f=folder: r.returncode == 75 and any(
            (p / "trainer_state.json").is_file() for p in f.glob("checkpoint-*")))


def issue_22_scenarios(sweep: Sweep):
    """What a demanding user hands the project (a shared checkpoint, an output folder that is an
    input, NaN flags, odd audio and manifests, other tools' folders, signals, damaged run files)."""
    import torch

    w, S = sweep.work, sweep
    out = lambda name: w / "runs22" / name  # noqa: E731
    run = lambda module, args: S.run([str(a) for a in args], module=module)  # noqa: E731

    # ---- a checkpoint is data, never code ----
    class Payload:
        def __init__(self, marker):
            self.marker = str(marker)

        def __reduce__(self):
            return (open, (self.marker, "w"))

    for planted in ("data_state_0.pt", "random_states_0.pkl", "optimizer.bin"):
        folder = out(f"payload-{planted}")
        S.run(S.args(folder, save_steps=1, eval_split_name="none"))
        marker = w / f"code-ran-{planted}"
        torch.save({"state": Payload(marker)}, folder / "checkpoint-2" / planted)
        S.record(f"checkpoint with code in {planted}", S.run(S.args(folder, resume_from="latest", max_steps=3,
                                                                   eval_split_name="none")),
                 lambda r, m=marker: r.returncode == 2 and not m.exists())

    # ---- never delete or overwrite what it did not write ----
    model_copy = w / "model-copy"
    shutil.copytree(sweep.model, model_copy)
    S.record("output_dir = model_name_or_path + overwrite", S.run(S.args(
        model_copy, model_name_or_path=model_copy, overwrite_output_dir="true")),
        lambda r: (model_copy / "model.safetensors").is_file())
    finished = out("finished")
    S.run(S.args(finished, save_steps=1, eval_split_name="none"))
    other = w / "another-run"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"another run's weights")
    S.record("average into another run's folder", run("train_loop.average", [
        finished / "checkpoint-1", finished / "checkpoint-2", "--output_dir", other]),
        lambda r: (other / "model.safetensors").read_bytes() == b"another run's weights")
    S.record("export --overwrite_output_dir onto the model", run("train_loop.export", [
        "--model", model_copy, "--format", "ggml", "--output_dir", model_copy, "--overwrite_output_dir"]),
        lambda r: (model_copy / "model.safetensors").is_file())
    S.record("export ctranslate2 of a 2 s window", run("train_loop.export", [
        "--model", sweep.model, "--format", "ctranslate2", "--output_dir", w / "ct2"]),
        lambda r: not (w / "ct2").exists())
    (finished / "model.safetensors").unlink()  # a kill during the final save
    S.record("kill during the final save, resume latest", S.run(S.args(finished, save_steps=1, eval_split_name="none",
                                                                        resume_from="latest")),
             lambda r: r.returncode == 0 and (finished / "model.safetensors").is_file())

    # ---- LoRA checkpoints and resumes with other flags ----
    lora = out("lora")
    S.run(S.args(lora, save_steps=1, eval_split_name="none", use_lora="true", lora_r=4))
    S.record("evaluate an adapter-only LoRA checkpoint", run("train_loop.evaluate", [
        "--model", lora / "checkpoint-1", "--data_dir", sweep.data, "--split", "validation"]))
    S.record("transcribe with an adapter-only LoRA checkpoint", run("train_loop.transcribe", [
        "--model", lora / "checkpoint-1", sweep.data / "validation" / "0.wav"]))
    for name, flags in [("resume turning LoRA off", {"use_lora": None, "lora_r": None}),
                        ("resume with another lora_r", {"lora_r": 8}),
                        ("resume adding ema_decay", {"ema_decay": 0.9}),
                        ("resume adding freeze_encoder", {"freeze_encoder": "true"})]:
        base = {"save_steps": 1, "eval_split_name": "none", "use_lora": "true", "lora_r": 4, "max_steps": 3,
                "resume_from": "checkpoint-2"}
        base.update(flags)
        S.record(name, S.run(S.args(lora, **base)))

    # ---- flags that cannot be right ----
    for name, flags in [("max_grad_norm nan", {"max_grad_norm": "nan"}), ("weight_decay nan", {"weight_decay": "nan"}),
                        ("learning_rate inf", {"learning_rate": "inf"}), ("adam_epsilon nan", {"adam_epsilon": "nan"}),
                        ("eval_split_name ',' with load_best", {"eval_split_name": ",",
                                                                "load_best_model_at_end": "true"})]:
        S.record(f"flag: {name}", S.run(S.args(out("f22-" + name.split()[0]), **flags)))

    # ---- audio and manifests ----
    def loud(p):
        root = audiofolder(p)
        sf.write(root / "train" / "0.wav", np.full(8000, 1e30, dtype=np.float32), 16000, subtype="FLOAT")
        return root

    def escaping(p):
        root = audiofolder(p)
        audiofolder(root, [("v.wav", SENTENCES[0])], split="validation")
        with open(root / "train" / "metadata.csv", "a", encoding="utf-8") as handle:
            handle.write(f"../validation/v.wav,Уцечка.\n./1.wav,{SENTENCES[1]}\n")
        return root

    for name, build, words in [("audio: samples of 1e30", loud, "1 unreadable audio"),
                               ("manifest path into another split, ./ alias", escaping, "outside the split")]:
        root = build(w / "cases22" / name.split(":")[0].replace(" ", "-"))
        S.record(name, S.run(S.args(out(name[:12].replace(" ", "-")), data_dir=root, eval_split_name="none")),
                 lambda r, ws=words: r.returncode == 0 and ws in r.stdout)
    utf16 = audiofolder(w / "cases22" / "utf16")
    text = (utf16 / "train" / "metadata.csv").read_text(encoding="utf-8")
    (utf16 / "train" / "metadata.csv").write_bytes(text.encode("utf-16"))
    S.record("manifest in UTF-16", S.run(S.args(out("utf16"), data_dir=utf16, eval_split_name="none")),
             lambda r: "UTF-16" in r.stderr)

    # ---- the tools ----
    clips = w / "same-name"
    clips.mkdir()
    sf.write(clips / "x.wav", tone(1.0), 16000)
    sf.write(clips / "x.flac", tone(1.2), 16000)
    S.record("transcribe x.wav and x.flac into one folder", run("train_loop.transcribe", [
        "--model", sweep.model, "--output_dir", w / "transcripts", "--generation_max_length", 4, clips]),
        lambda r: len(list((w / "transcripts").glob("*.txt"))) == 2)
    S.record("transcribe --language zz", run("train_loop.transcribe", ["--model", sweep.model, "--language", "zz",
                                                                      clips / "x.wav"]))
    damaged = w / "damaged-metrics"
    shutil.copytree(lora, damaged)
    with open(damaged / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write("{cut\n[1, 2]\n")
    S.record("plot with malformed metrics lines", run("train_loop.plot", [damaged]),
             lambda r: r.returncode == 0 and "left out 2 line(s)" in r.stderr)

    # ---- signals and interruptions ----
    stopped = out("stopped-during-preparation")
    stopped.mkdir(parents=True)
    (stopped / "train.log").write_text("whisper train_loop | 1 process(es) on cpu\n")
    (stopped / "metrics.jsonl").write_text("")
    S.record("run again after a stop during preparation", S.run(S.args(stopped, eval_split_name="none")),
             lambda r: r.returncode == 0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="run only scenarios whose name contains this")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fault-sweep-"))
    sweep = Sweep(work)
    if args.only:
        original = sweep.record
        sweep.record = lambda name, *a, **k: original(name, *a, **k) if args.only in name else None
    started = time.time()
    scenarios(sweep)
    issue_22_scenarios(sweep)
    counts = {}
    for entry in sweep.results:
        counts[entry["verdict"]] = counts.get(entry["verdict"], 0) + 1
    print(json.dumps({"faults": len(sweep.results), **counts, "seconds": round(time.time() - started)}))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
