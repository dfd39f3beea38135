"""Benchmarks of wd-pipeline, run with ``python -m benchmarks`` (see ``RESULTS.md``)."""
