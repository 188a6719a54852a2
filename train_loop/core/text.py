"""Text normalization for WER/CER (and, on request, for training labels).

Whisper's ``BasicTextNormalizer`` turns every punctuation mark into a space. For Belarusian that
splits words at the apostrophe (``раз'яднаць`` becomes ``раз яднаць``: two words, so one
substitution becomes two errors), and it treats the apostrophe variants people type
(’ ‘ ʼ ` ´) differently from each other. ``BelarusianTextNormalizer`` fixes both; the basic
normalizer stays available for numbers comparable with the Whisper leaderboards.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

# Characters used as an apostrophe in Belarusian text (Common Voice mixes them).
APOSTROPHE_VARIANTS = "\u2019\u2018\u02bc`\u00b4\u2032\uff07"  # ’ ‘ ʼ ` ´ ′ ＇
_APOSTROPHES = str.maketrans({ch: "'" for ch in APOSTROPHE_VARIANTS})
# An apostrophe is part of a word only between two letters (сям'я); elsewhere it is a quote.
_WORD_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")
_PLACEHOLDER = "\u0000"
_SPACES = re.compile(r"\s+")


def _is_punctuation_or_symbol(char: str) -> bool:
    # Marks (M*), punctuation (P*) and symbols (S*) become spaces, as in Whisper's normalizer.
    return unicodedata.category(char)[0] in "MPS"


class BelarusianTextNormalizer:
    """Lower-case, strip punctuation, keep ``'`` inside words and ў/й/ё/і intact.

    >>> BelarusianTextNormalizer()("Раз’яднаць, «сям‘ю»!")
    "раз'яднаць сям'ю"

    Unlike Whisper's basic normalizer it does not delete text in brackets: in read speech
    (Common Voice, FLEURS) bracketed words are spoken.
    """

    def __call__(self, text: str) -> str:
        # Apostrophes first: NFKC would turn ´ into a space plus a combining accent. Then NFKC,
        # so that у + combining breve becomes the single letter ў (not "у" plus a mark).
        text = unicodedata.normalize("NFKC", text.translate(_APOSTROPHES)).lower()
        text = _WORD_APOSTROPHE.sub(_PLACEHOLDER, text)
        text = "".join(" " if _is_punctuation_or_symbol(ch) else ch for ch in text)
        text = text.replace(_PLACEHOLDER, "'")
        return _SPACES.sub(" ", text).strip()


class BasicTextNormalizer:
    """Whisper's multilingual normalizer, as used by the Whisper event and leaderboards."""

    def __init__(self) -> None:
        from transformers.models.whisper.english_normalizer import BasicTextNormalizer as _Basic

        self._normalize = _Basic()

    def __call__(self, text: str) -> str:
        return self._normalize(text)


NORMALIZERS: dict[str, Callable[[], Callable[[str], str]]] = {
    "belarusian": BelarusianTextNormalizer,
    "basic": BasicTextNormalizer,
}


def get_normalizer(name: str) -> Callable[[str], str]:
    return NORMALIZERS[name]()
