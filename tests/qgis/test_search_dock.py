"""``/search <description>`` in the chat dock: a batch job over the drawn region (else the whole
layer), progress in the dock, the ranked tiles as a styled layer and a transcript line.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/qgis/test_search_dock.py -q
"""

from __future__ import annotations

from osgeo import gdal
from qgis.core import QgsGeometry, QgsRasterLayer, QgsRectangle, QgsRenderContext, QgsWkbTypes

from rs_assistant.core.conversation import TurnState
from rs_assistant.core.protocol import ErrorCode, ProtocolError, Task
from rs_assistant.ui.results import GEOPACKAGE, GROUP_NAME
from tests.qgis.fake_engine import FakeEngineClient
from tests.qgis.test_chat_dock import ask, select_region, wait_answer


def test_search_in_a_drawn_region_adds_a_ranked_tile_layer(make_assistant, qtbot, tmp_path):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    region = select_region(qtbot, assistant)
    progress = []
    assistant.controller.progressChanged.connect(progress.append)

    ask(qtbot, assistant, "/search a harbour with many boats")
    turn = wait_answer(qtbot, assistant)

    request = assistant.client.requests[-1]
    assert request.task is Task.RETRIEVE and request.prompt == "a harbour with many boats"
    assert request.sources == (assistant.raster.source(),)
    assert request.output_crs == "EPSG:3857" and request.extent_crs == "EPSG:3857"
    assert QgsRectangle(*request.extent).toString(1) == region.toString(1)
    assert request.options.top_k == 5
    assert progress and max(progress) >= 75  # the dock's bar followed the tiles

    # only the relevant tiles (not all 4 of the region), by rank, place and similarity: no tile ids, no raw scores
    assert turn.state is TurnState.ANSWERED and turn.feature_count == 2
    transcript = assistant.dock.transcriptView.toPlainText()
    assert "/search a harbour with many boats" in transcript
    assert (
        "Best matches for “a harbour with many boats” (2 of 4 tiles of the region): #1 south-east (100%), "
        "#2 north-east (67%). Similarity is relative to the tiles searched (100% = the best); tiles under 50% "
        "are not shown."
    ) in " ".join(transcript.split())
    assert "tile 3" not in transcript and "0.80" not in transcript
    assert "2 tile(s), best first" in transcript and "#1 · 100%" in transcript and "#2 · 67%" in transcript
    assert "m²" not in transcript  # a tile's area says nothing about the match

    [layer] = assistant.controller.last_layers
    assert layer.name() == "search a harbour with many boats"
    assert layer.source().startswith(str(tmp_path / "out" / GEOPACKAGE))
    assert layer.crs().authid() == "EPSG:3857"
    assert layer.geometryType() == QgsWkbTypes.GeometryType.PolygonGeometry
    features = sorted(layer.getFeatures(), key=lambda f: f["rank"])
    assert [(f["rank"], f["similarity"], f["place"], f["score"]) for f in features] == [
        (1, 100, "south-east", 1.0),
        (2, 67, "north-east", 0.67),
    ]
    assert [f["kind"] for f in features] == ["tile"] * 2
    assert "text" not in layer.fields().names() and "tile" not in layer.fields().names()  # no all-NULL column
    assert "request_id" not in layer.fields().names() and {f["prompt"] for f in features} == {
        "a harbour with many boats"
    }
    inside = QgsGeometry.fromRect(region).buffer(1, 1)
    assert all(inside.contains(f.geometry()) for f in features)
    assert layer.labelsEnabled() and "rank" in layer.labeling().settings().fieldName  # resources/styles/result_tile.qml
    renderer = layer.renderer()  # heat-styled on the similarity
    assert renderer.type() == "graduatedSymbol" and renderer.classAttribute() == "similarity"
    context = QgsRenderContext()
    renderer.startRender(context, layer.fields())
    assert [renderer.symbolForFeature(f, context).color().name() for f in features] == [
        "#e31a1c",
        "#fecc5c",
    ]  # 85-100%: red, 50-70%: yellow-orange
    renderer.stopRender(context)
    group = assistant.project.layerTreeRoot().findGroup(GROUP_NAME)
    assert [node.layer() for node in group.findLayers()] == [layer]


def test_search_without_a_region_covers_the_whole_layer(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/search fields")
    turn = wait_answer(qtbot, assistant)
    request = assistant.client.requests[-1]
    assert request.extent is None and request.extent_crs is None  # the engine tiles the whole raster
    assert turn.state is TurnState.ANSWERED
    assert turn.region is not None  # the layer's extent is shown as the turn's region
    assert "tiles of the layer)" in turn.answer and "of the region" not in turn.answer  # and the answer says so


def test_search_needs_a_description_a_file_and_an_engine(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/search")
    assert "needs to know what to look for" in assistant.dock.transcriptView.toPlainText()

    gdal.Translate("/vsimem/search.tif", assistant.raster.source())  # no file on disk, like a web layer
    remote = QgsRasterLayer("/vsimem/search.tif", "remote")
    assistant.project.addMapLayer(remote)
    assistant.dock.imageLayerCombo.setLayer(remote)
    ask(qtbot, assistant, "/search boats")
    assert "runs over a raster file on this computer" in assistant.dock.transcriptView.toPlainText()
    gdal.Unlink("/vsimem/search.tif")

    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    assistant.controller.set_client(None)
    ask(qtbot, assistant, "/search boats")
    assert "engine is not ready" in assistant.dock.transcriptView.toPlainText()
    assert assistant.client.requests == []


def test_search_can_be_cancelled_and_errors_are_shown(make_assistant, qtbot):
    from qgis.PyQt.QtCore import Qt

    assistant = make_assistant(FakeEngineClient(wait_for_cancel=True))
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/search boats")
    qtbot.waitUntil(assistant.client.started.is_set, timeout=10000)
    qtbot.waitUntil(lambda: assistant.dock.sendButton.text() == "Stop")
    assert assistant.dock.progressBar.isVisible()
    qtbot.mouseClick(assistant.dock.sendButton, Qt.MouseButton.LeftButton)
    turn = wait_answer(qtbot, assistant)
    assert turn.state is TurnState.CANCELLED
    assert not assistant.controller.last_layers or assistant.controller.last_layers[0].name() != "search boats"

    assistant.client.wait_for_cancel = False
    assistant.client.error = ProtocolError(ErrorCode.ENGINE_UNREACHABLE, "lost the connection to the engine")
    ask(qtbot, assistant, "/search boats")
    turn = wait_answer(qtbot, assistant)
    assert turn.state is TurnState.FAILED and turn.error is ErrorCode.ENGINE_UNREACHABLE
    assert "cannot be reached" in assistant.dock.transcriptView.toPlainText()
    assert assistant.dock.progressBar.maximum() == 0 and not assistant.dock.progressBar.isVisible()
