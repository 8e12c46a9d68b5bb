"""Where the plugin's files are, both in the repository and inside the installed zip.

In the repository ``resources/`` and ``i18n/`` sit beside ``rs_assistant/``; the packaged
plugin carries them inside ``rs_assistant/``. Pure standard library.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _first_existing(name: str) -> Path:
    inside = PACKAGE_DIR / name
    return inside if inside.is_dir() else PACKAGE_DIR.parent / name


def resources_dir() -> Path:
    return _first_existing("resources")


def i18n_dir() -> Path:
    return _first_existing("i18n")


def resource(*parts: str) -> Path:
    return resources_dir().joinpath(*parts)


def metadata_file() -> Path:
    inside = PACKAGE_DIR / "metadata.txt"
    return inside if inside.is_file() else PACKAGE_DIR.parent / "metadata.txt"
