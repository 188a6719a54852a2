"""Write a split to Parquet shards with an index, for training on a thousand hours.

    python -m train_loop.shard --data_dir cv-corpus-25.0/be --split validated --output_dir shards/be/validated
    python -m train_loop.shard --data_dir cv-corpus-25.0/be --split validation --output_dir shards/be/validation
    accelerate launch train_loop/main.py --data_dir shards/be --train_split_name validated --streaming ...

Each row keeps its audio file's bytes as they are (mp3 stays mp3), its transcript, speaker, duration
and id; ``index.json`` holds the counts, hours, speakers, every shard and the rows left out. Killed
at any moment, the same command continues with the next shard. ``--data_dir`` of a training run
reads the folder, a folder of such folders (one per split), or the same layout at a URL.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from .core.console import run_tool
from .core.errors import UserError
from .core.flags import flag, parse_sections, positive
from .data.config import SourceConfig


@dataclass
class ShardConfig:
    """The split to shard and where the shards go."""

    _argument_group_name = "What to shard and where (shard)"

    split: str = flag("validated", "The split to write ('validation' reads dev.tsv, as in training).")
    output_dir: str | None = flag(None, "Folder for the shards and index.json (e.g. shards/be/validated). Required.")
    shard_size_mb: float = flag(256.0, "Audio bytes per shard (a shard is a unit of reading: a few hundred MB lets "
                                       "many workers each read their own).", check=positive())


def main(argv: list[str] | None = None) -> int:
    def body():
        sections = parse_sections({"shard": ShardConfig, "source": SourceConfig}, argv, prog="train_loop.shard",
                                  description=__doc__.split("\n\n")[0])
        return shard(sections["shard"], sections["source"])

    return run_tool(body)


def shard(options: ShardConfig, source: SourceConfig) -> int:
    from .data.shards import write_shards
    from .data.sources import load_rows

    if not options.output_dir:
        raise UserError("--output_dir is required: the folder the shards and index.json go to")
    source.kind()
    rows = load_rows(source, options.split)
    started = time.perf_counter()
    result = write_shards(rows, options.output_dir, options.shard_size_mb)
    index = result.index
    seconds = time.perf_counter() - started
    if result.resumed_at_row:
        print(f"continued an unfinished sharding at row {result.resumed_at_row:,}", flush=True)
    skipped = ", ".join(f"{count:,} {reason}" for reason, count in index["skipped"].items() if count) or "none"
    print(f"{options.output_dir}: {index['rows']:,} clips, {index['hours']:.2f} h, {index['speakers']:,} speakers in "
          f"{len(index['shards'])} shards, {index['bytes'] / 2**20:,.1f} MB (skipped: {skipped}) in {seconds:.1f} s",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
