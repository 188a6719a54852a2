import pytest

from train_loop.core.text import BasicTextNormalizer, BelarusianTextNormalizer
from train_loop.data.features import prepare_label_text

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def normalize():
    return BelarusianTextNormalizer()


@pytest.mark.parametrize("variant", ["'", "\u2019", "\u2018", "\u02bc", "`", "\u00b4"])
def test_every_apostrophe_variant_becomes_ascii_and_stays_inside_the_word(normalize, variant):
    assert normalize(f"Раз{variant}яднаць") == "раз'яднаць"
    assert normalize(f"сям{variant}я") == "сям'я"


def test_apostrophe_word_stays_one_word_where_basic_splits_it(normalize):
    assert normalize("раз'яднаць").split() == ["раз'яднаць"]
    assert BasicTextNormalizer()("раз'яднаць").split() == ["раз", "яднаць"]


def test_keeps_belarusian_letters(normalize):
    assert normalize("Ўсё цёплае, мой воўк!") == "ўсё цёплае мой воўк"
    # у + combining breve (decomposed ў) is composed to the letter, not stripped as a mark
    assert normalize("у\u0306") == "ў"


def test_lowercases_and_strips_punctuation_and_quotes(normalize):
    assert normalize("Ён сказаў: «Добра» — і пайшоў…") == "ён сказаў добра і пайшоў"
    # apostrophes used as quotes (at word edges) are removed
    assert normalize("'Слова' і ’іншае’") == "слова і іншае"


def test_bracketed_words_are_kept_because_they_are_spoken(normalize):
    assert normalize("дом (стары)") == "дом стары"


def test_training_labels_are_raw_unless_asked(normalize):
    assert prepare_label_text("  Мая сям’я!  ", do_lower_case=False, normalizer=None) == "Мая сям’я!"
    assert prepare_label_text("Мая сям’я!", do_lower_case=True, normalizer=None) == "мая сям’я!"
    assert prepare_label_text("Мая сям’я!", do_lower_case=False, normalizer=normalize) == "мая сям'я"
