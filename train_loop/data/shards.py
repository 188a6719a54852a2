"""Parquet shards of a split: a thousand hours as a few hundred files instead of 1.4 million mp3s.

``write_shards`` reads a split's rows (any source ``sources.py`` reads) and writes them in order to
``shard-00000.parquet`` ... of about ``shard_size_mb`` each, with the columns ``id``, ``audio``
({bytes, path}: the file's own bytes, not decoded, and its name), ``text``, ``speaker`` and
``duration``, and then ``index.json``: the split, the counts, hours and speakers, every shard's rows
and size, the rows left out (and why) and a fingerprint of the whole. A shard is written to a
temporary name and renamed when complete, and ``progress.json`` records the shards done; a run
killed at any moment continues with the next shard when started again.

``--data_dir`` reads such a folder (``sources.py``: one split, a folder of them one per split, or
a URL fsspec understands: ``https://``, ``s3://``, ``gs://``, ``file://``). Streamed, each Parquet
file is a shard of the stream: every process and DataLoader worker reads its own files, and a
resume seeks within one file (``streaming.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import UserError
from .sources import SHARD_FORMAT as FORMAT
from .sources import SHARD_INDEX as INDEX
from .sources import RowSource, content_hash

PROGRESS = "progress.json"
SKIP_MISSING_AUDIO = "audio file missing or unreadable"


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.parquet"


def _schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      ("text", pa.string()), ("speaker", pa.string()), ("duration", pa.float32())])


def _audio_bytes(audio: Any) -> tuple[bytes, str, float]:
    """(the file's bytes, its name, its duration in seconds) without decoding the samples."""
    import io

    import soundfile

    if isinstance(audio, dict):
        data, name = audio.get("bytes"), os.path.basename(audio.get("path") or "")
        if data is None:
            with open(audio["path"], "rb") as handle:
                data = handle.read()
    else:
        with open(audio, "rb") as handle:
            data = handle.read()
        name = os.path.basename(audio)
    info = soundfile.info(io.BytesIO(data))
    return data, name, float(info.frames) / float(info.samplerate)


@dataclass
class ShardWriteResult:
    index: dict
    resumed_at_row: int  # 0 for a fresh start


def write_shards(rows: RowSource, output_dir: str, shard_size_mb: float, show_progress: bool = True
                 ) -> ShardWriteResult:
    """Write ``rows`` to Parquet shards in ``output_dir`` (resumable; see the module docstring)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..core.console import progress_bar

    os.makedirs(output_dir, exist_ok=True)
    progress_path = os.path.join(output_dir, PROGRESS)
    progress = {"source_fingerprint": rows.fingerprint, "shard_size_mb": shard_size_mb, "shards": [],
                "skipped": {}}
    if os.path.exists(os.path.join(output_dir, INDEX)):
        index = json.load(open(os.path.join(output_dir, INDEX), encoding="utf-8"))
        if index.get("source_fingerprint") == rows.fingerprint:
            return ShardWriteResult(index, resumed_at_row=index["rows"] + sum(index["skipped"].values()))
        raise UserError(f"--output_dir {output_dir} already holds shards of other data (or of changed files); "
                        "choose a new folder or delete it")
    if os.path.exists(progress_path):
        saved = json.load(open(progress_path, encoding="utf-8"))
        if saved.get("source_fingerprint") != rows.fingerprint or saved.get("shard_size_mb") != shard_size_mb:
            raise UserError(f"--output_dir {output_dir} holds an unfinished sharding of other data or another "
                            "--shard_size_mb; choose a new folder or delete it")
        progress = saved
    for name in os.listdir(output_dir):  # a shard being written when the last run was killed
        if name.endswith(".tmp"):
            os.remove(os.path.join(output_dir, name))
    start = progress["shards"][-1]["end_row"] if progress["shards"] else 0
    table = rows.rows
    limit = shard_size_mb * 2**20
    batch: dict[str, list] = {key: [] for key in ("id", "audio", "text", "speaker", "duration")}
    batch_bytes, first_row = 0, start
    skipped = progress["skipped"]
    bar = progress_bar(len(table), f"sharding {rows.split}", show_progress, initial=start, unit="clip")

    def flush(end_row: int) -> None:
        nonlocal batch, batch_bytes, first_row
        number = len(progress["shards"])
        name = shard_name(number)
        part = pa.Table.from_pydict(batch, schema=_schema())
        pq.write_table(part, os.path.join(output_dir, name + ".tmp"), row_group_size=256)
        os.replace(os.path.join(output_dir, name + ".tmp"), os.path.join(output_dir, name))
        progress["shards"].append({"file": name, "rows": len(batch["id"]), "start_row": first_row, "end_row": end_row,
                                   "bytes": os.path.getsize(os.path.join(output_dir, name)),
                                   "seconds": round(float(np.sum(batch["duration"], dtype=np.float64)), 3),
                                   "speakers": sorted(set(batch["speaker"]) - {""})})
        _write_json(progress_path, progress)  # after the rename: a listed shard is complete
        batch = {key: [] for key in batch}
        batch_bytes, first_row = 0, end_row

    try:
        for position in range(start, len(table)):
            row = table[position]
            try:
                data, name, seconds = _audio_bytes(row["audio"])
            except Exception:
                skipped[SKIP_MISSING_AUDIO] = skipped.get(SKIP_MISSING_AUDIO, 0) + 1
                bar.update(1)
                if not batch["id"]:
                    first_row = position + 1
                continue
            batch["id"].append(row["id"])
            batch["audio"].append({"bytes": data, "path": name})
            batch["text"].append(row["text"])
            batch["speaker"].append(row["speaker"])
            batch["duration"].append(seconds)
            batch_bytes += len(data)
            bar.update(1)
            if batch_bytes >= limit:
                flush(position + 1)
        if batch["id"]:
            flush(len(table))
    finally:
        bar.close()
    for reason, lines in rows.dropped.items():  # manifest rows left out before any audio was read
        skipped[reason] = len(lines)
    index = _index(rows, progress, skipped)
    _write_json(os.path.join(output_dir, INDEX), index)
    os.remove(progress_path)
    return ShardWriteResult(index, resumed_at_row=start)


def _index(rows: RowSource, progress: dict, skipped: dict) -> dict:
    shards = progress["shards"]
    speakers = set().union(*(set(shard["speakers"]) for shard in shards)) if shards else set()
    seconds = sum(shard["seconds"] for shard in shards)
    return {
        "format": FORMAT, "split": rows.split, "source": rows.name, "source_fingerprint": rows.fingerprint,
        "rows": sum(shard["rows"] for shard in shards), "hours": round(seconds / 3600, 4),
        "speakers": len(speakers), "bytes": sum(shard["bytes"] for shard in shards),
        "shards": [{key: shard[key] for key in ("file", "rows", "bytes", "seconds")} for shard in shards],
        "skipped": skipped,
        "fingerprint": content_hash(FORMAT, rows.fingerprint, *(shard["bytes"] for shard in shards)),
    }


def _write_json(path: str, value: dict) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1)
        handle.write("\n")
    os.replace(path + ".tmp", path)
