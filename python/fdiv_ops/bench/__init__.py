"""Benchmark harness behind ``fdiv-ops bench``: timing, providers and per-op cases."""
