"""The entry points as the README gives them: a module (``python -m megagpt.pretrain``), a console
script from setup.cfg (``megagpt-pretrain``) and the file path (``python megagpt/pretrain.py``), run
from outside the checkout with no PYTHONPATH: the installed package is what they import, and nothing
patches sys.path. Running a file by its path puts its folder first on sys.path, so the folders that
hold entry points must not shadow a standard or installed module by a sibling's name.

The launchers' module forms run real jobs elsewhere: ``deepspeed --module megagpt.pretrain`` and
``torchrun -m megagpt.pretrain`` in tests/parallel/, ``mpirun ... python -m megagpt.pretrain`` in
tests/train/test_cli.py."""
import ast
import configparser
import importlib.metadata
import importlib.util
import os
import pkgutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPT_FOLDERS = ["megagpt", "megagpt/eval", "data_tools", "scripts"]  # folders whose files run by path


def _run(cmd, cwd):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.startswith("usage: "), r.stdout[:500]
    return r.stdout


def _console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


@pytest.mark.parametrize("module,script,path", [
    ("megagpt.pretrain", "megagpt-pretrain", "megagpt/pretrain.py"),
    ("data_tools.build_source", "megagpt-build-source", "data_tools/build_source.py"),
])
def test_module_console_script_and_path_are_one_program(tmp_path, module, script, path):
    assert (BIN / script).is_file(), f"{script} is not installed: pip install -e . --no-deps"
    outputs = [_run([sys.executable, "-m", module, "--help"], tmp_path),
               _run([BIN / script, "--help"], tmp_path),
               _run([sys.executable, ROOT / path, "--help"], tmp_path)]
    # argparse names the program after argv[0] in the usage block: what follows it is the same
    bodies = {out.split("\n\n", 1)[1] for out in outputs}
    assert len(bodies) == 1, outputs


def test_every_entry_point_has_a_console_script():
    """Each module with a ``__main__`` block in the entry-point folders is a console script's
    ``module:main``, and the installed scripts are the ones setup.cfg declares."""
    scripts = _console_scripts()
    targets = {target.split(":")[0] for target in scripts.values()}
    mains = set()
    for folder in ("megagpt", "megagpt/eval", "data_tools"):
        for path in sorted((ROOT / folder).glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            if any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body):
                mains.add(".".join(path.relative_to(ROOT).with_suffix("").parts))
    assert mains == targets, (sorted(mains - targets), sorted(targets - mains))
    for name, target in scripts.items():
        module, func = target.split(":")
        assert func == "main" and importlib.util.find_spec(module) is not None, (name, target)
    installed = {ep.name for ep in importlib.metadata.entry_points(group="console_scripts")
                 if ep.value.startswith(("megagpt.", "data_tools."))}
    assert installed == set(scripts), "the installed scripts are stale: pip install -e . --no-deps"


def _installed_top_level_names() -> set[str]:
    """What ``import <name>`` can reach besides this checkout: the standard library and every
    installed distribution's top-level modules."""
    names = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    names |= set(importlib.metadata.packages_distributions())
    site = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    names |= {m.name for m in pkgutil.iter_modules(sorted(site))}
    return names - {"megagpt", "data_tools"}


def test_script_folders_shadow_nothing_that_is_imported():
    """``evaluate`` is the one sibling name also taken, by Hugging Face's metrics package, which
    only lm-evaluation-harness imports (for Hugging Face metrics); megagpt imports lm_eval only in
    megagpt/eval/harness.py, whose own folder shadows nothing. So no process started as
    ``python megagpt/<name>.py`` can import Hugging Face's ``evaluate``."""
    taken = _installed_top_level_names()
    shadowed = {folder: sorted({m.name for m in pkgutil.iter_modules([str(ROOT / folder)])} & taken)
                for folder in SCRIPT_FOLDERS}
    assert shadowed == {"megagpt": ["evaluate"], "megagpt/eval": [], "data_tools": [], "scripts": []}
    importers = set()
    for path in sorted((ROOT / "megagpt").rglob("*.py")) + sorted((ROOT / "data_tools").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n.split(".")[0] in ("lm_eval", "evaluate") for n in names):
                importers.add(path.relative_to(ROOT).as_posix())
    assert importers == {"megagpt/eval/harness.py"}


def test_nothing_patches_sys_path():
    patch = "sys" + ".path"  # spelled apart so this file does not find itself
    found = [f"{p.relative_to(ROOT)}:{i}" for folder in ("megagpt", "data_tools", "scripts", "benchmarks", "tests")
             for p in sorted((ROOT / folder).rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if f"{patch}.insert" in line or f"{patch}.append" in line or f"{patch}[" in line]
    assert found == []
