"""Benchmarks: speed and sample quality measured as tables (see docs/results.md)."""
