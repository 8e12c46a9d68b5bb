"""Two QGIS windows (two plugins, two docks) on one engine in connect mode: both answer, and
stopping one's request leaves the other's alone.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/e2e/test_two_windows_e2e.py -q
"""

from __future__ import annotations

from rs_assistant.core.conversation import TurnState
from rs_assistant.core.engine_state import EngineState
from rs_assistant.core.settings import Settings
from tests.e2e.driver import ask, select_model, start_plugin, stop_plugin
from tests.e2e.test_connect_e2e import project_with_raster


def test_two_docks_on_one_engine_both_answer(running_engine, qgis_new_project, qtbot, tmp_path):
    url, token = running_engine
    settings = Settings(engine_url=url, engine_token=token, timeout_s=60, output_folder=str(tmp_path))
    first, second = start_plugin(settings), start_plugin(settings)
    try:
        for plugin in (first, second):
            qtbot.waitUntil(lambda plugin=plugin: plugin.engine.status.state is EngineState.READY, timeout=20_000)
            qtbot.waitUntil(lambda plugin=plugin: plugin.dock.modelCombo.count() >= 2, timeout=10_000)
        raster = project_with_raster(tmp_path)
        for plugin in (first, second):
            plugin.dock.imageLayerCombo.setLayer(raster)
            plugin.controller.set_region(raster.extent(), raster.crs())
        ask(qtbot, first, "/describe")
        ask(qtbot, second, "/describe")  # at the same time
        qtbot.waitUntil(lambda: not first.controller.busy and not second.controller.busy, timeout=60_000)
        for plugin in (first, second):
            turn = plugin.controller.conversation.turns[-1]
            assert turn.state is TurnState.ANSWERED, (turn.error, turn.error_detail)
            assert turn.answer in plugin.dock.transcriptView.toPlainText()

        select_model(first, "slow")  # a 30 s answer: stopped
        ask(qtbot, first, "/describe")
        ask(qtbot, second, "/describe")
        qtbot.waitUntil(lambda: not second.controller.busy, timeout=30_000)
        first.controller.cancel()
        qtbot.waitUntil(lambda: not first.controller.busy, timeout=10_000)
        assert first.controller.conversation.turns[-1].state is TurnState.CANCELLED
        assert second.controller.conversation.turns[-1].state is TurnState.ANSWERED
    finally:
        stop_plugin(second)
        stop_plugin(first)
