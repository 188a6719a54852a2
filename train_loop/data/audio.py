"""Audio decoding: any file libsndfile reads (wav, flac, ogg, mp3) to 16 kHz mono float32.

We decode with soundfile (its wheel bundles libsndfile with mp3 support) and resample with
soxr, instead of going through ``datasets.Audio``: datasets 5.x decodes through torchcodec,
which needs a matching torch build and FFmpeg shared libraries, and is slower for short clips.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

SAMPLING_RATE = 16_000
MAX_PEAK = 1e3  # 60 dB above full scale: no recording, only a file written wrongly


class AudioDecodeError(Exception):
    """The clip cannot be decoded; the message says which file and why."""


def audio_reference(audio: Any) -> str:
    """A printable name for an audio cell (a path, or a Hub row's file name)."""
    if isinstance(audio, dict):
        return audio.get("path") or "<in-memory audio>"
    return str(audio)


def decode_audio(audio: Any, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """Decode an audio cell to a mono float32 waveform at ``sampling_rate``.

    ``audio`` is a file path, or a ``{"bytes": ..., "path": ...}`` dict as ``datasets.Audio``
    stores it with ``decode=False`` (Hub datasets), or an already decoded
    ``{"array": ..., "sampling_rate": ...}`` dict.
    """
    import soundfile

    try:
        if isinstance(audio, dict) and audio.get("array") is not None:
            waveform = np.asarray(audio["array"], dtype=np.float32)
            source_rate = int(audio["sampling_rate"])
        else:
            if isinstance(audio, dict):
                source = io.BytesIO(audio["bytes"]) if audio.get("bytes") else audio.get("path")
            else:
                source = audio
            if source is None:
                raise AudioDecodeError("empty audio cell")
            if isinstance(source, str) and not os.path.isfile(source):
                raise AudioDecodeError("file not found")
            with decoder_messages() as messages, soundfile.SoundFile(source) as handle:
                _reject_truncated_wav(handle)
                source_rate = handle.samplerate
                declared = handle.frames
                waveform = handle.read(dtype="float32", always_2d=True)
            _reject_short_decode(len(waveform), declared, messages.text())
            waveform = waveform.mean(axis=1) if waveform.shape[1] > 1 else waveform[:, 0]
    except AudioDecodeError as err:
        raise AudioDecodeError(f"{audio_reference(audio)}: {err}") from None
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, OSError...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if reason.startswith("Error opening") and "': " in reason:
            reason = reason.split("': ", 1)[1]  # soundfile repeats the path we already print
        raise AudioDecodeError(f"{audio_reference(audio)}: {reason}") from None
    if waveform.ndim != 1:
        waveform = waveform.mean(axis=-1) if waveform.ndim == 2 else waveform.reshape(-1)
    if waveform.size == 0:
        raise AudioDecodeError(f"{audio_reference(audio)}: no samples")
    if not np.all(np.isfinite(waveform)):
        raise AudioDecodeError(f"{audio_reference(audio)}: contains NaN or infinite samples")
    peak = float(np.abs(waveform).max())
    if peak > MAX_PEAK:
        # Audio lives in [-1, 1] (a float file may clip a little above). Samples a million times
        # louder make log-mel features overflow to NaN: the clip would train on garbage.
        raise AudioDecodeError(f"{audio_reference(audio)}: samples reach {peak:.3g}, far outside audio's "
                               "[-1, 1] (a float file written without scaling?)")
    if source_rate != sampling_rate:
        import soxr

        waveform = soxr.resample(waveform, source_rate, sampling_rate, quality="HQ")
    return np.ascontiguousarray(waveform, dtype=np.float32)


def _reject_short_decode(decoded: int, declared: int, messages: str) -> None:
    """A compressed file cut short (mp3 with a length header, ...) decodes to its first part only
    while its transcript stays whole. More than 1% (and 2048 samples) missing is not the codec's
    padding: the clip is skipped, with what the decoder said about it."""
    missing = declared - decoded
    if declared > 0 and missing > max(2048, declared // 100):
        said = f"; the decoder said: {messages}" if messages else ""
        raise AudioDecodeError(f"decodes to {decoded} samples but its header declares {declared} (cut "
                               f"short or damaged){said}")


class decoder_messages:
    """Catch what the C decoders print on stderr while one file is read (mpg123's "Illegal
    Audio-MPEG-Header ..."), so it is attributed to that file, not left on the console unnamed.

    The process's stderr (fd 2) points at a private temporary file for the duration; Python's
    own sys.stderr is untouched. Reused for every file of this process (one per worker)."""

    _capture: dict[int, int] = {}  # pid -> fd of this process's capture file

    def __enter__(self):
        import tempfile

        pid = os.getpid()
        if pid not in self._capture:
            handle = tempfile.TemporaryFile()
            self._capture[pid] = os.dup(handle.fileno())
            handle.close()
        self._fd = self._capture[pid]
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._saved = os.dup(2)
        os.dup2(self._fd, 2)
        self._text = ""
        return self

    def __exit__(self, *exc) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        size = os.lseek(self._fd, 0, os.SEEK_END)
        raw = os.pread(self._fd, min(size, 4096), 0) if size else b""
        lines = [line.strip() for line in raw.decode("utf-8", "replace").splitlines() if line.strip()]
        self._text = " / ".join(dict.fromkeys(lines))[:300]  # distinct lines, in order, short

    def text(self) -> str:
        return self._text


def _reject_truncated_wav(handle) -> None:
    """A WAV cut short (interrupted copy or download) still decodes, to its first samples only,
    while its transcript stays whole: a silently wrong training example. libsndfile notices the
    header/size mismatch and says so in its diagnostics ("data : 32000 (should be 16)")."""
    if not handle.format.startswith("WAV"):
        return
    for line in handle.extra_info.splitlines():
        if line.startswith("data") and "(should be" in line:
            declared, actual = line.split(":", 1)[1].split("(should be")
            raise AudioDecodeError(f"truncated WAV: header declares {declared.strip()} bytes of "
                                   f"audio, the file holds {actual.strip(' )')}")
