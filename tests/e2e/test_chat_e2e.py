"""End to end: the plugin starts a real engine process (test backends), a person draws a region
and asks; the answer comes back as layers. Also cancel, a killed engine, compare across CRSs
and an engine error.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/e2e -q
"""

from __future__ import annotations

import os
import signal
import sys

import pytest
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsProject,
    QgsRectangle,
)
from qgis.PyQt.QtCore import Qt

from rs_assistant.core.conversation import TurnState
from rs_assistant.core.engine_state import EngineFault, EngineState
from rs_assistant.core.protocol import ErrorCode
from rs_assistant.core.settings import Settings
from rs_assistant.ui.results import GROUP_NAME
from tests.e2e.driver import START_TIMEOUT_MS, ask, select_model, start_plugin, stop_plugin, wait_answer
from tests.qgis.conftest import UTM, UTM_ORIGIN, add_raster, drag, extent_in_project, map_point
from tests.qgis.rasters import write_geotiff


@pytest.fixture(scope="module")
def plugin(models_file, tmp_path_factory):
    """One plugin and its engine for the module (the engine takes seconds to start)."""
    out = tmp_path_factory.mktemp("results")
    plugin = start_plugin(
        Settings(
            engine_python=sys.executable,
            models_file=str(models_file),
            max_restarts=2,
            start_timeout_s=120,
            timeout_s=60,
            output_folder=str(out),
        )
    )
    yield plugin
    stop_plugin(plugin)


@pytest.fixture
def ready(plugin, qtbot, tmp_path):
    """The plugin with a ready engine, a fresh project in EPSG:3857 and a UTM raster on the canvas."""
    qtbot.waitUntil(lambda: plugin.engine.status.state is EngineState.READY, timeout=START_TIMEOUT_MS)
    qtbot.waitUntil(lambda: plugin.dock.modelCombo.count() >= 2, timeout=10_000)
    project = QgsProject.instance()
    project.clear()
    plugin.controller.new_chat()
    plugin.controller.clear_region()
    select_model(plugin, "default")
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    raster = add_raster(project, write_geotiff(tmp_path / "utm.tif", UTM, UTM_ORIGIN, 10.0), "utm image")
    canvas = plugin.iface.mapCanvas()
    canvas.setDestinationCrs(project.crs())
    canvas.setLayers([raster])
    canvas.setExtent(extent_in_project(project, raster).buffered(300))
    qtbot.waitUntil(lambda: canvas.mapSettings().outputSize() == canvas.viewport().size() and not canvas.isDrawing())
    plugin.dock.imageLayerCombo.setLayer(raster)
    return plugin, raster


def bright_square_in_project(project, raster) -> QgsGeometry:
    """The raster's bright pixels (columns and rows 80-120), in the project CRS."""
    x0, y0 = UTM_ORIGIN
    square = QgsGeometry.fromRect(QgsRectangle(x0 + 800, y0 - 1200, x0 + 1200, y0 - 800))
    square.transform(QgsCoordinateTransform(raster.crs(), project.crs(), project))
    return square


def test_find_in_a_drawn_region_with_a_real_engine(ready, qtbot):
    plugin, raster = ready
    project = QgsProject.instance()
    canvas = plugin.iface.mapCanvas()
    bright = bright_square_in_project(project, raster).boundingBox()
    start = (
        canvas.getCoordinateTransform()
        .transform(bright.xMinimum() - 300, bright.yMaximum() + 300)
        .toQPointF()
        .toPoint()
    )
    end = (
        canvas.getCoordinateTransform()
        .transform(bright.xMaximum() + 300, bright.yMinimum() - 300)
        .toQPointF()
        .toPoint()
    )
    region = QgsRectangle(map_point(canvas, start), map_point(canvas, end))
    region.normalize()
    plugin.select_region_action.trigger()
    drag(qtbot, canvas, start, end)

    ask(qtbot, plugin, "/find bright roof")
    turn = wait_answer(qtbot, plugin)

    assert turn.state is TurnState.ANSWERED, (turn.error, turn.error_detail)
    assert "bright roof" in plugin.dock.transcriptView.toPlainText()
    group = project.layerTreeRoot().findGroup(GROUP_NAME)
    [layer] = [node.layer() for node in group.findLayers()]
    assert layer.name() == "find bright roof" and layer.crs().authid() == "EPSG:3857"
    features = list(layer.getFeatures())
    assert len(features) == turn.feature_count >= 1
    best = max(features, key=lambda f: f["score"])
    assert best["label"] == "bright roof" and best["kind"] == "box" and best["model"] == "default"
    assert best["prompt"] == "bright roof" and best["turn"] == turn.id and "request_id" not in layer.fields().names()
    region_geom = QgsGeometry.fromRect(region.buffered(region.width() * 0.01))
    assert all(region_geom.contains(f.geometry()) for f in features)
    # the box found lies on the bright square, reprojected from UTM to Web Mercator
    square = bright_square_in_project(project, raster)
    overlap = best.geometry().intersection(square).area()
    assert overlap > 0.8 * square.area() and overlap > 0.8 * best.geometry().area()


def test_compare_two_layers_in_different_crs(ready, qtbot, tmp_path):
    plugin, before = ready
    project = QgsProject.instance()
    # the same place, in WGS 84, with the bright square moved: something changed
    extent = QgsCoordinateTransform(
        before.crs(), QgsCoordinateReferenceSystem("EPSG:4326"), project
    ).transformBoundingBox(before.extent())
    after = add_raster(
        project,
        write_geotiff(
            tmp_path / "after.tif",
            4326,
            (extent.xMinimum(), extent.yMaximum()),
            extent.width() / 200,
            bright=(20, 20, 60, 60),
        ),
        "after wgs84",
    )
    plugin.dock.beforeLayerCombo.setLayer(before)
    plugin.dock.afterLayerCombo.setLayer(after)
    qtbot.mouseClick(plugin.dock.compareButton, Qt.MouseButton.LeftButton)
    turn = wait_answer(qtbot, plugin)
    assert turn.state is TurnState.ANSWERED, (turn.error, turn.error_detail)
    assert turn.layer_names == ("utm image", "after wgs84")
    [layer] = plugin.controller.last_layers
    assert layer.crs().authid() == "EPSG:3857" and layer.featureCount() >= 1
    assert {f["kind"] for f in layer.getFeatures()} == {"change"}
    assert len(plugin.controller.thumbnails(turn.id)) == 2


def test_engine_error_json_is_one_message_and_the_chat_goes_on(ready, qtbot):
    plugin, _raster = ready
    ask(qtbot, plugin, "/segment fields")  # the test backend cannot segment
    turn = wait_answer(qtbot, plugin)
    assert turn.state is TurnState.FAILED and turn.error is ErrorCode.UNSUPPORTED_TASK
    assert "This model cannot do that" in plugin.dock.transcriptView.toPlainText()
    ask(qtbot, plugin, "/describe")
    assert wait_answer(qtbot, plugin).state is TurnState.ANSWERED
    assert len(plugin.controller.conversation.turns) == 2


def test_a_view_the_image_barely_covers_is_refused_with_what_to_do(ready, qtbot):
    plugin, raster = ready
    canvas = plugin.iface.mapCanvas()
    canvas.setExtent(extent_in_project(QgsProject.instance(), raster).buffered(50_000))  # zoomed far out
    qtbot.waitUntil(lambda: not canvas.isDrawing())
    ask(qtbot, plugin, "/describe")
    turn = wait_answer(qtbot, plugin)
    assert turn.state is TurnState.FAILED and turn.error is ErrorCode.MOSTLY_OUTSIDE
    assert "Zoom to the layer, or draw a region over the image" in plugin.dock.transcriptView.toPlainText()
    canvas.setExtent(extent_in_project(QgsProject.instance(), raster))
    qtbot.waitUntil(lambda: not canvas.isDrawing())
    ask(qtbot, plugin, "/describe")
    assert wait_answer(qtbot, plugin).state is TurnState.ANSWERED


def test_cancel_a_running_request(ready, qtbot):
    plugin, _raster = ready
    select_model(plugin, "slow")
    ask(qtbot, plugin, "/describe")
    qtbot.waitUntil(lambda: plugin.controller._task is not None, timeout=10_000)
    qtbot.wait(500)
    assert plugin.dock.sendButton.text() == "Stop"
    qtbot.mouseClick(plugin.dock.sendButton, Qt.MouseButton.LeftButton)
    turn = wait_answer(qtbot, plugin, timeout=5_000)
    assert turn.state is TurnState.CANCELLED
    assert plugin.engine.status.state is EngineState.READY
    select_model(plugin, "default")
    ask(qtbot, plugin, "/describe")
    assert wait_answer(qtbot, plugin).state is TurnState.ANSWERED


def test_killed_engine_shows_the_error_and_restarts(ready, qtbot):
    plugin, _raster = ready
    select_model(plugin, "slow")
    ask(qtbot, plugin, "/describe")
    qtbot.waitUntil(lambda: plugin.controller._task is not None, timeout=10_000)
    qtbot.wait(500)
    os.kill(plugin.engine.process_id, signal.SIGKILL)
    turn = wait_answer(qtbot, plugin, timeout=15_000)
    assert turn.state is TurnState.FAILED and turn.error is ErrorCode.ENGINE_UNREACHABLE
    assert "The engine cannot be reached." in plugin.dock.transcriptView.toPlainText()
    qtbot.waitUntil(
        lambda: (
            plugin.engine.status.fault is EngineFault.EXITED
            or "restarting" in plugin.dock.engineStatusLabel.text().lower()
        ),
        timeout=10_000,
    )
    assert "crashed" in plugin.dock.engineStatusLabel.text()
    qtbot.waitUntil(lambda: plugin.engine.status.state is EngineState.READY, timeout=START_TIMEOUT_MS)
    qtbot.waitUntil(lambda: plugin.controller.client is not None, timeout=10_000)
    select_model(plugin, "default")
    ask(qtbot, plugin, "/describe")
    assert wait_answer(qtbot, plugin).state is TurnState.ANSWERED
    assert len(plugin.controller.conversation.turns) == 2  # the conversation was kept
