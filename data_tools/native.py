"""The compiled filter kernels (``data_tools/_native.c``), when the install could build them.

``pip install -e .`` compiles them (setup.py); without a C compiler the install still succeeds,
``kernels`` is None and every filter runs its numpy/Python code, which decides identically
(tests/data_tools/test_native.py checks both paths against each other). ``MEGAGPT_PURE_PYTHON=1``
forces the Python code, e.g. to compare speeds (benchmarks/data_pipeline.py does).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

try:
    from data_tools import _native as kernels
except ImportError:  # not built: the Python code runs
    kernels = None

if os.environ.get("MEGAGPT_PURE_PYTHON", "") not in ("", "0"):
    kernels = None

if kernels is not None:
    _src = Path(__file__).with_name("_native.c")
    if _src.exists() and _src.stat().st_mtime > Path(kernels.__file__).stat().st_mtime:
        warnings.warn(f"{kernels.__file__} is older than {_src}: rebuild it with `pip install -e .`", stacklevel=2)


def name() -> str:
    """What runs the per-word filter work, for logs and benchmarks."""
    return "compiled kernels (data_tools/_native.c)" if kernels is not None else "numpy/Python"
