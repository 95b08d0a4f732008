"""Benchmarks: long runs that measure speed and quality, kept out of the test suite."""
