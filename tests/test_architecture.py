"""The layers hold by themselves: import-linter's contracts (setup.cfg) pass on the tree, an
upward import added to a copy of the tree breaks them, no module imports itself back through a
cycle, and no source file outgrows what one reader can keep in mind."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"
MAX_LINES = 450


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(LINT.parent), "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([str(LINT), "--config", str(root / "setup.cfg"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "broken" in out.stdout and " 0 broken" in out.stdout


def copy_tree(tmp_path: Path) -> Path:
    for name in ("megagpt", "data_tools"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    return tmp_path


@pytest.mark.parametrize("module, line, contract", [
    # the model reaching up into training, inside a function (lazy imports count)
    ("megagpt/model/flops.py", "def _up():\n    from megagpt.train.engine import build_engine\n",
     "megagpt: each layer imports only the layers below it"),
    # training reaching sideways into inference (the two engines are independent)
    ("megagpt/train/step.py", "from megagpt.inference.generation import generate\n",
     "megagpt: each layer imports only the layers below it"),
    # the runtime reaching into the offline tools
    ("megagpt/data/mixture.py", "import data_tools.dedup\n", "megagpt never imports the offline data tools"),
])
def test_an_upward_import_breaks_the_contracts(tmp_path, module, line, contract):
    root = copy_tree(tmp_path)
    with open(root / module, "a") as f:
        f.write("\n\n" + line)
    out = lint(root)
    assert out.returncode != 0
    assert f"{contract} BROKEN" in out.stdout, out.stdout


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's components of more than one module (iterative: the graph is deep)."""
    index, low, on_stack, stack, comps, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.add(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    comps.append(comp)
    return comps


def test_no_module_level_import_cycles():
    graph = grimp.build_graph("megagpt", "data_tools", cache_dir=None)
    assert len(graph.modules) > 80
    assert strongly_connected(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for m in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(m)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.z", imported="a.x")
    assert strongly_connected(graph) == [{"a.x", "a.y"}]


def test_no_source_file_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "megagpt").rglob("*.py")) + sorted(
        (ROOT / "data_tools").rglob("*.py")) if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
