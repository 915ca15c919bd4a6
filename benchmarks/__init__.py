"""Benchmarks: speed and peak memory of each stage on generated data (``make bench``)."""
