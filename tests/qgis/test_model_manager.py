"""The model manager as a person uses it: the table comes from a real ``models list --json`` run
with the repository's engine Python, and choosing a task's default model writes the models
file's [tasks] table (which the engine reads when it restarts)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from qgis.core import QgsSettings

from rs_assistant.core.catalog import CATALOG
from rs_assistant.core.models_file import read_models_file
from rs_assistant.core.paths import resource
from rs_assistant.core.protocol import Task
from rs_assistant.core.settings import Settings
from rs_assistant.ui.model_manager import ListedModel, ModelManagerDialog
from rs_assistant.ui.settings_store import SettingsStore

LIST_TIMEOUT_MS = 60_000


@pytest.fixture
def store(qgis_app):
    store = SettingsStore(QgsSettings())
    store.clear()
    yield store
    store.clear()


@pytest.fixture
def models_file(tmp_path) -> Path:
    """A models file with one registered model on disk (the shipped weights under another name)."""
    path = tmp_path / "models.toml"
    path.write_text(
        f'[models.second]\nbackend = "rsa"\npath = "{resource("models", "rsa-default").as_posix()}"\n', encoding="utf-8"
    )
    return path


def open_dialog(qtbot, store, settings: Settings) -> ModelManagerDialog:
    store.save(settings)
    dialog = ModelManagerDialog(store)
    qtbot.addWidget(dialog)
    dialog.resize(900, 600)
    dialog.show()
    with qtbot.waitSignal(dialog.listed, timeout=LIST_TIMEOUT_MS):
        dialog.refresh()
    return dialog


def table(dialog: ModelManagerDialog) -> dict[str, list[str]]:
    t = dialog.modelsTable
    return {t.item(r, 0).text(): [t.item(r, c).text() for c in range(t.columnCount())] for r in range(t.rowCount())}


def test_lists_the_catalogue_and_registered_models_and_sets_a_task_default(qtbot, store, models_file):
    changed = []
    dialog = open_dialog(qtbot, store, Settings(engine_python=sys.executable, models_file=str(models_file)))
    dialog.modelsFileChanged.connect(lambda: changed.append(True))
    assert not dialog.notSetUpWidget.isVisible()
    assert str(models_file) in dialog.fileLabel.text()
    rows = table(dialog)
    assert {e.name for e in CATALOG} <= set(rows)
    florence = rows["florence2-base"]
    assert florence[1] == "caption, ground, segment" and florence[2] == "930 MB" and florence[3] == "MIT"
    assert florence[4] == "2.0 / 1.5 GB" and florence[5] == "Not downloaded"
    assert rows["second"][5] == "Ready" and "ground" in rows["second"][1]

    # Download is for catalogue entries not yet here; export for registered models on disk
    dialog.select("florence2-base")
    assert dialog.downloadButton.isEnabled() and not dialog.exportBundleButton.isEnabled()
    assert "Florence-2" in dialog.descriptionLabel.text()
    dialog.select("second")
    assert not dialog.downloadButton.isEnabled() and dialog.exportBundleButton.isEnabled()

    # the grid offers, per task, the built-in model and the registered models that do the task
    ground = dialog.task_combos[Task.GROUND]
    assert [ground.itemText(i) for i in range(ground.count())] == ["Built-in (default)", "second"]
    retrieve = dialog.task_combos[Task.RETRIEVE]
    assert [retrieve.itemText(i) for i in range(retrieve.count())] == ["Built-in (default)"]

    ground.setCurrentIndex(1)
    ground.activated.emit(1)
    assert read_models_file(models_file).tasks == {"ground": "second"}
    assert "[tasks]" in models_file.read_text(encoding="utf-8")
    assert changed == [True]
    assert "second" in dialog.statusLabel.text()

    # the engine reads the file back: a fresh listing shows the route, and "Built-in" removes it
    with qtbot.waitSignal(dialog.listed, timeout=LIST_TIMEOUT_MS):
        dialog.refresh()
    assert dialog.task_combos[Task.GROUND].currentText() == "second"
    ground.setCurrentIndex(0)
    ground.activated.emit(0)
    assert read_models_file(models_file).tasks == {}
    assert read_models_file(models_file).models["second"]["backend"] == "rsa"  # the rest of the file is kept


def test_a_gated_model_says_it_needs_a_token(qtbot, store, models_file):
    dialog = open_dialog(qtbot, store, Settings(engine_python=sys.executable, models_file=str(models_file)))
    gated = ListedModel(
        "llama-geo", "qwen2_5_vl", ("chat",), in_catalog=True, on_disk=False, registered=False, gated=True
    )
    assert dialog.status_text(gated) == "Not downloaded: needs a Hugging Face token"


def test_before_the_set_up_it_says_so_and_offers_it(qtbot, store, tmp_path):
    requested = []
    settings = Settings(engine_env_dir=str(tmp_path / "no-env"), models_file=str(tmp_path / "models.toml"))
    dialog = open_dialog(qtbot, store, settings)
    dialog.setupRequested.connect(lambda: requested.append(True))
    assert dialog.notSetUpWidget.isVisible() and "not set up" in dialog.notSetUpLabel.text()
    assert {e.name for e in CATALOG} <= set(table(dialog))  # the catalogue is shown anyway
    assert not dialog.downloadButton.isEnabled() and not dialog.importFolderButton.isEnabled()
    dialog.setupButton.click()
    assert requested == [True]
