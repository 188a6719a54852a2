"""Reading clips from Parquet shards against reading loose mp3 files, and what it means for all of
Common Voice Belarusian (1,816 validated hours).

    python -m train_loop.bench.shards --speech_dir be-speech --clips 600 --output_json shards.json

Builds a Common-Voice-shaped folder (``clips/*.mp3`` at 48 kHz, as Mozilla ships them, encoded here
from ``--speech_dir``'s wav files, and ``validated.tsv``), shards it with ``train_loop.shard``, and
reads every clip both ways in this one process, the way training reads them (``sources.py``):

* ``loose``: the rows of ``validated.tsv``, each clip opened as its own file;
* ``shards``: the rows streamed from the Parquet shards (``--data_dir SHARDS --streaming``).

Each way is timed reading the bytes from the page cache (the files were just written), reading
and decoding them to 16 kHz (what a DataLoader worker does before the log-mel), and, when run as
root, reading the bytes after the page cache was emptied (from the disk: a file per clip costs a
seek and metadata lookups; on network storage, where opening a file costs milliseconds, loose
files fall much further behind). The arithmetic for 1,816 hours uses
the bytes per second of audio and the rates measured here.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from ..core.console import run_tool
from ..core.errors import UserError
from ..core.flags import at_least, flag, parse_sections

CV_HOURS = 1816.0  # Common Voice 25.0 Belarusian, validated
CV_CLIPS = 1_400_000  # about: validated.tsv rows


@dataclass
class ShardBenchConfig:
    """Where the speech comes from and how much of it."""

    _argument_group_name = "The shard throughput benchmark (bench.shards)"

    speech_dir: str | None = flag(None, "An audiofolder with train/metadata.csv and wav files (make_be_speech.py). "
                                        "Required.")
    clips: int = flag(600, "Clips to convert, shard and read.", check=at_least(10))
    work_dir: str | None = flag(None, "Where the mp3 folder and the shards go (default: a temporary folder).")
    shard_size_mb: float = flag(64.0, "Shard size for the benchmark (training defaults to 256).")
    output_json: str | None = flag(None, "Also write the JSON here.")


def main(argv: list[str] | None = None) -> int:
    def body():
        args = parse_sections({"bench": ShardBenchConfig}, argv, prog="train_loop.bench.shards",
                              description=__doc__.split("\n\n")[0])["bench"]
        return run_benchmark(args)

    return run_tool(body)


def common_voice_folder(speech_dir: str, out: str, clips: int) -> str:
    import soundfile as sf

    from ..data.audio import decode_audio

    metadata = os.path.join(speech_dir, "train", "metadata.csv")
    if not os.path.isfile(metadata):
        raise UserError(f"--speech_dir {speech_dir}: expected train/metadata.csv; build it with "
                        "python ../shared/fixtures/make_be_speech.py DIR --train 600 --rich-metadata")
    rows = list(csv.DictReader(open(metadata, encoding="utf-8")))[:clips]
    os.makedirs(os.path.join(out, "clips"), exist_ok=True)
    with open(os.path.join(out, "validated.tsv"), "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerow(["client_id", "path", "sentence"])
        for number, row in enumerate(rows):
            name = f"common_voice_be_{number:08d}.mp3"
            target = os.path.join(out, "clips", name)
            if not os.path.exists(target):
                wave = decode_audio(os.path.join(speech_dir, "train", row["file_name"]), 48000)
                sf.write(target, wave, 48000, format="MP3")
            writer.writerow([row.get("client_id", ""), name, row["sentence"].replace("\t", " ")])
    return out


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only), so the next read comes from the disk."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def timed(rows, decode: bool) -> tuple[int, float]:
    from ..data.audio import decode_audio

    started, count = time.perf_counter(), 0
    for row in rows:
        audio = row["audio"]
        if decode:
            decode_audio(audio, 16000)
        elif isinstance(audio, dict):
            len(audio["bytes"])
        else:
            with open(audio, "rb") as handle:
                handle.read()
        count += 1
    return count, time.perf_counter() - started


def run_benchmark(args: ShardBenchConfig) -> int:
    from ..data.config import SourceConfig
    from ..data.shards import write_shards
    from ..data.sources import load_rows

    if not args.speech_dir:
        raise UserError("--speech_dir is required (an audiofolder with train/ wav files)")
    work = args.work_dir or tempfile.mkdtemp(prefix="shards-bench-")
    cv = common_voice_folder(args.speech_dir, os.path.join(work, "cv"), args.clips)
    shards_dir = os.path.join(work, "shards", "validated")
    shutil.rmtree(shards_dir, ignore_errors=True)  # a fresh sharding is what is timed
    started = time.perf_counter()
    write_shards(load_rows(SourceConfig(data_dir=cv), "validated"), shards_dir, args.shard_size_mb)  # as train_loop.shard
    shard_seconds = time.perf_counter() - started
    index = json.load(open(os.path.join(shards_dir, "index.json"), encoding="utf-8"))
    loose = load_rows(SourceConfig(data_dir=cv), "validated")
    results = {}
    for what in ("read", "decode", "cold_read"):
        for way in ("loose", "shards"):
            rows = (loose.rows if way == "loose" else
                    load_rows(SourceConfig(data_dir=os.path.join(work, "shards")), "validated", streaming=True).rows)
            if what == "cold_read" and not drop_page_cache():
                continue  # not root: the page cache cannot be emptied
            count, seconds = timed(rows, what == "decode")
            results[f"{way}_{what}_clips_per_second"] = round(count / seconds, 1)
    audio_seconds = index["hours"] * 3600
    bytes_per_audio_second = index["bytes"] / audio_seconds
    clips_per_hour = index["rows"] / index["hours"]
    total_bytes = bytes_per_audio_second * CV_HOURS * 3600
    decode_rate = results["shards_decode_clips_per_second"]
    summary = {
        "clips": index["rows"], "audio_hours": index["hours"], "shards": len(index["shards"]),
        "shard_bytes": index["bytes"], "bytes_per_audio_second": round(bytes_per_audio_second, 1),
        "mean_clip_seconds": round(audio_seconds / index["rows"], 2), "sharding_clips_per_second":
            round(index["rows"] / shard_seconds, 1), **results,
        "shards_over_loose_read": round(results["shards_read_clips_per_second"] /
                                        results["loose_read_clips_per_second"], 2),
        "shards_over_loose_decode": round(results["shards_decode_clips_per_second"] /
                                          results["loose_decode_clips_per_second"], 2),
        "common_voice_be": {
            "hours": CV_HOURS, "clips_at_this_clip_length": round(clips_per_hour * CV_HOURS),
            "shard_gb": round(total_bytes / 1e9, 1), "shards_of_256_mb": int(np.ceil(total_bytes / (256 * 2**20))),
            "sharding_hours_one_process": round(clips_per_hour * CV_HOURS / (index["rows"] / shard_seconds) / 3600, 2),
            "decode_core_hours_per_epoch": round(clips_per_hour * CV_HOURS / decode_rate / 3600, 1),
        },
    }
    print_summary(summary)
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary), flush=True)
    return 0


def print_summary(s: dict) -> None:
    cv = s["common_voice_be"]
    print(f"\n{s['clips']} clips ({s['audio_hours'] * 60:.1f} min, {s['mean_clip_seconds']} s each), "
          f"{s['shards']} shards, {s['bytes_per_audio_second']:.0f} bytes per second of audio")
    print(f"{'clips/s':<22} | {'loose mp3':>10} | {'shards':>10} | ratio")
    labels = {"read": "read bytes (cached)", "decode": "decode to 16 kHz", "cold_read": "read bytes (from disk)"}
    for what, label in labels.items():
        if f"loose_{what}_clips_per_second" not in s:
            continue
        loose, sharded = s[f"loose_{what}_clips_per_second"], s[f"shards_{what}_clips_per_second"]
        print(f"{label:<22} | {loose:>10.1f} | {sharded:>10.1f} | {sharded / loose:.2f}x")
    print(f"sharding: {s['sharding_clips_per_second']:.0f} clips/s in one process")
    print(f"all of Common Voice be ({cv['hours']:.0f} h, ~{cv['clips_at_this_clip_length']:,} clips at this length): "
          f"{cv['shard_gb']} GB in {cv['shards_of_256_mb']} shards of 256 MB; sharding takes "
          f"{cv['sharding_hours_one_process']} h in one process; decoding one epoch takes "
          f"{cv['decode_core_hours_per_epoch']} core-hours\n")


if __name__ == "__main__":
    sys.exit(main())
