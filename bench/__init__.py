"""Benchmarks of gemma-export's artifacts against peer runtimes (outside the test suite; see README)."""
