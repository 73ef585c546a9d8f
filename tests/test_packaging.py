"""Install layout: light runtime import, no import cycles, and converters/ + cli/ mapped under finesteer_edge."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"finesteer_edge": ROOT / "finesteer_edge", "finesteer_edge.converters": ROOT / "converters",
                "finesteer_edge.cli": ROOT / "cli"}
"""Where each first-party package lives in the checkout (pyproject's package-dir mapping)."""
SCRIPT_DIRS = [ROOT / "bench", ROOT / "scripts"]
"""Folders of scripts that import each other by bare name (``import _util``), with their own folder on sys.path."""


def test_runtime_import_pulls_no_torch_or_onnx() -> None:
    code = (
        "import sys, finesteer_edge\n"
        "from finesteer_edge import SteeredLlama, SteeringPack\n"
        "import finesteer_edge.cli.app\n"
        "bad = [m for m in ('torch', 'onnx', 'sklearn', 'transformers', 'fastapi', 'uvicorn', 'sse_starlette',\n"
        "                   'starlette') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every first-party module: dotted name -> (file, is a package's ``__init__``)."""
    mods: dict[str, tuple[Path, bool]] = {}
    for pkg, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_init = parts[-1] == "__init__"
            name = ".".join([pkg, *(parts[:-1] if is_init else parts)])
            if not any(name == p or name.startswith(p + ".") for p in PACKAGE_DIRS if p.startswith(pkg + ".")):
                mods[name] = (path, is_init)  # a mapped folder wins over a same-named folder in the tree
    for folder in SCRIPT_DIRS:
        for path in sorted(folder.glob("*.py")):
            mods[f"<{folder.name}>.{path.stem}"] = (path, False)
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> the first-party modules it imports, anywhere in its body (also inside functions, where a
    lazy import only hides a cycle until that function runs). ``from pkg import name`` counts as an import
    of ``pkg.name`` when that is a module, otherwise of ``pkg``."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_init) in mods.items():
        script_dir = name[1:].split(">.")[0] if name.startswith("<") else None
        package = name if is_init else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[tuple[str, list[str]]] = []
            if isinstance(node, ast.Import):
                targets = [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [(base, [a.name for a in node.names])]
            for base, names in targets:
                if script_dir is not None and f"<{script_dir}>.{base}" in mods:
                    base = f"<{script_dir}>.{base}"
                for n in names:
                    if f"{base}.{n}" in mods:
                        edges.add(f"{base}.{n}")
                if base in mods and not all(f"{base}.{n}" in mods for n in names or ["-"]):
                    edges.add(base)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert {"finesteer_edge", "finesteer_edge.steered", "finesteer_edge.converters.convert",
            "finesteer_edge.cli.app"} <= set(graph)
    assert "finesteer_edge.sources" not in graph["finesteer_edge.converters.convert"]
    assert "finesteer_edge.converters.sources" in graph["finesteer_edge.converters.convert"]
    assert "<bench>._util" in graph["<bench>.run_all"]  # the script folders are walked too
    assert find_cycles(graph) == []


def test_cycle_finder_sees_a_cycle() -> None:
    # The checker itself: a lazy import inside a function closes a cycle just the same.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_editable_install_maps_subpackages() -> None:
    import finesteer_edge.cli.app as app
    import finesteer_edge.converters.pack_writer as pw

    assert Path(pw.__file__).resolve().parent == ROOT / "converters"
    assert Path(app.__file__).resolve().parent == ROOT / "cli"


@pytest.mark.slow
def test_built_wheel_contains_mapped_packages_and_imports(tmp_path: Path) -> None:
    # Build from a copy: setuptools builds in-tree and would leave build/ in the checkout.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", ".*cache"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(src)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("finesteer_edge-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "finesteer_edge/converters/pack_writer.py" in names
    assert "finesteer_edge/cli/app.py" in names
    assert not any(n.startswith(("converters/", "cli/")) for n in names), "must not install top-level converters/cli"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import finesteer_edge.converters.pack_writer as p, finesteer_edge.cli.app as a; "
            "print(p.__file__); print(a.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert all(line.startswith(str(target)) for line in out.stdout.split())
