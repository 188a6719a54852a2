import csv

import pytest
import soundfile as sf
from conftest import SENTENCES, tone, write_audiofolder

from train_loop.core.errors import UserError
from train_loop.data.config import SourceConfig
from train_loop.data.sources import has_split, load_rows

pytestmark = pytest.mark.unit

CV_COLUMNS = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
              "age", "gender", "accents", "variant", "locale", "segment"]  # the columns of releases since 17.0


def write_common_voice(root, splits):
    """A Common Voice language folder as Mozilla ships it (cv-corpus-<version>/be/): {split}.tsv
    with today's columns, clips/*.mp3 at 48 kHz, and validated.tsv listing every split's clips."""
    (root / "clips").mkdir(parents=True)
    validated = []
    for split, texts in splits.items():
        with open(root / f"{split}.tsv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
            writer.writerow(CV_COLUMNS)
            for i, text in enumerate(texts):
                name = f"common_voice_be_{split}_{i}.mp3"
                sf.write(root / "clips" / name, tone(1.0, 48000), 48000, format="MP3")
                row = [f"speaker{i}", name, f"s{i}", text, "", 2, 0, "", "", "", "", "be", ""]
                writer.writerow(row)
                validated.append(row)
    with open(root / "validated.tsv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
        writer.writerow(CV_COLUMNS)
        writer.writerows(validated)
    for name in ("other.tsv", "invalidated.tsv"):
        (root / name).write_text("\t".join(CV_COLUMNS) + "\n", encoding="utf-8")
    return root


def test_audiofolder_rows(tmp_path):
    root = write_audiofolder(tmp_path, {"train": SENTENCES[:3]})
    rows = load_rows(SourceConfig(data_dir=str(root)), "train")
    assert rows.num_rows == 3
    assert rows.rows.column_names == ["id", "audio", "text", "speaker"]
    assert rows.rows[0]["text"] == SENTENCES[0]
    assert rows.rows[0]["audio"].endswith("train/train-000.wav")
    assert rows.rows[0]["speaker"] == ""  # no client_id column


@pytest.mark.unit
def test_the_speaker_column_is_read_when_present(tmp_path):
    root = write_audiofolder(tmp_path, {"train": SENTENCES[:4]}, speakers=2)
    rows = load_rows(SourceConfig(data_dir=str(root)), "train")
    assert rows.rows["speaker"] == ["speaker-0", "speaker-1", "speaker-0", "speaker-1"]
    renamed = load_rows(SourceConfig(data_dir=str(root), speaker_column_name="nobody"), "train")
    assert renamed.rows["speaker"] == [""] * 4


def test_common_voice_release_folder_loads_and_decodes_mp3(tmp_path, processor):
    from train_loop.data.config import DataConfig
    from train_loop.data.features import featurizer_for

    root = write_common_voice(tmp_path / "cv", {"train": SENTENCES[:2], "dev": SENTENCES[2:4]})
    source = SourceConfig(data_dir=str(root))
    rows = load_rows(source, "train")
    assert rows.num_rows == 2 and rows.rows[1]["text"] == SENTENCES[1]
    # Hugging Face calls Mozilla's dev split "validation": both names work.
    assert load_rows(source, "validation").num_rows == 2
    example = featurizer_for(processor, DataConfig(), "belarusian")(
        rows.rows[0]["id"], rows.rows[0]["audio"], rows.rows[0]["text"])
    assert example["skip_reason"] == ""
    assert example["duration"] == pytest.approx(1.0, abs=0.06)  # 48 kHz mp3 resampled to 16 kHz


def test_the_release_folder_instead_of_its_language_folder_names_the_fix(tmp_path):
    release = tmp_path / "cv-corpus-23.0-2025-09-05"
    write_common_voice(release / "be", {"train": SENTENCES[:1]})
    with pytest.raises(UserError, match=r"is a Common Voice release with the language folder\(s\) be; pass the "
                                        r"language folder, e.g. --data_dir .*cv-corpus-23.0-2025-09-05/be"):
        load_rows(SourceConfig(data_dir=str(release)), "train")
    assert load_rows(SourceConfig(data_dir=str(release / "be")), "validated").num_rows == 1


def test_plus_concatenates_every_row_of_every_split(tmp_path):
    root = write_audiofolder(tmp_path, {"train": SENTENCES, "validation": SENTENCES[:2]})
    rows = load_rows(SourceConfig(data_dir=str(root)), "train+validation")
    assert rows.num_rows == len(SENTENCES) + 2 == len(rows.rows)
    assert len(set(rows.rows["id"])) == rows.num_rows


def test_missing_folder_split_and_column_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match=r"--data_dir .*nowhere: no such folder"):
        load_rows(SourceConfig(data_dir=str(tmp_path / "nowhere")), "train")
    root = write_audiofolder(tmp_path / "d", {"train": SENTENCES[:2]})
    with pytest.raises(UserError, match=r"has no split 'test': expected test/metadata.csv"):
        load_rows(SourceConfig(data_dir=str(root)), "test")
    with pytest.raises(UserError, match=r"metadata.csv has no column 'transcript' \(columns: file_name, sentence\); "
                                        r"pass --text_column_name"):
        load_rows(SourceConfig(data_dir=str(root), text_column_name="transcript"), "train")
    assert has_split(SourceConfig(data_dir=str(root)), "train")
    assert not has_split(SourceConfig(data_dir=str(root)), "train+test")


def write_hub_style_parquet(root, splits):
    """A dataset as the Hub stores it: parquet shards with an Audio column holding bytes."""
    import io

    import datasets

    for split, texts in splits.items():
        audio = []
        for i in range(len(texts)):
            buffer = io.BytesIO()
            sf.write(buffer, tone(1.0, 48000), 48000, format="WAV")
            audio.append({"bytes": buffer.getvalue(), "path": f"{split}_{i}.wav"})
        table = datasets.Dataset.from_dict({"audio": audio, "sentence": texts, "client_id": ["c"] * len(texts)})
        table = table.cast_column("audio", datasets.Audio(sampling_rate=48000))
        (root / "data").mkdir(parents=True, exist_ok=True)
        table.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_dataset_path_reads_audio_bytes_without_torchcodec(tmp_path, processor, streaming):
    """--dataset_name goes through datasets.load_dataset; a local folder of parquet shards
    stands in for the Hub here. Audio stays undecoded bytes until our decoder reads it."""
    from train_loop.data.config import DataConfig
    from train_loop.data.features import featurizer_for

    root = write_hub_style_parquet(tmp_path / "hub", {"train": SENTENCES[:3], "test": SENTENCES[3:5]})
    source = SourceConfig(dataset_name=str(root))
    rows = load_rows(source, "train", streaming=streaming)
    first = next(iter(rows.rows))
    assert first["text"] == SENTENCES[0] and first["id"] == "train/0"
    assert isinstance(first["audio"]["bytes"], bytes)
    example = featurizer_for(processor, DataConfig(), "belarusian")(first["id"], first["audio"], first["text"])
    assert example["skip_reason"] == "" and example["duration"] == pytest.approx(1.0, abs=0.01)
    assert has_split(source, "test") and not has_split(source, "validation")
    if streaming:  # the resumable reader: every shard from any row on, or up to a limit
        from train_loop.data.streaming import RowShards

        shards = RowShards(rows.rows)
        texts = [row["text"] for shard in range(shards.num_shards) for row in shards.read(shard, 0)]
        assert texts == SENTENCES[:3]
        if shards.num_shards == 1:  # one parquet file per split here
            assert [row["text"] for row in shards.read(0, 1)] == texts[1:]
        limited = RowShards(rows.rows, limit=2)
        assert [row["text"] for row in limited.read(0, 0)] == SENTENCES[:2]
    with pytest.raises(UserError, match=r"has no column 'transcript' \(columns: audio, sentence, client_id\); "
                                        r"pass --text_column_name"):
        load_rows(SourceConfig(dataset_name=str(root), text_column_name="transcript"), "train", streaming)
