"""Where the plugin's files are, both in the repository and inside the installed zip.

In the repository ``resources/`` and ``i18n/`` sit beside ``rs_assistant/``; the packaged
plugin carries them inside ``rs_assistant/``; a wheel (``pip install ".[engine]"``) puts the built-in
model's weights in ``<prefix>/share/rs_assistant/resources``. Pure standard library.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def _first_existing(name: str) -> Path:
    """The plugin zip's folder, else the repository's, else an installed wheel's data folder."""
    candidates = (PACKAGE_DIR / name, PACKAGE_DIR.parent / name, Path(sys.prefix) / "share" / "rs_assistant" / name)
    return next((folder for folder in candidates if folder.is_dir()), candidates[1])


def resources_dir() -> Path:
    return _first_existing("resources")


def i18n_dir() -> Path:
    return _first_existing("i18n")


def resource(*parts: str) -> Path:
    return resources_dir().joinpath(*parts)


def engine_environment(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with the plugin folder's parent first on PYTHONPATH and unbuffered output: how every
    process of the engine's Python is started (it imports rs_assistant from the plugin's folder)."""
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_DIR.parent), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def user_config_dir() -> Path:
    """The user's ``rs_assistant`` config folder (the engine's token file, the engine's own models file)."""
    if os.name == "nt":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "rs_assistant"


def metadata_file() -> Path:
    inside = PACKAGE_DIR / "metadata.txt"
    return inside if inside.is_file() else PACKAGE_DIR.parent / "metadata.txt"
