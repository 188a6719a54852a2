"""Parity of the exports with transformers on a real model: WER and differing transcripts.

    python -m train_loop.bench.parity --model /tmp/whisper-base
    python -m train_loop.bench.parity --model runs/small-be --be_data_dir be_speech --language be

Exports the model to CTranslate2 and ggml (``train_loop.export``), transcribes the same clips
with transformers, faster-whisper and whisper.cpp (greedy, no timestamps, no fallback), and
prints one table and a final JSON line. The English clips are synthesized here with espeak-ng;
``--be_data_dir`` adds a Belarusian set (e.g. from ``../shared/fixtures/make_be_speech.py``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

ENGLISH = ["The quick brown fox jumps over the lazy dog.", "She sells sea shells by the sea shore.",
           "Please call Stella and ask her to bring these things.",
           "The weather is nice today, so we will walk to the park.", "I would like a cup of coffee with milk.",
           "The train to London leaves at nine in the morning.", "He read the book in one evening.",
           "Our meeting has been moved to Thursday afternoon.", "The children played football in the garden.",
           "Turn left at the next street and then go straight.", "My brother works as a doctor in a small town.",
           "It was raining all night long.", "Can you help me carry this heavy box?",
           "The museum opens at ten and closes at six.", "We planted tomatoes and potatoes this spring.",
           "Water boils at one hundred degrees.", "The cat is sleeping on the warm window sill.",
           "They bought a new car last week.", "Reading every day makes your vocabulary richer.",
           "The concert was cancelled because of the storm."]


def english_speech(root: str) -> str:
    folder = os.path.join(root, "test")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metadata.csv"), "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "sentence"])
        for index, text in enumerate(ENGLISH):
            name = f"en-{index:03d}.wav"
            subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", os.path.join(folder, name), text],
                           check=True)
            writer.writerow([name, text])
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a Whisper folder in transformers format")
    parser.add_argument("--work_dir", default=None, help="exports and data (default: a temp dir)")
    parser.add_argument("--be_data_dir", default=None, help="a Belarusian data folder with a test split")
    parser.add_argument("--be_max_samples", type=int, default=30, help="Belarusian clips checked (default 30)")
    parser.add_argument("--formats", default="ctranslate2,ggml")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work_dir or tempfile.mkdtemp(prefix="parity-")
    sets = [("en", "basic", english_speech(os.path.join(work, "en")), None)]
    if args.be_data_dir:
        sets.append(("be", "belarusian", args.be_data_dir, args.be_max_samples))
    rows = []
    for language, normalizer, data, limit in sets:
        for fmt in args.formats.split(","):
            out = os.path.join(work, f"{fmt}-{language}")
            command = [sys.executable, "-m", "train_loop.export", "--model", args.model, "--format", fmt,
                       "--output_dir", out, "--overwrite_output_dir", "--check_data_dir", data, "--check_split",
                       "test", "--language", language, "--eval_normalizer", normalizer]
            if limit:
                command += ["--check_max_samples", str(limit)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode not in (0, 1):
                print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
                return result.returncode
            report = json.load(open(os.path.join(out, "parity.json"), encoding="utf-8"))
            rows.append({"language": language, "format": fmt, "clips": report["clips"],
                         "transformers_wer": round(report["transformers_wer"], 2),
                         "runtime_wer": round(report["runtime_wer"], 2), "differing": report["differing"],
                         "passed": report["passed"]})
    print(f"\nparity on {args.model} (greedy, no timestamps; WER in %)")
    print(f"{'language':<9}| {'runtime':<12}| {'clips':>5} | {'transformers':>12} | {'runtime':>8} | differing")
    for row in rows:
        print(f"{row['language']:<9}| {row['format']:<12}| {row['clips']:>5} | {row['transformers_wer']:>12.2f} | "
              f"{row['runtime_wer']:>8.2f} | {row['differing']}")
    print(json.dumps({"model": os.path.basename(os.path.normpath(args.model)), "results": rows}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
