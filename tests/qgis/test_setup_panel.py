"""The first run as a person meets it: a fresh QGIS profile, no engine environment. The dock shows
the set-up panel (not a traceback, not an error line); its button runs the real set-up
(``python -m rs_assistant.setup_engine``) from the offline wheelhouse of tests/wheelhouse.py, with
a moving progress bar and a log; cancel offers to resume; a resumed set-up completes, the settings
name the new environment's Python, and the engine starts from it and describes a GeoTIFF.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/qgis/test_setup_panel.py

The two slow tests share one environment folder (module scope) and run in file order: the first
cancels a set-up half-way, the second (a new plugin, as after restarting QGIS) resumes it. Each
also passes alone. Together they take a few minutes (torch is installed from local wheels).
"""

from __future__ import annotations

import os

import pytest
from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsSettings
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QPushButton

from rs_assistant import setup_engine
from rs_assistant.core.conversation import TurnState
from rs_assistant.core.engine_state import EngineFault, EngineState
from rs_assistant.plugin import RSAssistantPlugin
from rs_assistant.ui import profile
from rs_assistant.ui.settings_store import SettingsStore
from tests.qgis.conftest import UTM, UTM_ORIGIN, add_raster, extent_in_project
from tests.qgis.rasters import write_geotiff
from tests.qgis.recording_iface import RecordingIface

SETUP_TIMEOUT_MS = 15 * 60_000
ENGINE_START_MS = 180_000


@pytest.fixture
def fresh_profile(qgis_new_project):
    """Default settings: the plugin's QgsSettings group is empty."""
    store = SettingsStore(QgsSettings())
    store.clear()
    yield store
    store.clear()


@pytest.fixture
def open_plugin(fresh_profile, qtbot):
    plugins = []

    def start() -> RSAssistantPlugin:
        iface = RecordingIface()
        iface.mainWindow().resize(1400, 900)
        plugin = RSAssistantPlugin(iface)
        plugin.initGui()
        iface.mainWindow().show()
        qtbot.waitExposed(iface.mainWindow())
        plugin.toggle_action.trigger()  # opening the chat starts the engine, or says it is not set up
        plugins.append(plugin)
        return plugin

    yield start
    for plugin in plugins:
        plugin.unload()
        plugin.iface.mainWindow().close()


@pytest.fixture(scope="module")
def env_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("setup") / "engine-env"


@pytest.fixture(scope="module")
def wheelhouse():
    from tests.wheelhouse import engine_wheelhouse

    return engine_wheelhouse()


def process_group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def setup_button(plugin) -> QPushButton:
    return plugin.dock.findChild(QPushButton, "setupEngineButton")


def point_panel_at(panel, env_dir, wheelhouse) -> None:
    panel.advancedButton.click()
    panel.envDirEdit.setText(str(env_dir))
    panel.wheelhouseEdit.setText(str(wheelhouse))
    panel.torchCombo.setCurrentIndex(panel.torchCombo.findData("cpu"))


def test_a_fresh_profile_shows_the_set_up_panel(open_plugin, qtbot):
    assert not setup_engine.is_complete(profile.default_env_dir()), "the test profile already has an engine"
    plugin = open_plugin()
    qtbot.waitUntil(lambda: plugin.engine.status.state is EngineState.ERROR, timeout=10_000)
    assert plugin.engine.status.fault is EngineFault.NOT_SET_UP
    button = setup_button(plugin)
    assert button is not None and button.isVisible() and button.text() == "Set up the engine"
    panel = plugin.dock.setup_panel
    explanation = panel.explainLabel.text()
    assert "GB" in explanation and str(profile.default_env_dir()) in explanation and "PyTorch" in explanation
    assert (
        "about 1.5 GB" in explanation and "3 GB free" in explanation
    )  # the CPU build: installed, and free while installing
    assert not panel.reasonLabel.isVisible() and not panel.logView.isVisible()
    status = plugin.dock.engineStatusLabel.text()
    assert "not set up" in status and "Restart" not in status and "error" not in status.lower()
    assert not plugin.dock.transcriptView.isVisible() and not plugin.dock.promptEdit.isVisible()


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_cancelling_the_set_up_offers_to_resume_it(open_plugin, qtbot, env_dir, wheelhouse):
    plugin = open_plugin()
    panel = plugin.dock.setup_panel
    qtbot.waitUntil(panel.isVisible, timeout=10_000)
    point_panel_at(panel, env_dir, wheelhouse)
    setup_button(plugin).click()
    assert panel.running and panel.cancelButton.isVisible() and not setup_button(plugin).isEnabled()
    assert panel.logView.isVisible() and not panel.advancedWidget.isVisible()  # the log gets the room
    # cancel while pip installs (step 4 of 6: torch)
    qtbot.waitUntil(lambda: "STEP 4/" in panel.logView.toPlainText(), timeout=SETUP_TIMEOUT_MS)
    group = panel.task.pid
    panel.cancelButton.click()
    qtbot.waitUntil(lambda: not panel.running, timeout=60_000)
    qtbot.waitUntil(lambda: not process_group_alive(group), timeout=10_000)  # the set-up and its pip are gone
    assert setup_button(plugin).text() == "Resume set-up" and setup_button(plugin).isEnabled()
    assert "resumed" in panel.statusLabel.text()
    assert not setup_engine.is_complete(env_dir)  # a cancelled set-up never looks complete
    assert "STEP 4/" in panel.logView.toPlainText()  # the log stays for the person to read
    assert SettingsStore(QgsSettings()).load().engine_python == ""  # nothing saved


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_set_up_from_the_panel_completes_and_the_engine_describes_a_geotiff(
    open_plugin, qtbot, env_dir, wheelhouse, tmp_path
):
    plugin = open_plugin()
    panel = plugin.dock.setup_panel
    qtbot.waitUntil(panel.isVisible, timeout=10_000)
    point_panel_at(panel, env_dir, wheelhouse)
    if env_dir.exists():  # left half-made by the test above (or a crash): the panel offers to resume
        assert setup_button(plugin).text() == "Resume set-up"
    progress = []
    panel.progressBar.valueChanged.connect(progress.append)
    qtbot.mouseClick(setup_button(plugin), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.running, timeout=SETUP_TIMEOUT_MS)

    log_text = panel.logView.toPlainText()
    assert panel.statusLabel.text().startswith("The engine is set up"), (
        panel.statusLabel.text() + "\n" + log_text[-3000:]
    )
    assert progress == sorted(progress) and len(set(progress)) >= 4 and progress[-1] == 100
    python = setup_engine.venv_python(env_dir)
    assert f"ENGINE_PYTHON {python}" in log_text
    assert setup_engine.is_complete(env_dir)
    settings = SettingsStore(QgsSettings()).load()
    assert settings.engine_python == str(python) and settings.setup_torch == "cpu"
    assert settings.setup_find_links == str(wheelhouse) and settings.engine_env_dir == str(env_dir)

    # the engine starts from the new environment, the chat comes back and it answers
    qtbot.waitUntil(lambda: plugin.engine.status.state is EngineState.READY, timeout=ENGINE_START_MS)
    qtbot.waitUntil(lambda: not panel.isVisible() and plugin.dock.transcriptView.isVisible(), timeout=10_000)
    project = QgsProject.instance()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    raster = add_raster(project, write_geotiff(tmp_path / "utm.tif", UTM, UTM_ORIGIN, 10.0), "utm image")
    canvas = plugin.iface.mapCanvas()
    canvas.setDestinationCrs(project.crs())
    canvas.setLayers([raster])
    canvas.setExtent(extent_in_project(project, raster))
    qtbot.waitUntil(lambda: canvas.mapSettings().outputSize() == canvas.viewport().size() and not canvas.isDrawing())
    plugin.dock.imageLayerCombo.setLayer(raster)
    qtbot.mouseClick(plugin.dock.describeButton, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not plugin.controller.busy, timeout=120_000)
    turn = plugin.controller.conversation.turns[-1]
    assert turn.state is TurnState.ANSWERED and turn.answer.strip(), turn
    assert turn.model == "default"  # "auto" routed to the built-in model
