"""Benchmarks: each measures ratios side by side in one run, on real clips from ../shared/data."""
