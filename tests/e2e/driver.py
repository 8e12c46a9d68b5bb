"""Driving the plugin end to end: start it with settings, type in the prompt, wait for answers."""

from __future__ import annotations

from qgis.core import QgsSettings
from qgis.PyQt.QtCore import Qt

from rs_assistant.core.settings import Settings
from rs_assistant.plugin import RSAssistantPlugin
from rs_assistant.ui.settings_store import SettingsStore
from tests.qgis.recording_iface import RecordingIface

START_TIMEOUT_MS = 120_000
ANSWER_TIMEOUT_MS = 60_000


def start_plugin(settings: Settings) -> RSAssistantPlugin:
    SettingsStore(QgsSettings()).save(settings)
    iface = RecordingIface()
    iface.mainWindow().resize(1400, 800)
    plugin = RSAssistantPlugin(iface)
    plugin.initGui()
    iface.mainWindow().show()
    plugin.toggle_action.trigger()  # opening the chat starts the engine
    return plugin


def stop_plugin(plugin: RSAssistantPlugin) -> None:
    plugin.unload()
    plugin.iface.mainWindow().close()
    SettingsStore(QgsSettings()).clear()


def select_model(plugin, name: str) -> None:
    index = plugin.dock.modelCombo.findText(name)
    plugin.dock.modelCombo.setCurrentIndex(index)
    plugin.dock.modelCombo.activated.emit(index)


def ask(qtbot, plugin, text: str) -> None:
    qtbot.keyClicks(plugin.dock.promptEdit, text)
    qtbot.keyClick(plugin.dock.promptEdit, Qt.Key.Key_Return)


def wait_answer(qtbot, plugin, timeout: int = ANSWER_TIMEOUT_MS):
    qtbot.waitUntil(lambda: not plugin.controller.busy, timeout=timeout)
    return plugin.controller.conversation.turns[-1]
