"""Benchmarks: ratios measured side by side in one run (these machines are noisy).

    python -m train_loop.bench            # everything, prints a table and a final JSON line
    python -m train_loop.bench.resume     # launch -> first resumed step, checkpoint size/time
"""
