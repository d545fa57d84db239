"""Benchmarks, each run from the repository root as a module: ``python -m benchmarks.<name>``
(they share ``benchmarks._common`` and the tests' ``tests.helpers.shards`` and ``tests.helpers.dist``)."""
