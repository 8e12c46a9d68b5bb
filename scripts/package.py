"""Builds the QGIS plugin zip that the Plugin Manager's "Install from ZIP" takes.

    .venv/bin/python scripts/package.py [--out dist]      (what `make package` runs)

The zip holds one folder, ``rs_assistant/``: the code (the engine included, since the plugin
starts it from there), ``metadata.txt``, ``resources/`` (without the demo data), compiled
translations, the engine's requirements, LICENSE, README and CHANGELOG. Nothing of ``tests/``,
``training/`` or ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import configparser
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {"__pycache__", ".pytest_cache"}
SKIP_SUFFIXES = {".pyc", ".pyo"}
SKIP_RESOURCES = {"demo"}  # demo data stays in the repository


def version() -> str:
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt", encoding="utf-8")
    return meta["general"]["version"]


def _files(folder: Path, skip_top: set[str] = frozenset()):
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or SKIP_DIRS.intersection(rel.parts) or path.suffix in SKIP_SUFFIXES:
            continue
        if rel.parts[0] in skip_top:
            continue
        yield path, rel


def build(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"rs_assistant-{version()}.zip"
    tmp = target.with_suffix(".zip.part")
    qm_files = sorted((ROOT / "i18n").glob("*.qm"))
    if sorted((ROOT / "i18n").glob("*.ts")) and not qm_files:
        sys.exit("package: no compiled translations in i18n/: run `make translations` first")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, rel in _files(ROOT / "rs_assistant"):
            zf.write(path, f"rs_assistant/{rel.as_posix()}")
        for path, rel in _files(ROOT / "resources", SKIP_RESOURCES):
            zf.write(path, f"rs_assistant/resources/{rel.as_posix()}")
        for qm in qm_files:
            zf.write(qm, f"rs_assistant/i18n/{qm.name}")
        for name in ("metadata.txt", "LICENSE", "README.md", "CHANGELOG.md"):
            zf.write(ROOT / name, f"rs_assistant/{name}")
        for req in ("engine.in", "constraints.txt"):
            zf.write(ROOT / "requirements" / req, f"rs_assistant/requirements/{req}")
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="folder for the zip (default: dist/)")
    args = parser.parse_args(argv)
    target = build(args.out)
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
