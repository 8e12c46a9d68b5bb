"""End to end: the engine process the plugin started goes away when QGIS quits and when the
plugin unloads, whether it was ready or still starting, and nothing restarts it afterwards.

The process must be gone when ``aboutToQuit`` or ``unload()`` returns, not later: after
``aboutToQuit`` QGIS's event loop has ended, so a process left to a deferred delete or a timer
could outlive QGIS.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/e2e/test_engine_lifecycle.py -q
"""

from __future__ import annotations

import os
import sys

from qgis.core import QgsApplication

from rs_assistant.core.engine_state import EngineState
from rs_assistant.core.settings import Settings
from tests.e2e.driver import START_TIMEOUT_MS, start_plugin, stop_plugin


def alive(pid: int) -> bool:
    """Whether a process with this id exists (an exited child QProcess has reaped is gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_managed(models_file, tmp_path):
    return start_plugin(
        Settings(
            engine_python=sys.executable,
            models_file=str(models_file),
            max_restarts=2,
            start_timeout_s=120,
            timeout_s=60,
            output_folder=str(tmp_path),
        )
    )


def engine_pid(qtbot, plugin, state: EngineState) -> int:
    """The id of the engine process the plugin started, once the engine is in ``state``."""
    qtbot.waitUntil(
        lambda: plugin.engine.status.state is state and bool(plugin.engine.process_id), timeout=START_TIMEOUT_MS
    )
    pid = plugin.engine.process_id
    assert alive(pid)
    return pid


def quit_qgis() -> None:
    """What QGIS does when a person quits it, before it unloads the plugins."""
    QgsApplication.instance().aboutToQuit.emit()


def test_quitting_qgis_stops_the_ready_engine_and_unload_still_works(models_file, qtbot, tmp_path):
    plugin = start_managed(models_file, tmp_path)
    try:
        pid = engine_pid(qtbot, plugin, EngineState.READY)
        quit_qgis()
        assert not alive(pid)
        assert plugin.engine.status.state is EngineState.STOPPED
        assert plugin.controller.client is None
        qtbot.wait(2 * plugin.engine.RESTART_DELAY_MS)  # a stop on quit is no crash: nothing restarts it
        assert plugin.engine.process_id is None and plugin.engine.status.state is EngineState.STOPPED
    finally:
        stop_plugin(plugin)  # QGIS unloads the plugins after aboutToQuit: that must not fail
    assert plugin.engine is None


def test_quitting_qgis_while_the_engine_starts_leaves_no_process(models_file, qtbot, tmp_path):
    plugin = start_managed(models_file, tmp_path)
    try:
        pid = engine_pid(qtbot, plugin, EngineState.STARTING)
        quit_qgis()
        assert not alive(pid)
        qtbot.wait(2 * plugin.engine.RESTART_DELAY_MS)
        assert plugin.engine.process_id is None and plugin.engine.status.state is EngineState.STOPPED
    finally:
        stop_plugin(plugin)


def test_unload_stops_the_engine_it_started_and_removes_its_token(models_file, qtbot, tmp_path):
    plugin = start_managed(models_file, tmp_path)
    try:
        pid = engine_pid(qtbot, plugin, EngineState.READY)
        token_dir = plugin.engine._token_dir
        assert token_dir is not None and token_dir.is_dir()
    finally:
        stop_plugin(plugin)
    assert not alive(pid)
    assert not token_dir.exists()
    # QGIS quitting after the plugin was unloaded reaches nothing of it
    quit_qgis()
