"""Benchmarks, each run from the repository root as a module: ``python -m benchmarks.<name>``
(they share ``benchmarks._common`` and the tests' ``tests.shards`` and ``tests.dist_harness``)."""
