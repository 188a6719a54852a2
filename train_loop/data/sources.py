"""Where rows come from: a Hub dataset, an audiofolder, a Common Voice release folder, or a folder
(or URL) of Parquet shards written by ``python -m train_loop.shard`` (``shards.py``).

Every source becomes the same table of rows with four columns: ``id`` (unique, stable),
``audio`` (a file path, or a ``{"bytes", "path"}`` dict for Hub audio), ``text`` (the raw
transcript) and ``speaker`` (``--speaker_column_name``'s value, "" where the data has no such
column: packing and long-form evaluation group clips by it). Audio is not decoded here;
``features.Featurizer`` does that.

Several splits joined with ``+`` (``train+validation``) are concatenated: every row of every
split is used (interleaving would stop at the end of the shortest split and drop the rest of
the longer one).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import datasets

from ..core.errors import UserError
from .config import SourceConfig

COLUMNS = ("id", "audio", "text", "speaker")
SHARD_INDEX = "index.json"
SHARD_FORMAT = "whisper-train-loop-shards-v1"


@dataclass
class RowSource:
    """The rows of one (possibly '+'-joined) split and a fingerprint of their content."""

    name: str  # for messages: "data/train/metadata.csv", "mozilla-foundation/...:train"
    split: str
    rows: datasets.Dataset | datasets.IterableDataset
    fingerprint: str
    num_rows: int | None  # known for local folders and prepared Hub splits; None when unknown
    # Manifest rows left out before any audio is read: reason -> ["file line N: ...", ...]
    dropped: dict[str, list[str]] = field(default_factory=dict)


def split_names(split: str) -> list[str]:
    names = [part.strip() for part in split.split("+")]
    if not split or any(not name for name in names):
        raise UserError(f"split name {split!r} is empty; give e.g. 'train' or 'train+validation'")
    return names


def load_rows(source: SourceConfig, split: str, streaming: bool = False) -> RowSource:
    """Rows of ``split`` ('+' concatenates) from the configured source."""
    parts = [_load_one(source, name, streaming) for name in split_names(split)]
    if len(parts) == 1:
        return parts[0]
    rows = datasets.concatenate_datasets([part.rows for part in parts])
    sizes = [part.num_rows for part in parts]
    dropped: dict[str, list[str]] = {}
    for part in parts:
        for reason, lines in part.dropped.items():
            dropped.setdefault(reason, []).extend(lines)
    return RowSource(
        name=" + ".join(part.name for part in parts), split=split, rows=rows,
        fingerprint=content_hash(*(part.fingerprint for part in parts)),
        num_rows=None if None in sizes else sum(sizes), dropped=dropped)


def has_split(source: SourceConfig, split: str) -> bool:
    """Whether every part of ``split`` exists (for optional splits such as the test split)."""
    return all(SOURCES[source.kind()].has_split(source, name) for name in split_names(split))


def _load_one(source: SourceConfig, split: str, streaming: bool) -> RowSource:
    return SOURCES[source.kind()].load(source, split, streaming)


# --------------------------------------------------------------------------------------------
# Local folders
# --------------------------------------------------------------------------------------------


def _local_layout(data_dir: str, split: str) -> tuple[str, str] | None:
    """('audiofolder' | 'common_voice', manifest path) for a split, or None if absent."""
    audiofolder = os.path.join(data_dir, split, "metadata.csv")
    if os.path.isfile(audiofolder):
        return "audiofolder", audiofolder
    for name in ([split, "dev"] if split == "validation" else [split]):
        tsv = os.path.join(data_dir, f"{name}.tsv")
        if os.path.isfile(tsv):
            return "common_voice", tsv
    return None


def _local_has_split(source: SourceConfig, split: str) -> bool:
    if is_url(source.data_dir) or os.path.isfile(os.path.join(source.data_dir, SHARD_INDEX)):
        try:
            return shard_folder(source.data_dir, split) is not None
        except UserError:
            return False
    return _local_layout(source.data_dir, split) is not None or shard_folder(source.data_dir, split) is not None


def _load_local(source: SourceConfig, split: str, streaming: bool) -> RowSource:
    data_dir = source.data_dir
    shards = shard_folder(data_dir, split)  # python -m train_loop.shard's output (a folder or a URL)
    if shards is not None:
        return load_shards(*shards, source.cache_dir, streaming)
    if is_url(data_dir):
        raise UserError(f"--data_dir {data_dir}: no shard index (index.json) of split '{split}' there or in "
                        f"{data_dir.rstrip('/')}/{split}; a URL must point at python -m train_loop.shard's output")
    if not os.path.isdir(data_dir):
        what = "a file, not a folder" if os.path.exists(data_dir) else "no such folder"
        raise UserError(f"--data_dir {data_dir}: {what}")
    layout = _local_layout(data_dir, split)
    if layout is None:
        languages = sorted(name for name in os.listdir(data_dir)
                           if os.path.isfile(os.path.join(data_dir, name, "train.tsv")))
        if languages:  # the release's top folder, cv-corpus-<version>/, instead of its language folder
            raise UserError(
                f"--data_dir {data_dir} is a Common Voice release with the language folder(s) "
                f"{', '.join(languages)}; pass the language folder, e.g. --data_dir "
                f"{os.path.join(data_dir, languages[0])}")
        raise UserError(
            f"--data_dir {data_dir} has no split '{split}': expected {split}/metadata.csv "
            f"(audiofolder) or {split}.tsv with clips/ (Common Voice); fix the split flag "
            f"or the folder")
    kind, manifest = layout
    if kind == "audiofolder":  # {split}/metadata.csv, audio beside it
        delimiter, audio_column, audio_root = ",", "file_name", os.path.dirname(manifest)
    else:  # Common Voice: {split}.tsv, audio in clips/
        delimiter, audio_column, audio_root = "\t", "path", os.path.join(data_dir, "clips")
        if not os.path.isdir(audio_root):
            raise UserError(f"{manifest} is a Common Voice manifest but {audio_root} does not exist; "
                            "--data_dir must be the release folder holding clips/ and the .tsv files")
    rows = _read_manifest(manifest, delimiter, audio_column, source.text_column_name)
    if not rows.kept:
        raise UserError(f"{manifest} lists no clips")
    ids = [f"{split}/{row[audio_column]}" for row in rows.kept]
    audio = [os.path.join(audio_root, row[audio_column]) for row in rows.kept]
    text = [row[source.text_column_name] or "" for row in rows.kept]
    speaker = [row.get(source.speaker_column_name) or "" for row in rows.kept]
    table = datasets.Dataset.from_dict({"id": ids, "audio": audio, "text": text, "speaker": speaker})
    fingerprint = content_hash(os.path.abspath(manifest), _file_digest(manifest), _stat_digest(audio))
    # Streaming a local folder keeps this table of references in memory (it is small) and
    # decodes the audio in DataLoader workers; the table lets a resume seek to any row.
    return RowSource(name=manifest, split=split, rows=table, fingerprint=fingerprint,
                     num_rows=len(ids), dropped=rows.dropped)


MALFORMED_ROW = "malformed manifest row"
DUPLICATE_ROW = "duplicate manifest row"
OUTSIDE_ROW = "audio path outside the split's folder"


@dataclass
class ManifestRows:
    kept: list[dict[str, str]]
    dropped: dict[str, list[str]]  # reason -> ["metadata.csv line 7: ...", ...]


def _read_manifest(path: str, delimiter: str, audio_column: str, text_column: str) -> ManifestRows:
    """The rows of a metadata.csv / Common Voice TSV that users may have edited by hand.

    UTF-8 with or without a BOM; another encoding is an error naming the line and the fix. A row
    with more or fewer fields than the header is left out and counted (file and line); so is a
    second row for an audio file with the same transcript, while a second row that transcribes
    it differently is an error (which transcript is right cannot be guessed)."""
    columns, records = _read_table(path, delimiter)
    _require_columns(path, columns, {audio_column: "", text_column: "--text_column_name"})
    name = os.path.basename(path)
    kept: list[dict[str, str]] = []
    dropped: dict[str, list[str]] = {}
    first_line: dict[str, tuple[int, str]] = {}
    for line, row in records:
        fields = sum(value is not None for key, value in row.items() if key is not None) + len(row.get(None) or [])
        if fields != len(columns):
            dropped.setdefault(MALFORMED_ROW, []).append(
                f"{name} line {line}: {fields} fields, the header has {len(columns)}")
            continue
        clip = os.path.normpath(row[audio_column] or "")
        if os.path.isabs(clip) or clip == ".." or clip.startswith(".." + os.sep):
            # ../validation/x.wav or /data/test/x.wav: a clip of another split (a leak) or none of this data.
            dropped.setdefault(OUTSIDE_ROW, []).append(f"{name} line {line}: {row[audio_column]}")
            continue
        row[audio_column] = clip  # ./x.wav and x.wav are one file: the duplicate check below sees it
        if clip in first_line:
            earlier, earlier_text = first_line[clip]
            if earlier_text != row[text_column]:
                raise UserError(f"{path}: line {line} lists {clip} again (first on line {earlier}) with "
                                "another transcript; keep the one row that is right")
            dropped.setdefault(DUPLICATE_ROW, []).append(f"{name} line {line}: {clip} repeats line {earlier}")
            continue
        first_line[clip] = (line, row[text_column])
        kept.append(row)
    return ManifestRows(kept, dropped)


def _read_table(path: str, delimiter: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(line number, row)]) of a delimited UTF-8 file (a BOM is accepted)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:  # unreadable is not missing: say which, and why
        raise UserError(f"{path}: cannot be read ({err.strerror or err}); check its permissions") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 byte-order mark (Excel's "Unicode text")
        raise UserError(f"{path} is UTF-16 text; save it as UTF-8, e.g. `iconv -f UTF-16 -t UTF-8 {path} > fixed "
                        f"&& mv fixed {path}`")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise UserError(
            f"{path} is not UTF-8 text (line {line}, byte 0x{data[err.start]:02x}). Save it as UTF-8, "
            f"e.g. `iconv -f CP1251 -t UTF-8 {path} > fixed && mv fixed {path}` if it was written "
            "in Windows' Cyrillic encoding") from None
    # Common Voice TSVs are not quoted: a sentence may contain a lone quote character.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    records = []
    for row in reader:
        records.append((reader.line_num, row))
    return list(reader.fieldnames or []), records


def _require_columns(path: str, found: list[str], needed: dict[str, str]) -> None:
    for column, flag in needed.items():
        if column not in found:
            fix = f"pass {flag} with one of: {', '.join(found)}" if flag else "add that column"
            raise UserError(f"{path} has no column '{column}' (columns: {', '.join(found) or 'none'}); {fix}")


# --------------------------------------------------------------------------------------------
# Hugging Face Hub
# --------------------------------------------------------------------------------------------


def _hub_has_split(source: SourceConfig, split: str) -> bool:
    try:
        names = datasets.get_dataset_split_names(source.dataset_name, source.dataset_config_name,
                                                 revision=source.dataset_revision)
    except Exception:
        return True  # cannot tell without loading; loading will report a real problem
    return split in names


def _load_hub(source: SourceConfig, split: str, streaming: bool) -> RowSource:
    name = f"{source.dataset_name}" + (f"/{source.dataset_config_name}" if source.dataset_config_name else "")
    try:
        table = datasets.load_dataset(
            source.dataset_name, source.dataset_config_name, split=split, streaming=streaming,
            revision=source.dataset_revision, cache_dir=source.cache_dir)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"--dataset_name {name} split '{split}' could not be loaded ({reason}). Check the "
            f"name, --dataset_config_name and access (huggingface-cli login); offline, use "
            f"--data_dir with a local copy") from None
    columns = list(table.features or {}) if table.features is not None else None
    if columns is not None:
        for column, flag in ((source.audio_column_name, "--audio_column_name"),
                             (source.text_column_name, "--text_column_name")):
            if column not in columns:
                raise UserError(f"{name} split '{split}' has no column '{column}' "
                                f"(columns: {', '.join(columns)}); pass {flag}")
    table = table.cast_column(source.audio_column_name, datasets.Audio(decode=False))

    def to_row(example: dict[str, Any], index: int) -> dict[str, Any]:
        audio = example[source.audio_column_name]
        return {"id": f"{split}/{index}", "audio": audio, "text": example[source.text_column_name] or "",
                "speaker": str(example.get(source.speaker_column_name) or "")}

    keep = [source.audio_column_name, source.text_column_name]
    if columns is not None and source.speaker_column_name in columns:
        keep.append(source.speaker_column_name)
    table = table.select_columns(keep).map(to_row, with_indices=True, remove_columns=keep)
    fingerprint = content_hash(name, split, source.dataset_revision or "", getattr(table, "_fingerprint", ""))
    num_rows = len(table) if isinstance(table, datasets.Dataset) else _known_hub_size(table, split)
    return RowSource(name=f"{name}:{split}", split=split, rows=table, fingerprint=fingerprint,
                     num_rows=num_rows)


def _known_hub_size(table: datasets.IterableDataset, split: str) -> int | None:
    splits = getattr(table.info, "splits", None) or {}
    info = splits.get(split) if hasattr(splits, "get") else None
    return int(info.num_examples) if info and info.num_examples else None


# --------------------------------------------------------------------------------------------
# Shard folders (written by shards.py): one split as Parquet files and an index
# --------------------------------------------------------------------------------------------


def is_url(path: str) -> bool:
    return "://" in path


def _read_index(location: str) -> dict | None:
    """A shard folder's index (local or URL), or None when there is none."""
    path = f"{location.rstrip('/')}/{SHARD_INDEX}"
    if is_url(location):
        import fsspec

        try:
            with fsspec.open(path, "r", encoding="utf-8") as handle:
                index = json.load(handle)
        except FileNotFoundError:
            return None
        except Exception as err:
            raise UserError(f"--data_dir {location}: {SHARD_INDEX} could not be read ({str(err).strip() or type(err).__name__})"
                            "; check the URL and your access") from None
    elif os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            index = json.load(handle)
    else:
        return None
    return index if index.get("format") == SHARD_FORMAT else None


def shard_folder(location: str, split: str) -> tuple[str, dict] | None:
    """(folder, index) of ``split``'s shards: ``location`` itself when its index is of that split,
    or ``location/split``; None when neither holds shards."""
    own = _read_index(location)
    if own is not None and own["split"] == split:
        return location, own
    nested = f"{location.rstrip('/')}/{split}"
    inner = _read_index(nested)
    if inner is not None:
        return nested, inner
    if own is not None:
        raise UserError(f"--data_dir {location} holds the shards of split '{own['split']}', not '{split}'; shard "
                        f"'{split}' too (python -m train_loop.shard ... --split {split}) into {location}/{split}, "
                        "or fix the split flag")
    return None


def load_shards(folder: str, index: dict, cache_dir: str | None, streaming: bool) -> RowSource:
    files = [f"{folder.rstrip('/')}/{shard['file']}" for shard in index["shards"]]
    if not files:
        raise UserError(f"--data_dir {folder}: the shard index lists no shards")
    if not is_url(folder):
        missing = [path for path in files if not os.path.isfile(path)]
        if missing:
            raise UserError(f"--data_dir {folder}: {len(missing)} shard file(s) of {SHARD_INDEX} are missing, e.g. "
                            f"{missing[0]}; copy the whole folder")
    table = datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming,
                                  cache_dir=cache_dir)
    table = table.select_columns(["id", "audio", "text", "speaker"])  # duration is in the index, not needed here
    return RowSource(name=f"{folder} ({len(files)} shards)", split=index["split"], rows=table,
                     fingerprint=index["fingerprint"], num_rows=index["rows"],
                     dropped={reason: [""] * count for reason, count in index.get("skipped", {}).items()})


# --------------------------------------------------------------------------------------------
# Fingerprints: a prepared cache is reused only for exactly the same rows and files.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    load: Callable[[SourceConfig, str, bool], RowSource]  # (config, one split, streaming) -> rows
    has_split: Callable[[SourceConfig, str], bool]


# One entry per data-source flag of SourceConfig (its SOURCE_FLAGS): adding a source is a flag
# there and a loader here.
SOURCES: dict[str, Source] = {
    "data_dir": Source(_load_local, _local_has_split),
    "dataset_name": Source(_load_hub, _hub_has_split),
}


def content_hash(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(str(part).encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stat_digest(paths: list[str]) -> str:
    """Size and modification time of every audio file: a changed clip invalidates the cache."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            info = os.stat(path)
            digest.update(f"{path}:{info.st_size}:{info.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}:missing\n".encode())
    return digest.hexdigest()
