"""Benchmarks (`make bench`): each module exposes `run() -> dict` and is not part of `make test`."""
