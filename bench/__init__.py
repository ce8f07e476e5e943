"""Benchmarks: each prints one JSON object; `make bench` runs them all. Not run by CI."""
