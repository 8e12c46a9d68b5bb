"""Where the plugin keeps its own things in the QGIS profile folder, and what empty settings mean.

    <profile>/rs_assistant/engine-env     the engine's environment (python -m rs_assistant.setup_engine)
    <profile>/rs_assistant/models.toml    the models file the model manager writes

``engine_python`` "" means the set-up environment's Python, ``engine_env_dir`` "" the folder above,
``models_file`` "" the file above when it exists (rs_assistant.core.settings).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from qgis.core import QgsApplication

from rs_assistant.core.settings import Settings
from rs_assistant.setup_engine import is_complete, venv_python

log = logging.getLogger(__name__)

FOLDER = "rs_assistant"


def profile_dir() -> Path:
    """The active QGIS profile's folder (e.g. ~/.local/share/QGIS/QGIS3/profiles/default)."""
    return Path(QgsApplication.qgisSettingsDirPath())


def default_env_dir() -> Path:
    return profile_dir() / FOLDER / "engine-env"


def env_dir(settings: Settings) -> Path:
    """The folder of the engine's environment: the setting, else the profile's default."""
    if settings.engine_env_dir:
        return Path(os.path.expanduser(settings.engine_env_dir))
    return default_env_dir()


def default_models_file() -> Path:
    return profile_dir() / FOLDER / "models.toml"


def models_file(settings: Settings) -> str:
    """The models file to start the engine with: the setting, else the profile's when it exists, else ""."""
    if settings.models_file:
        return settings.models_file
    default = default_models_file()
    return str(default) if default.is_file() else ""


def engine_python(settings: Settings) -> str | None:
    """The engine's Python: the setting when set; else the set-up environment's when its set-up
    completed; else None (the engine is not set up: the dock offers the set-up)."""
    if settings.engine_python:
        return settings.engine_python
    target = env_dir(settings)
    if is_complete(target):
        return str(venv_python(target))
    log.info("no engine set up in %s", target)
    return None
