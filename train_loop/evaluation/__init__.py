"""Transcribing and scoring: batched generation gathered across processes, WER/CER, reports,
and the transformers transcriber (short-form and long-form)."""
