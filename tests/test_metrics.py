import pytest

from train_loop.core.text import BelarusianTextNormalizer
from train_loop.evaluation.generation import gather_predictions, score
from train_loop.evaluation.metrics import error_rates, utterance_errors

pytestmark = pytest.mark.unit


def test_corpus_rates_on_hand_counted_transcripts():
    normalize = BelarusianTextNormalizer()
    references = ["Мая сям’я жыве ў горадзе.", "Раз'яднаць усе правады!", "Добры дзень"]
    predictions = ["мая сям'я жыве у горадзе", "раз яднаць усе правады", ""]
    result = error_rates(references, predictions, normalize)
    # 5 + 3 + 2 reference words; errors: ў/у (1 sub), "раз яднаць" for раз'яднаць (1 sub +
    # 1 ins), добры дзень missing (2 del) -> 5 / 10, counted separately by kind.
    assert result["words"] == 10
    assert result["wer"] == pytest.approx(50.0)
    assert (result["substitutions"], result["insertions"], result["deletions"]) == (2, 1, 2)
    # Characters: 24 + 22 + 11 in the normalized references; ў->у 1, ' -> space 1, "добры
    # дзень" 11 deleted -> 13 / 57.
    assert result["cer"] == pytest.approx(100 * 13 / 57)
    # Raw text: case and punctuation count too. Мая, сям’я, ў, горадзе. (4); Раз'яднаць -> 2
    # words (2), правады! (1); 2 deleted -> 9 / 10.
    assert result["wer_raw"] == pytest.approx(90.0)


def test_apostrophe_variants_are_not_errors_after_normalization():
    result = error_rates(["сям’я"], ["сям'я"], BelarusianTextNormalizer())
    assert result["wer"] == 0.0
    assert result["wer_raw"] == 100.0


def test_empty_references_are_counted_not_scored():
    result = error_rates(["", "  ...  ", "так"], ["што", "", "так"], BelarusianTextNormalizer())
    assert result["samples"] == 3
    assert result["empty_references"] == 2
    assert result["wer"] == 0.0


def test_utterance_errors():
    assert utterance_errors("a b c", "a x c d") == (2, 3)
    assert utterance_errors("", "a b") == (2, 0)


class _OneProcess:
    num_processes = 1


def test_gathered_predictions_are_unique_by_clip_id():
    rows = [{"id": "b", "reference": "x", "prediction": "x"},
            {"id": "a", "reference": "y", "prediction": "z"},
            {"id": "b", "reference": "x", "prediction": "x"}]  # a repeated padding clip
    merged = gather_predictions(rows, _OneProcess())
    assert [r["id"] for r in merged] == ["a", "b"]
    assert score(merged, BelarusianTextNormalizer())["wer"] == 50.0
