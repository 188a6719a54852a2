"""What augmentation costs per clip in a DataLoader worker, against the same worker without it.

    python -m train_loop.bench.augment --model PATH --speech_dir be-speech --noise_dir NOISE --clips 200

Each arm featurizes the same clips (twice, in alternation with the others; the faster round counts) (decode to 16 kHz, augment, log-mel, tokenize: what a streaming
or packing worker does) in one DataLoader worker process, one after the other in this process;
the time per clip and its ratio to the arm without augmentation are printed. Without
``--noise_dir`` a folder of generated noise (white and brown, 10 s each) is used.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from ..core.console import run_tool
from ..core.errors import UserError
from ..core.flags import at_least, flag, parse_sections

ARMS = {"none": {}, "speed 0.9,1.1": {"speeds": (0.9, 1.1)}, "gain -6,6": {"gain_db": (-6.0, 6.0)},
        "noise p=1": {"noise": True}, "all three": {"speeds": (0.9, 1.1), "gain_db": (-6.0, 6.0), "noise": True}}


@dataclass
class AugmentBenchConfig:
    """The clips and the processor."""

    _argument_group_name = "The augmentation cost benchmark (bench.augment)"

    model: str | None = flag(None, "Whisper folder whose processor featurizes the clips. Required.")
    speech_dir: str | None = flag(None, "An audiofolder with train/metadata.csv. Required.")
    noise_dir: str | None = flag(None, "Noise recordings (default: generated white and brown noise).")
    clips: int = flag(200, "Clips per arm.", check=at_least(10))
    output_json: str | None = flag(None, "Also write the JSON here.")


class _Clips:
    def __init__(self, featurizer, rows, augmenter):
        self.featurizer, self.rows = featurizer, rows
        self.featurizer.augment = augmenter

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        path, text = self.rows[i]
        example = self.featurizer(path, path, text, epoch=0)
        return example["duration"]


def main(argv: list[str] | None = None) -> int:
    def body():
        args = parse_sections({"bench": AugmentBenchConfig}, argv, prog="train_loop.bench.augment",
                              description=__doc__.split("\n\n")[0])["bench"]
        return run_benchmark(args)

    return run_tool(body)


def generated_noise(folder: str) -> str:
    import soundfile as sf

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    white = 0.1 * rng.standard_normal(160000)
    brown = np.cumsum(rng.standard_normal(160000))
    brown = 0.1 * (brown - brown.mean()) / np.abs(brown).max()
    sf.write(os.path.join(folder, "white.wav"), white.astype(np.float32), 16000)
    sf.write(os.path.join(folder, "brown.wav"), brown.astype(np.float32), 16000)
    return folder


def run_benchmark(args: AugmentBenchConfig) -> int:
    from torch.utils.data import DataLoader

    from ..core.model import load_processor
    from ..data.augment import Augmenter
    from ..data.config import DataConfig
    from ..data.features import featurizer_for

    if not args.model or not args.speech_dir:
        raise UserError("--model and --speech_dir are required")
    metadata = os.path.join(args.speech_dir, "train", "metadata.csv")
    rows = [(os.path.join(args.speech_dir, "train", r["file_name"]), r["sentence"])
            for r in list(csv.DictReader(open(metadata, encoding="utf-8")))[: args.clips]]
    noise_dir = args.noise_dir or generated_noise(tempfile.mkdtemp(prefix="noise-"))
    processor = load_processor(args.model, "be", "transcribe")
    results: dict[str, dict] = {}
    for _ in range(2):  # two rounds, the faster kept: the machine's noise only ever adds time
        for name, arm in ARMS.items():
            augmenter = Augmenter(seed=0, speeds=arm.get("speeds", ()), gain_db=arm.get("gain_db", ()),
                                  noise_dir=noise_dir if arm.get("noise") else None, noise_probability=1.0)
            dataset = _Clips(featurizer_for(processor, DataConfig(), "belarusian"), rows, augmenter or None)
            loader = iter(DataLoader(dataset, batch_size=None, num_workers=1, worker_init_fn=_one_thread))
            next(loader)  # the worker's start and first clip are not timed
            started = time.perf_counter()
            seconds_of_audio = sum(float(duration) for duration in loader)
            elapsed = time.perf_counter() - started
            timed = {"ms_per_clip": round(1000 * elapsed / (len(rows) - 1), 2),
                     "audio_seconds_per_second": round(seconds_of_audio / elapsed, 1)}
            if name not in results or timed["ms_per_clip"] < results[name]["ms_per_clip"]:
                results[name] = timed
    base = results["none"]["ms_per_clip"]
    for numbers in results.values():
        numbers["ratio"] = round(numbers["ms_per_clip"] / base, 2)
    summary = {"clips": len(rows), "mean_clip_seconds": round(float(np.mean([_duration(p) for p, _ in rows])), 2),
               "arms": results}
    print(f"\n{len(rows)} clips, one DataLoader worker, 1 thread")
    print(f"{'augmentation':<14} | {'ms per clip':>11} | ratio")
    for name, numbers in results.items():
        print(f"{name:<14} | {numbers['ms_per_clip']:>11.2f} | {numbers['ratio']:.2f}x")
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return 0


def _one_thread(worker_id: int) -> None:
    import torch

    torch.set_num_threads(1)


def _duration(path: str) -> float:
    import soundfile as sf

    return sf.info(path).duration


if __name__ == "__main__":
    sys.exit(main())
