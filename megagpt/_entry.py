"""Make ``python megagpt/<script>.py`` work from a checkout: the repo root goes on sys.path and
the package directory (which would shadow top-level names like ``data``) comes off."""
import os
import sys


def fix_path(script_file: str) -> None:
    pkg_dir = os.path.dirname(os.path.abspath(script_file))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != pkg_dir]
    root = os.path.dirname(pkg_dir)
    if root not in sys.path:
        sys.path.insert(0, root)
