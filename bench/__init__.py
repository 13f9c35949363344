"""Benchmarks, run on demand (`make bench` or `python bench/NAME_bench.py`); each prints a
table."""
