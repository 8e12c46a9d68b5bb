"""pyproject.toml: the package's version and extras agree with the plugin's metadata and requirement files."""

from __future__ import annotations

import configparser
import tomllib

import rs_assistant
from tests.setup.conftest import ROOT


def test_the_package_version_is_the_plugin_version():
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt", encoding="utf-8")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "rs_assistant.__version__"}
    assert rs_assistant.__version__ == meta["general"]["version"]


def test_the_extras_are_the_requirement_files_the_set_ups_use():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = pyproject["tool"]["setuptools"]["dynamic"]["optional-dependencies"]
    assert {name: spec["file"] for name, spec in extras.items()} == {
        name: [f"requirements/{name}.in"] for name in ("engine", "training", "distributed", "dev")
    }
    assert pyproject["project"]["scripts"] == {"rs-assistant-engine": "rs_assistant.engine.__main__:main"}
    assert pyproject["project"]["dependencies"] == []
