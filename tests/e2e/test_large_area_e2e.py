"""End to end, large areas: the plugin with its engine (test backends), ``/search`` typed in the
dock, and a Processing algorithm run while the plugin's engine is up (it uses that engine).

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/e2e/test_large_area_e2e.py -q
"""

from __future__ import annotations

import sys

import pytest
from qgis import processing
from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsGeometry, QgsProject, QgsVectorLayer

from rs_assistant.core.conversation import TurnState
from rs_assistant.core.engine_state import EngineState
from rs_assistant.core.settings import Settings
from rs_assistant.processing.engine_connection import ENGINE
from tests.e2e.driver import START_TIMEOUT_MS, ask, select_model, start_plugin, stop_plugin, wait_answer
from tests.qgis.conftest import add_raster, extent_in_project
from tests.qgis.test_processing_large_area import TILES, pixel_rect, write_scene

BIG_RED = (1000, 1000, 1100, 1100)  # in a 1200-pixel scene: 3 x 3 tiles of the dock's 512 pixels


@pytest.fixture(scope="module")
def plugin(models_file, tmp_path_factory, qgis_processing):
    out = tmp_path_factory.mktemp("results")
    plugin = start_plugin(
        Settings(
            engine_python=sys.executable,
            models_file=str(models_file),
            start_timeout_s=120,
            timeout_s=60,
            output_folder=str(out),
        )
    )
    yield plugin
    stop_plugin(plugin)


@pytest.fixture
def ready(plugin, qtbot, tmp_path):
    qtbot.waitUntil(lambda: plugin.engine.status.state is EngineState.READY, timeout=START_TIMEOUT_MS)
    qtbot.waitUntil(lambda: plugin.dock.modelCombo.count() >= 3, timeout=10_000)
    project = QgsProject.instance()
    project.clear()
    plugin.controller.new_chat()
    plugin.controller.clear_region()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    raster = add_raster(project, write_scene(tmp_path / "scene.tif", red=BIG_RED, size=1200), "scene")
    canvas = plugin.iface.mapCanvas()
    canvas.setDestinationCrs(project.crs())
    canvas.setLayers([raster])
    canvas.setExtent(extent_in_project(project, raster).buffered(300))
    plugin.dock.imageLayerCombo.setLayer(raster)
    return plugin, raster


def test_search_in_the_dock_ranks_the_tiles_of_the_whole_layer(ready, qtbot):
    plugin, raster = ready
    select_model(plugin, "tiles")
    ask(qtbot, plugin, "/search a red roof")
    turn = wait_answer(qtbot, plugin)
    assert turn.state is TurnState.ANSWERED, (turn.error, turn.error_detail)
    # no region drawn: the whole layer's tiles, only the relevant ones named, by rank, place and similarity
    assert turn.answer.startswith("Best matches for “a red roof” (") and "tiles of the layer): #1 " in turn.answer
    assert "(100%)" in turn.answer and "tile " not in turn.answer.split(":", 1)[1]
    [layer] = plugin.controller.last_layers
    assert layer.crs().authid() == "EPSG:3857" and 1 <= layer.featureCount() <= 5
    best = next(f for f in layer.getFeatures() if f["rank"] == 1)
    red = QgsGeometry.fromRect(pixel_rect(BIG_RED))
    red.transform(QgsCoordinateTransform(raster.crs(), QgsProject.instance().crs(), QgsProject.instance()))
    assert best.geometry().intersects(red)
    assert "a red roof" in plugin.dock.transcriptView.toPlainText()


def test_processing_uses_the_plugins_engine_while_it_runs(ready, tmp_path):
    plugin, raster = ready
    result = processing.run(
        "rs_assistant:describetiles",
        {"INPUT": raster, "MODEL": "tiles", "TILE_SIZE": 256, "OVERLAP": 16, "OUTPUT": str(tmp_path / "captions.gpkg")},
    )
    assert result["FEATURES"] == result["TILES"] == TILES  # 1200 pixels in steps of 240: 5 x 5
    assert ENGINE.process_id is None  # no second engine was started
    layer = QgsVectorLayer(str(tmp_path / "captions.gpkg"), "captions", "ogr")
    assert layer.featureCount() == TILES and all(f["text"] for f in layer.getFeatures())
