"""The process boundary: torch and friends never enter QGIS's Python; core stays pure."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rs_assistant"
HEAVY = {"torch", "transformers", "rasterio", "safetensors", "tokenizers", "fastapi", "uvicorn", "shapely", "pyproj"}
QT = {"qgis", "PyQt5", "PyQt6", "PySide2", "PySide6"}


def imported_top_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def python_files(folder: Path, exclude: Path | None = None) -> list[Path]:
    return [p for p in folder.rglob("*.py") if exclude is None or exclude not in p.parents]


def test_core_imports_neither_qgis_nor_qt_nor_torch():
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_top_modules(p) & (QT | HEAVY)) for p in python_files(PACKAGE / "core")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_plugin_side_never_imports_the_engine_stack():
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_top_modules(p) & HEAVY)
        for p in python_files(PACKAGE, exclude=PACKAGE / "engine")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_qt_is_imported_only_through_qgis_pyqt():
    offenders = {
        str(p.relative_to(ROOT)): sorted(imported_top_modules(p) & (QT - {"qgis"})) for p in python_files(PACKAGE)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_engine_never_imports_training():
    offenders = [
        str(p.relative_to(ROOT)) for p in python_files(PACKAGE / "engine") if "training" in imported_top_modules(p)
    ]
    assert offenders == []


@pytest.mark.parametrize("module", ["rs_assistant", "rs_assistant.core.protocol", "rs_assistant.core.paths"])
def test_importing_plugin_modules_loads_no_heavy_package(module):
    """Checked at run time too, in a clean interpreter: catches imports hidden behind helpers."""
    code = (
        f"import sys, {module}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY | QT)!r})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_check_itself_sees_a_forbidden_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom torch import nn\nimport qgis.core as q\nfrom . import x\n")
    assert imported_top_modules(sample) == {"os", "torch", "qgis"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports when it runs (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    typing_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING"
        for child in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in modules:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found.update(submodules or {node.module})  # `from package import module` needs the module
    return found


def test_no_module_of_the_package_imports_itself_through_others():
    """Each module can be explained on its own: no import cycles (type-only imports aside)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: _runtime_imports(path, set(files)) - {name} for name, path in files.items()}
    cycles = []

    def visit(name: str, trail: list[str]) -> None:
        for target in sorted(graph[name]):
            if target in trail:
                cycles.append(" -> ".join(trail[trail.index(target) :] + [target]))
            elif target not in done:
                visit(target, [*trail, target])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))
