"""The data sections of the flags: where the speech comes from, which clips are used, and how
they are prepared and loaded. Shared by training and the tools (evaluate, stats, export's check).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..core.errors import UserError
from ..core.flags import Check, at_least, between, flag

# Where a clip's speech starts and ends (data/speech_bounds.py)
SPEECH_BOUNDS = ("silero", "file")

# The flags that name a data source (train_loop.sources.SOURCES has a loader for each).
SOURCE_FLAGS = ("dataset_name", "data_dir")


@dataclass
class SourceConfig:
    """Where the speech comes from."""
    _argument_group_name = "Where the speech comes from (source)"

    dataset_name: str | None = flag(
        None, "Hugging Face Hub dataset with an audio and a transcript column (USER/NAME). Give "
        "this or --data_dir. (Common Voice left the Hub: download a release and use --data_dir.)")
    dataset_config_name: str | None = flag(None, "Hub dataset configuration, e.g. 'be'.")
    dataset_revision: str | None = flag(None, "Hub dataset revision (branch, tag or commit).")
    data_dir: str | None = flag(
        None, "Local dataset folder: a Common Voice release's language folder as Mozilla ships "
        "it (cv-corpus-<version>/be/: {split}.tsv and clips/; 'validation' reads dev.tsv) or an "
        "audiofolder ({split}/metadata.csv with file_name and the text column).")
    audio_column_name: str = flag("audio", "Column holding the audio (Hub datasets).")
    text_column_name: str = flag("sentence", "Column holding the transcript.")
    speaker_column_name: str = flag(
        "client_id", "Column naming each clip's speaker (Common Voice's client_id). Packing puts one "
        "speaker's clips together and long-form evaluation builds one recording per speaker; data "
        "without this column is used in any order.")
    streaming: bool = flag(
        False, "Decode audio on the fly in DataLoader workers instead of preparing log-mel "
        "features once and caching them on disk.")
    cache_dir: str | None = flag(
        None, "Where prepared features and Hub downloads are cached "
        "(default: $XDG_CACHE_HOME/whisper-train-loop or ~/.cache/whisper-train-loop).")
    preprocessing_num_workers: int = flag(
        1, "Processes that decode audio and compute features when preparing a dataset.", check=at_least(1))

    def kind(self) -> str:
        """The one data source given (a key of SOURCE_FLAGS); the only place this is checked."""
        given = [name for name in SOURCE_FLAGS if getattr(self, name)]
        if len(given) != 1:
            raise UserError("give exactly one data source: "
                            + " or ".join(f"--{name}" for name in SOURCE_FLAGS)
                            + (f" (got {' and '.join('--' + name for name in given)})" if given else ""))
        return given[0]


@dataclass
class FilterConfig:
    """Which clips are used; every dropped clip is counted and reported."""
    _argument_group_name = "Which clips are used; every dropped clip is counted and reported (filters)"

    min_duration_in_seconds: float = flag(0.0, "Drop training clips shorter than this.", check=at_least(0))
    max_duration_in_seconds: float = flag(
        30.0, "Drop training clips longer than this (at most the model's 30 s window: "
        "longer audio would be cut while its transcript stays whole).", check=Check(
            lambda seconds: 0 < seconds <= 30, "must be above 0 and cannot exceed 30: Whisper sees a 30 s window, longer "
            "audio would be cut while its transcript stays whole"))
    max_label_length: int = flag(
        448, "Drop clips whose tokenized transcript (with the language/task prefix) is longer "
        "than this; Whisper's decoder holds 448 positions.", check=at_least(1))


@dataclass
class DataConfig:
    """Splits, text preparation and data loading."""
    _argument_group_name = "Splits, text preparation and data loading (data)"

    train_split_name: str = flag("train", "Training split; join several with '+' to concatenate.")
    eval_split_name: str = flag(
        "validation", "Split(s) evaluated during training: a comma separates sets, each with its "
        "own WER (eval_<set>_wer; eval_wer is the first set's), '+' concatenates splits into one "
        "set. 'none' disables.")
    test_split_name: str = flag(
        "test", "Split evaluated once at the end with the final model. 'none' disables; a "
        "missing default split is skipped with a note.")
    max_train_samples: int | None = flag(None, "Use only the first N training clips (debugging).",
                                         check=at_least(1))
    max_eval_samples: int | None = flag(
        None, "Evaluate on the first N clips of the eval split during training (a fast, fixed "
        "subset); the final test evaluation always uses the whole test split.", check=at_least(1))
    allow_eval_overlap: bool = flag(
        False, "Keep training clips that share a speaker (--speaker_column_name), a normalized sentence or "
        "a file with an evaluation, test or guard split, and only count them. Default: leave them out, "
        "counted in the skip report ('speaker in dev/test', 'sentence in dev/test', 'clip in dev/test'), "
        "so --train_split_name validated (all of Common Voice) does not leak into dev/test.")
    shuffle_buffer_size: int = flag(
        500, "Streaming only: rows held in the shuffle buffer (reshuffled every epoch).", check=at_least(1))
    prepare_only: bool = flag(
        False, "Prepare the features of every split into --cache_dir and exit (e.g. once on shared "
        "storage before a multi-node run, with many --preprocessing_num_workers).")
    group_by_length: bool = flag(
        False, "Prepared data: batch clips of similar transcript length together (groups of 50 "
        "batches sorted by label length, batches shuffled), so the decoder pads less. The order "
        "stays a pure function of --seed and the epoch, and resumes exactly.")
    dataloader_num_workers: int | None = flag(
        None, "DataLoader worker processes per training process (they decode when streaming and "
        "read features otherwise). Default: 0 for prepared data without a GPU (reading cached "
        "features is cheap; a worker would only take CPU cores from training), else "
        "min(4, CPU cores per process).", check=at_least(0))
    do_lower_case: bool = flag(False, "Lower-case training transcripts (default: keep raw text).")
    do_remove_punctuation: bool = flag(
        False, "Normalize training transcripts with the evaluation normalizer (lower case, no "
        "punctuation). Default: train on the raw, cased, punctuated text.")
    prepared_feature_dtype: str = flag(
        "float16", "Storage type of prepared log-mel features (float16 halves the disk use; "
        "its rounding is far below bf16/fp16 training noise).", ("float16", "float32"))


@dataclass
class PackingConfig:
    """Packed 30 s windows with timestamps, the previous text and windows without speech."""
    _argument_group_name = "Packed windows: how Whisper was trained (packing)"

    pack_to_window: bool = flag(
        False, "Train on the model's whole input window (30 s) filled with consecutive clips of one "
        "speaker (short random gaps, speech bounds from a voice-activity detector) instead of one "
        "clip padded with silence. Needs prepared data (not --streaming).")
    timestamp_probability: float = flag(
        0.5, "Packed: share of windows labelled with segment timestamps (<|t|> text<|t|>), as Whisper "
        "was trained; the others get <|notimestamps|>.", check=between(0, 1))
    prev_text_probability: float = flag(
        0.2, "Packed: share of windows conditioned on the previous window's text (<|startofprev|> + "
        "at most --max_label_length/2 tokens, no loss on them).", check=between(0, 1))
    no_speech_probability: float = flag(
        0.05, "Packed: share of windows without speech (the data's own silences and generated "
        "noise), labelled with Whisper's no-speech token.", check=between(0, 0.9))
    speech_bounds: str = flag(
        "silero", "Packed and long-form evaluation: where each clip's speech starts and ends: 'silero' "
        "(Silero's voice-activity detector) or 'file' (the whole file is speech: trimmed data).",
        SPEECH_BOUNDS)


@dataclass
class AugmentConfig:
    """Audio augmentation of the training examples; every draw depends only on (--seed, epoch,
    example id), so a resumed run sees the same audio."""
    _argument_group_name = "Audio augmentation, the same after a resume (augment)"

    speed_perturbation: str | None = flag(
        None, "Speed factors: two numbers are a range (0.9,1.1: any factor between), three or more a list to pick "
        "from (0.9,1.0,1.1, as Kaldi). Tempo and pitch change together. Needs audio in the loader's workers: "
        "--pack_to_window or --streaming.")
    noise_dir: str | None = flag(
        None, "Folder of noise recordings (wav, flac, mp3, ogg; searched recursively) mixed into training examples.")
    noise_snr_db: str = flag("5,30", "Signal-to-noise ratio of --noise_dir's noise in dB: a range (5,30) or a list.")
    noise_probability: float = flag(0.5, "Share of the training examples that get --noise_dir's noise.",
                                    check=between(0, 1))
    gain_db: str | None = flag(None, "Gain in dB: a range (-6,6) or a list.")

    def active(self) -> bool:
        return bool(self.speed_perturbation or self.noise_dir or self.gain_db)


@dataclass(frozen=True)
class MixSource:
    """One more training source: its folder or Hub id, split, language and share of the examples."""

    source: SourceConfig
    name: str  # as given: the key of mix_clips
    split: str
    language: str
    weight: float


@dataclass
class MixConfig:
    """More training sources, each a fixed share of the examples, transcribed in its own language."""
    _argument_group_name = "Mixing in other sources: replay against forgetting, a related language (mix)"

    mix_data_dir: str | None = flag(
        None, "Local dataset folders to mix into training, comma-separated (audiofolder, Common Voice "
        "release or shard folder, as --data_dir).")
    mix_dataset_name: str | None = flag(
        None, "Hugging Face Hub datasets to mix into training, comma-separated (listed after --mix_data_dir's "
        "folders).")
    mix_split_name: str = flag("train", "Split of each mixed source: one for all, or one per source (comma-separated).")
    mix_language: str | None = flag(
        None, "Language of each mixed source (uk, ru, en, ...): one for all, or one per source; its examples are "
        "labelled with that language's token.")
    mix_weight: str | None = flag(
        None, "Share of the training examples drawn from each mixed source, e.g. 0.1,0.05 (the main source gets "
        "the rest). Drawn in a fixed order from --seed: the same after a resume and on any number of processes.")

    def sources(self, main: SourceConfig) -> list[MixSource]:
        """The mixed sources, checked; [] without --mix_data_dir/--mix_dataset_name."""
        folders = _items(self.mix_data_dir)
        hub = _items(self.mix_dataset_name)
        names = folders + hub
        if not names:
            if self.mix_language or self.mix_weight or self.mix_split_name != "train":
                raise UserError("--mix_split_name, --mix_language and --mix_weight take effect with --mix_data_dir "
                                "or --mix_dataset_name; add the source(s) to mix in")
            return []
        splits = _per_source("--mix_split_name", _items(self.mix_split_name), len(names))
        languages = _per_source("--mix_language", _items(self.mix_language), len(names))
        weights_given = _per_source("--mix_weight", _items(self.mix_weight), len(names), one_for_all=False)
        weights = []
        for text in weights_given:
            try:
                weights.append(float(text))
            except ValueError:
                raise UserError(f"--mix_weight {self.mix_weight}: {text!r} is not a number; give shares such as "
                                "0.1,0.05") from None
        if any(not 0 < w < 1 for w in weights) or sum(weights) >= 1:
            raise UserError(f"--mix_weight {self.mix_weight}: each share must be above 0 and together below 1 (the "
                            "main source gets the rest)")
        mixed = []
        for number, name in enumerate(names):
            kind = {"data_dir": name} if number < len(folders) else {"dataset_name": name}
            source = SourceConfig(**kind, text_column_name=main.text_column_name,
                                  speaker_column_name=main.speaker_column_name, cache_dir=main.cache_dir,
                                  preprocessing_num_workers=main.preprocessing_num_workers)
            mixed.append(MixSource(source, name, splits[number], languages[number].strip("<|>"), weights[number]))
        return mixed


def _items(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _per_source(flag_name: str, values: list[str], count: int, one_for_all: bool = True) -> list[str]:
    if not values:
        raise UserError(f"{flag_name} is needed for the mixed source(s): give one value per source ({count})")
    if len(values) == 1 and one_for_all:
        return values * count
    if len(values) != count:
        raise UserError(f"{flag_name} {','.join(values)}: {len(values)} values for {count} mixed source(s); give "
                        f"one per source{' or one for all' if one_for_all else ''}")
    return values


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "whisper-train-loop")
