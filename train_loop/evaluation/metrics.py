"""Word and character error rates, computed with jiwer (what ``evaluate.load("wer")`` wraps,
without its run-time download from the Hub).

All rates are corpus-level (total errors / total reference words) and in percent.
* ``wer``, ``cer``: after the chosen normalizer (Belarusian by default);
* ``wer_raw``: on the raw text, case and punctuation included.
A reference that is empty after normalization cannot be scored; it is left out and counted
(``empty_references``), never silently.
"""

from __future__ import annotations

from typing import Callable

# The rates an evaluation reports (eval_<name>, test_<name>); lower is better for each. They are
# what --metric_for_best_model may name.
ERROR_RATES = ("wer", "cer", "wer_raw")


def error_rates(references: list[str], predictions: list[str],
                normalizer: Callable[[str], str]) -> dict[str, float | int]:
    import jiwer

    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    normalized = [(normalizer(r), normalizer(p)) for r, p in zip(references, predictions)]
    scored = [(r, p) for r, p in normalized if r]
    raw = [(r.strip(), p.strip()) for r, p in zip(references, predictions) if r.strip()]
    result: dict[str, float | int] = {
        "samples": len(references),
        "empty_references": len(references) - len(scored),
    }
    if scored:
        refs, preds = zip(*scored)
        measures = jiwer.process_words(list(refs), list(preds))
        result["wer"] = 100.0 * measures.wer
        result["cer"] = 100.0 * jiwer.cer(list(refs), list(preds))
        result["words"] = sum(len(r.split()) for r in refs)
        result["substitutions"] = measures.substitutions
        result["deletions"] = measures.deletions
        result["insertions"] = measures.insertions
    if raw:
        refs, preds = zip(*raw)
        result["wer_raw"] = 100.0 * jiwer.wer(list(refs), list(preds))
    return result


def utterance_errors(reference: str, prediction: str) -> tuple[int, int]:
    """(word errors, reference words) of one normalized pair, for per-utterance dumps."""
    import jiwer

    if not reference:
        return len(prediction.split()), 0
    measures = jiwer.process_words(reference, prediction)
    return measures.substitutions + measures.deletions + measures.insertions, len(reference.split())
