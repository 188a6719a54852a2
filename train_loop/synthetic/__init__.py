"""Offline stand-ins: random Whispers of any shape and generated speech, for the tests, the demo
and the benchmarks (a real run needs none of it)."""
