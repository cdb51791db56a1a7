"""Frozen copies of pre-issue-8 code, kept only as baselines for the benchmarks."""
