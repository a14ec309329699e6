"""The fast path against the straightforward path, in one process on the same weights (``scripts/bench_fast.py``;
docs/performance.md describes the baselines and holds the results)."""
