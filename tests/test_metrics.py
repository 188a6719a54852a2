import jiwer
import pytest

from train_loop.evaluation import gather_predictions, score
from train_loop.metrics import error_rates, utterance_errors
from train_loop.text import BelarusianTextNormalizer


def test_wer_equals_jiwer_on_the_same_normalized_strings():
    normalize = BelarusianTextNormalizer()
    references = ["Мая сям’я жыве ў горадзе.", "Раз'яднаць усе правады!", "Добры дзень"]
    predictions = ["мая сям'я жыве у горадзе", "раз яднаць усе правады", ""]
    result = error_rates(references, predictions, normalize)
    norm_refs = [normalize(r) for r in references]
    norm_hyps = [normalize(p) for p in predictions]
    assert result["wer"] == pytest.approx(100 * jiwer.wer(norm_refs, norm_hyps))
    assert result["cer"] == pytest.approx(100 * jiwer.cer(norm_refs, norm_hyps))
    assert result["wer_raw"] == pytest.approx(100 * jiwer.wer(references, predictions))
    # Known transcript: 5 + 3 + 2 reference words; errors: ў/у (1 sub), "раз яднаць" for
    # раз'яднаць (1 sub + 1 ins), добры дзень missing (2 del) -> 5 / 10.
    assert result["words"] == 10
    assert result["wer"] == pytest.approx(50.0)


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
