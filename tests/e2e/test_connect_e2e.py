"""Connecting to an engine that is already running (a URL and a token): timeouts and an absent engine.

QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/e2e/test_connect_e2e.py -q
"""

from __future__ import annotations

import sys

from qgis.core import QgsCoordinateReferenceSystem, QgsProject

from rs_assistant.core.conversation import TurnState
from rs_assistant.core.engine_state import EngineFault, EngineState
from rs_assistant.core.protocol import ErrorCode
from rs_assistant.core.settings import Settings
from tests.e2e.test_chat_e2e import ask, select_model, start_plugin, stop_plugin, wait_answer
from tests.qgis.conftest import UTM, UTM_ORIGIN, add_raster
from tests.qgis.rasters import write_geotiff


def project_with_raster(tmp_path):
    project = QgsProject.instance()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    return add_raster(project, write_geotiff(tmp_path / "utm.tif", UTM, UTM_ORIGIN, 10.0), "utm image")


def test_connect_mode_times_out_with_one_message(running_engine, qgis_new_project, qtbot, tmp_path):
    url, token = running_engine
    plugin = start_plugin(Settings(engine_url=url, engine_token=token, timeout_s=1, output_folder=str(tmp_path)))
    try:
        qtbot.waitUntil(lambda: plugin.engine.status.state is EngineState.READY, timeout=20_000)
        qtbot.waitUntil(lambda: plugin.dock.modelCombo.count() >= 2, timeout=10_000)
        raster = project_with_raster(tmp_path)
        plugin.dock.imageLayerCombo.setLayer(raster)
        plugin.controller.set_region(raster.extent(), raster.crs())
        select_model(plugin, "slow")
        ask(qtbot, plugin, "/describe")
        turn = wait_answer(qtbot, plugin, timeout=15_000)
        assert turn.state is TurnState.FAILED and turn.error is ErrorCode.TIMEOUT
        assert "did not answer in time" in plugin.dock.transcriptView.toPlainText()
    finally:
        stop_plugin(plugin)


def test_connect_mode_without_an_engine_says_so(qgis_new_project, qtbot, tmp_path):
    plugin = start_plugin(Settings(engine_url="http://127.0.0.1:9", engine_token="x", output_folder=str(tmp_path)))
    try:
        qtbot.waitUntil(lambda: plugin.engine.status.state is EngineState.ERROR, timeout=10_000)
        assert "cannot be reached" in plugin.dock.engineStatusLabel.text()
        raster = project_with_raster(tmp_path)
        plugin.dock.imageLayerCombo.setLayer(raster)
        plugin.controller.set_region(raster.extent(), raster.crs())
        ask(qtbot, plugin, "/describe")
        assert "engine is not ready" in plugin.dock.transcriptView.toPlainText()
    finally:
        stop_plugin(plugin)


def test_an_engine_that_crashes_at_start_is_restarted_a_bounded_number_of_times(qgis_new_project, qtbot, tmp_path):
    crashing = tmp_path / "python"  # an interpreter that dies at once, whatever it is asked to run
    crashing.write_text(
        f"#!{sys.executable}\nimport sys\nprint('Fatal Python error: Aborted', file=sys.stderr)\nsys.exit(1)\n"
    )
    crashing.chmod(0o755)
    plugin = start_plugin(Settings(engine_python=str(crashing), max_restarts=1, output_folder=str(tmp_path)))
    try:
        starts = []
        plugin.engine.statusChanged.connect(
            lambda status: starts.append(status) if status.state is EngineState.STARTING else None
        )
        qtbot.waitUntil(
            lambda: (
                plugin.engine.status.state is EngineState.ERROR
                and plugin.engine.status.restarts_left == 0
                and len(starts) == 1
            ),
            timeout=60_000,
        )
        qtbot.wait(1500)  # no further restart comes
        assert len(starts) == 1 and plugin.engine.status.state is EngineState.ERROR
        label = plugin.dock.engineStatusLabel.text()
        assert "exited with code 1" in label and "Fatal Python error" in label and "Restarting" not in label
    finally:
        stop_plugin(plugin)


def test_an_engine_refusing_its_models_file_says_so_and_is_not_restarted(qgis_new_project, qtbot, tmp_path):
    plugin = start_plugin(
        Settings(
            engine_python=sys.executable,
            models_file=str(tmp_path / "missing.toml"),
            max_restarts=3,
            output_folder=str(tmp_path),
        )
    )
    try:
        qtbot.waitUntil(lambda: plugin.engine.status.state is EngineState.ERROR, timeout=60_000)
        qtbot.wait(1500)  # a restart cannot fix the file: none comes
        assert plugin.engine.status.state is EngineState.ERROR and plugin.engine.status.fault is EngineFault.BAD_CONFIG
        label = plugin.dock.engineStatusLabel.text()
        assert "configuration has an error" in label and "missing.toml does not exist" in label and "Restart" in label
        assert "Restarting" not in label and "ERROR rs_assistant" not in label
    finally:
        stop_plugin(plugin)
