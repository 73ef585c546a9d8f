"""Install layout: light runtime import, and converters/ + cli/ mapped under finesteer_edge."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_import_pulls_no_torch_or_onnx() -> None:
    code = (
        "import sys, finesteer_edge\n"
        "from finesteer_edge import SteeredLlama, SteeringPack\n"
        "import finesteer_edge.cli.app\n"
        "bad = [m for m in ('torch', 'onnx', 'sklearn', 'transformers') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


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
