"""Benchmark harness for stockd, run as ``python -m bench`` (``make bench``).

Benchmarks live here rather than in tests so that figures come from full
durations on a quiet machine; a short smoke run in ``tests/unit`` keeps the
harness from rotting.
"""
