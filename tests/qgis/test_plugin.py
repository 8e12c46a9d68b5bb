"""The plugin as QGIS starts it: translated in French, settings through one adapter, the
region action and map tool in step, and nothing left behind by unload."""

from __future__ import annotations

import pytest
from qgis.core import QgsSettings
from qgis.PyQt.QtCore import QCoreApplication, QEvent
from qgis.PyQt.QtWidgets import QDialogButtonBox, QPushButton

from rs_assistant.core.engine_state import EngineState
from rs_assistant.core.settings import EngineMode, Settings
from rs_assistant.plugin import RSAssistantPlugin
from rs_assistant.ui.settings_dialog import SettingsDialog
from rs_assistant.ui.settings_store import SettingsStore
from tests.qgis.recording_iface import RecordingIface


@pytest.fixture
def qsettings():
    settings = QgsSettings()
    before = settings.value("locale/userLocale", "")
    store = SettingsStore(settings)
    store.clear()
    yield settings
    settings.setValue("locale/userLocale", before)
    store.clear()


@pytest.fixture
def started_plugin(qgis_new_project, qsettings):
    plugins = []

    def start(locale: str = "en") -> RSAssistantPlugin:
        qsettings.setValue("locale/userLocale", locale)
        plugin = RSAssistantPlugin(RecordingIface())
        plugin.initGui()
        plugins.append(plugin)
        return plugin

    yield start
    for plugin in plugins:
        if plugin.dock is not None:
            plugin.unload()


def test_the_plugin_speaks_french(started_plugin):
    plugin = started_plugin("fr")
    assert plugin.dock.sendButton.text() == "Envoyer"
    assert plugin.dock.describeButton.text() == "Décrire"
    assert plugin.select_region_action.text() == "Sélectionner une région"
    assert "Moteur : arrêté" in plugin.dock.engineStatusLabel.text()
    plugin.controller.ask("/describe")
    assert "Choisissez d’abord une couche image." in plugin.dock.transcriptView.toPlainText()


def test_region_action_and_map_tool_stay_in_step_and_unload_cleans_up(started_plugin):
    plugin = started_plugin()
    canvas = plugin.iface.mapCanvas()
    plugin.select_region_action.trigger()
    assert canvas.mapTool() is plugin.region_picker.tool
    assert plugin.select_region_action.isChecked()
    canvas.unsetMapTool(plugin.region_picker.tool)
    assert not plugin.select_region_action.isChecked()
    plugin.select_region_action.trigger()
    window = plugin.iface.mainWindow()
    plugin.unload()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    assert canvas.mapTool() is None
    assert plugin.engine is None and plugin.dock is None
    assert plugin.iface.registered_menus() == []
    assert not [
        a for a in window.findChildren(type(plugin.select_region_action)) if a.objectName().startswith("action")
    ]


def test_settings_round_trip_through_namespaced_keys(qsettings):
    store = SettingsStore(qsettings)
    assert store.load() == Settings()
    chosen = Settings(
        engine_url="http://127.0.0.1:9999", engine_token="t", timeout_s=12, max_restarts=1, output_folder="/tmp/x"
    )
    store.save(chosen)
    assert qsettings.value("rs_assistant/engine_url") == "http://127.0.0.1:9999"
    assert SettingsStore(QgsSettings()).load() == chosen
    qsettings.setValue("rs_assistant/timeout_s", "-5")
    assert store.load() == Settings()  # unusable stored values fall back to the defaults


def test_settings_dialog_edits_and_refuses_a_missing_url(qtbot):
    dialog = SettingsDialog(Settings(timeout_s=30))
    qtbot.addWidget(dialog)
    assert dialog.timeoutSpin.value() == 30 and dialog.managedRadio.isChecked()
    assert not dialog.connectGroup.isEnabled()
    dialog.connectRadio.setChecked(True)
    assert dialog.connectGroup.isEnabled() and not dialog.managedGroup.isEnabled()
    dialog.buttonBox.button(QDialogButtonBox.StandardButton.Ok).click()
    assert dialog.errorLabel.text() and dialog.result() == 0
    dialog.urlEdit.setText("http://127.0.0.1:8765")
    dialog.tokenEdit.setText("abc")
    dialog.timeoutSpin.setValue(45)
    dialog.buttonBox.button(QDialogButtonBox.StandardButton.Ok).click()
    assert dialog.result() == 1
    settings = dialog.settings()
    assert settings.mode is EngineMode.CONNECT and settings.engine_token == "abc" and settings.timeout_s == 45


def test_an_engine_that_is_not_there_shows_why(started_plugin, qsettings, qtbot):
    SettingsStore(qsettings).save(Settings(engine_python="/nonexistent/python3"))
    plugin = started_plugin()
    plugin.iface.mainWindow().show()
    plugin.toggle_action.trigger()  # opening the chat starts the engine
    assert plugin.dock.isVisible()
    qtbot.waitUntil(lambda: plugin.engine.status.state is EngineState.ERROR, timeout=10000)
    panel = plugin.dock.setup_panel  # a Python that is gone: the set-up, not a restart, helps
    assert panel.isVisible() and panel.findChild(QPushButton, "setupEngineButton").isVisible()
    reason = panel.reasonLabel.text()
    assert "Python was not found" in reason and "/nonexistent/python3" in reason
    assert not plugin.dock.transcriptView.isVisible()
