"""Does a small share of English replay shrink forgetting? Two fine-tunings of one model on
Belarusian, one with ``--mix_data_dir`` English mixed in, both watched by the forgetting guard.

    python ../shared/fixtures/make_be_speech.py be-speech --train 2400 --validation 0 --test 120 \\
        --rich-metadata --noise --speakers 6 --seed 0
    python -m train_loop.bench.replay --model PATH --data_dir be-speech --output_json replay.json

The English speech (a replay set to train on and a disjoint guard set) is synthesized here with
espeak-ng: the replay set from sentences of a small grammar in several voices, the guard set from
everyday sentences of other words (the parity check's) in two voices, so the guard measures
English the replay did not teach. Arms, each the ordinary training command
with the same model, steps, batch size and learning rate:

* ``belarusian``: Belarusian only;
* ``replay``: the same plus ``--mix_data_dir`` English at ``--mix_weight`` of the examples.

``zero_shot`` is the model before training. Each holds ``wer`` (Belarusian test clips) and
``guard_wer`` (the English guard set, decoded as English); an arm's ``forgetting`` is its guard WER
minus the zero-shot one. The JSON is the last line printed and, with ``--output_json``, a file.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..core.console import run_tool
from ..core.errors import UserError
from ..core.flags import at_least, between, flag, parse_sections
from .arms import require_model_and_speech, train_arm
from .parity import ENGLISH

ARMS = ("belarusian", "replay")
SUBJECTS = ["My brother", "The teacher", "Our neighbour", "A young girl", "The old man", "Her friend", "The doctor",
            "My sister", "The driver", "Their son"]
VERBS = ["reads", "buys", "finds", "cleans", "paints", "sells", "carries", "opens", "watches", "brings"]
OBJECTS = ["a small book", "the red door", "an old car", "the kitchen window", "a warm coat", "the green box",
           "a new phone", "the heavy bag", "a wooden chair", "the morning paper"]
PLACES = ["in the garden", "at the station", "near the river", "after lunch", "every Sunday", "in the city",
          "before dinner", "at school"]
VOICES = ["en-us", "en", "en+m3", "en+f2", "en-us+f4", "en+m7"]


@dataclass
class ReplayBenchConfig:
    """The two arms' model, data and training."""

    _argument_group_name = "The replay benchmark (bench.replay)"

    model: str | None = flag(None, "Whisper checkpoint folder (transformers format). Required.")
    data_dir: str | None = flag(None, "Belarusian speech in audiofolder layout with train/ and test/. Required.")
    output_json: str | None = flag(None, "Also write the JSON here.")
    work_dir: str | None = flag(None, "Where the English speech and the two runs go (default: a temporary folder).")
    max_steps: int = flag(80, "Optimizer steps of each arm.", check=at_least(1))
    batch_size: int = flag(8, "Clips per step.", check=at_least(1))
    learning_rate: float = flag(1e-4, "Peak learning rate of both arms.")
    freeze_encoder: bool = flag(True, "Train the decoder only (on a CPU the encoder's backward doubles every step).")
    mix_weight: float = flag(0.2, "Replay arm: share of the examples that are English.", check=between(0.01, 0.9))
    english_train: int = flag(300, "English replay clips synthesized.", check=at_least(1))
    english_guard: int = flag(40, "English guard clips synthesized (20 everyday sentences, two voices).",
                              check=at_least(1))
    max_eval_samples: int = flag(80, "Belarusian test clips scored.", check=at_least(1))
    eval_batch_size: int = flag(16, "Clips per generation batch.", check=at_least(1))
    seed: int = flag(0, "Seed of both runs and of the English speech.")


def main(argv: list[str] | None = None) -> int:
    def body():
        args = parse_sections({"bench": ReplayBenchConfig}, argv, prog="train_loop.bench.replay",
                              description=__doc__.split("\n\n")[0])["bench"]
        return run_benchmark(args)

    return run_tool(body)


def english_speech(root: str, train: int, guard: int, seed: int) -> str:
    """train/ (replay: sentences generated from a small grammar) and validation/ (guard: everyday
    sentences of other words, ``parity.ENGLISH``, in two voices), in audiofolder layout. The guard
    shares no vocabulary template with the replay set, so it measures English that was not replayed."""
    marker = os.path.join(root, f".complete-v2-{train}-{guard}-{seed}")
    if os.path.exists(marker):
        return root
    if shutil.which("espeak-ng") is None:
        raise UserError("the English speech is synthesized with espeak-ng: apt-get install -y espeak-ng")
    rng = random.Random(seed)
    every = [f"{s} {v} {o} {p}." for s in SUBJECTS for v in VERBS for o in OBJECTS for p in PLACES]
    rng.shuffle(every)
    if train > len(every) or guard > 2 * len(ENGLISH):
        raise UserError(f"--english_train: at most {len(every)}; --english_guard: at most {2 * len(ENGLISH)}")
    guard_sentences = [ENGLISH[i % len(ENGLISH)] for i in range(guard)]
    jobs = []
    for split, sentences in (("train", every[:train]), ("validation", guard_sentences)):
        folder = os.path.join(root, split)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "metadata.csv"), "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", "sentence", "client_id"])
            for index, text in enumerate(sentences):
                voice = rng.choice(VOICES) if split == "train" else ("en-us", "en+f2")[index // len(ENGLISH) % 2]
                name = f"en-{split}-{index:04d}.wav"
                writer.writerow([name, text, f"en-{split}-{voice}"])
                jobs.append(["espeak-ng", "-v", voice, "-s", str(rng.randint(140, 180)), "-w",
                             os.path.join(folder, name), text])
    print(f"synthesizing {len(jobs)} English clips with espeak-ng ...", flush=True)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda job: subprocess.run(job, check=True, capture_output=True), jobs))
    open(marker, "w").close()
    return root


def run_benchmark(args: ReplayBenchConfig) -> int:
    require_model_and_speech(args.model, args.data_dir)
    work = args.work_dir or tempfile.mkdtemp(prefix="replay-")
    os.makedirs(work, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    english = english_speech(os.path.join(work, "english"), args.english_train, args.english_guard, args.seed)
    summary: dict = {"model": os.path.basename(os.path.normpath(args.model)), "data_dir": args.data_dir,
                     "max_steps": args.max_steps, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                     "freeze_encoder": args.freeze_encoder, "mix_weight": args.mix_weight,
                     "english_train_clips": args.english_train, "english_guard_clips": args.english_guard}
    for arm in ARMS:
        results = arm_run(args, arm, os.path.join(work, arm), english)
        evaluations = results["evaluations"]
        if arm == ARMS[0]:
            summary["zero_shot"] = arm_numbers(evaluations, 0)
        summary[arm] = arm_numbers(evaluations, args.max_steps)
        summary[arm]["forgetting"] = round(summary[arm]["guard_wer"] - summary["zero_shot"]["guard_wer"], 3)
        summary[arm]["train_seconds"] = results.get("train_seconds")
        summary[arm]["mix_clips"] = last_mix_clips(os.path.join(work, arm))
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    print_table(summary)
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return 0


def arm_run(args: ReplayBenchConfig, arm: str, run_dir: str, english: str) -> dict:
    flags = {
        "model_name_or_path": args.model, "data_dir": args.data_dir, "output_dir": run_dir,
        "cache_dir": os.path.join(os.path.dirname(run_dir), "cache"), "language": "be",
        "max_steps": args.max_steps, "per_device_train_batch_size": args.batch_size,
        "learning_rate": args.learning_rate, "warmup_steps": max(1, args.max_steps // 10),
        "freeze_encoder": str(args.freeze_encoder).lower(), "eval_split_name": "test",
        "max_eval_samples": args.max_eval_samples, "eval_at_start": str(arm == ARMS[0]).lower(), "eval_steps": 0,
        "test_split_name": "none", "guard_data_dir": english, "guard_language": "en",
        "guard_split_name": "validation", "per_device_eval_batch_size": args.eval_batch_size,
        "generation_max_length": 225, "logging_steps": 10, "save_steps": 0, "report_to": "none",
        "seed": args.seed, "preprocessing_num_workers": max(1, os.cpu_count() or 1),
        # make_be_speech.py's few synthetic voices speak in every split by construction; what is
        # measured here is forgetting, not generalization to new speakers.
        "allow_eval_overlap": "true",
    }
    if arm == "replay":
        flags.update(mix_data_dir=english, mix_split_name="train", mix_language="en", mix_weight=args.mix_weight)
    return train_arm(arm, flags, run_dir)


def arm_numbers(evaluations: list[dict], step: int) -> dict:
    at = [e for e in evaluations if e["step"] == step]
    own = next(e for e in at if e["split"] != "guard")
    guard = next(e for e in at if e["split"] == "guard")
    return {"wer": round(own["eval_wer"], 3), "cer": round(own["eval_cer"], 3),
            "guard_wer": round(guard["eval_wer"], 3), "guard_cer": round(guard["eval_cer"], 3)}


def last_mix_clips(run_dir: str) -> dict | None:
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return next((row["mix_clips"] for row in reversed(rows) if "mix_clips" in row), None)


def print_table(s: dict) -> None:
    print(f"\n{s['model']}: {s['max_steps']} steps x batch {s['batch_size']}, lr {s['learning_rate']:g}, "
          f"replay share {s['mix_weight']:g}")
    columns = ("zero_shot", *ARMS)
    print(f"{'':<28} | " + " | ".join(f"{c:>10}" for c in columns))
    print("-" * (31 + 13 * len(columns)))
    for label, key in (("Belarusian WER %", "wer"), ("Belarusian CER %", "cer"), ("English guard WER %", "guard_wer"),
                       ("forgetting (guard WER +)", "forgetting")):
        print(f"{label:<28} | " + " | ".join(f"{s[c].get(key, 0.0) if c != 'zero_shot' or key != 'forgetting' else 0.0:>10.2f}"
                                             for c in columns))
    print(f"whole benchmark {s['wall_seconds']:.0f} s\n")


if __name__ == "__main__":
    sys.exit(main())
