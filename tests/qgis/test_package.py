"""The zip `make package` builds installs into a fresh QGIS profile, starts and unloads cleanly."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REQUIRED_METADATA = (
    "name",
    "qgisMinimumVersion",
    "description",
    "about",
    "version",
    "author",
    "email",
    "repository",
    "tracker",
    "license",
    "supportsQt6",
)


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(["bash", "scripts/translations.sh"], cwd=ROOT, check=True)
    result = subprocess.run(
        [sys.executable, "scripts/package.py", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return Path(result.stdout.strip())


def test_zip_holds_one_plugin_folder_without_dev_files(plugin_zip):
    version = configparser.ConfigParser()
    version.read(ROOT / "metadata.txt")
    assert plugin_zip.name == f"rs_assistant-{version['general']['version']}.zip"
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert all(n.startswith("rs_assistant/") for n in names)
    for must in (
        "rs_assistant/__init__.py",
        "rs_assistant/metadata.txt",
        "rs_assistant/plugin.py",
        "rs_assistant/engine/__init__.py",
        "rs_assistant/resources/ui/chat_dock.ui",
        "rs_assistant/LICENSE",
    ):
        assert must in names
    assert any(n.startswith("rs_assistant/i18n/") and n.endswith(".qm") for n in names)
    for banned in ("tests/", "training/", "benchmarks/", "__pycache__", ".pyc", "resources/demo/"):
        assert not any(banned in n for n in names), banned


def test_metadata_has_every_field_the_plugin_repository_requires(plugin_zip):
    meta = configparser.ConfigParser()
    meta.read_string(zipfile.ZipFile(plugin_zip).read("rs_assistant/metadata.txt").decode())
    general = meta["general"]
    missing = [k for k in REQUIRED_METADATA if not general.get(k, "").strip()]
    assert not missing
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["supportsQt6"] == "True"
    assert general["license"].startswith("GPL-2.0")


def test_installed_zip_loads_starts_and_unloads_without_leftovers(plugin_zip, tmp_path):
    profile = tmp_path / "profile"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    zipfile.ZipFile(plugin_zip).extractall(plugins)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "qgis" / "plugin_lifecycle_probe.py"), str(profile)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [l for l in result.stdout.splitlines() if l.startswith("REPORT ")]
    assert lines, result.stdout + result.stderr
    report = json.loads(lines[-1][len("REPORT ") :])
    assert report["available"] and report["loaded"] and report["started"]
    assert str(plugins) in report["module_file"]  # the installed copy, not the repository's

    during, after, before = report["during"], report["after"], report["before"]
    assert "RSAssistantDock" in during["docks"]
    assert {"actionRSAssistantDock", "actionSelectRegion"} <= set(during["actions"])
    assert "RSAssistantToolbar" in during["toolbars"]
    assert during["map_tool"].startswith("rs_assistant")  # the region tool was active
    assert during["menus"]

    assert after["docks"] == before["docks"]
    assert after["toolbars"] == before["toolbars"]
    assert after["toolbar_actions"] == before["toolbar_actions"]
    assert not {"actionRSAssistantDock", "actionSelectRegion"} & set(after["actions"])
    assert after["actions"] == before["actions"]
    assert after["menus"] == before["menus"] == []
    assert after["providers"] == before["providers"]
    assert not (after["map_tool"] or "").startswith("rs_assistant")
