"""The chat dock driven as a person would (mouse on the canvas, keys in the prompt), against a
recording engine client: the requests it sends, the transcript and the result layers."""

from __future__ import annotations

import re

from qgis.core import QgsApplication, QgsCoordinateReferenceSystem, QgsGeometry, QgsRectangle, QgsWkbTypes
from qgis.PyQt.QtCore import QPoint, Qt

from rs_assistant.core.conversation import TurnState
from rs_assistant.core.protocol import ErrorCode, ProtocolError, Task
from rs_assistant.ui.results import GEOPACKAGE, GROUP_NAME
from tests.qgis.conftest import drag, extent_in_project, map_point
from tests.qgis.fake_engine import FakeEngineClient


def ask(qtbot, assistant, text: str) -> None:
    qtbot.keyClicks(assistant.dock.promptEdit, text)
    qtbot.keyClick(assistant.dock.promptEdit, Qt.Key.Key_Return)


def wait_answer(qtbot, assistant, timeout: int = 15000):
    qtbot.waitUntil(lambda: not assistant.controller.busy, timeout=timeout)
    return assistant.controller.conversation.turns[-1]


def select_region(qtbot, assistant, start=QPoint(200, 250), end=QPoint(400, 420)) -> QgsRectangle:  # noqa: B008 (QPoint is immutable here: never modified)
    canvas = assistant.canvas
    qtbot.waitUntil(lambda: canvas.mapSettings().outputSize() == canvas.viewport().size() and not canvas.isDrawing())
    assert canvas.viewport().rect().contains(end)
    expected = QgsRectangle(map_point(assistant.canvas, start), map_point(assistant.canvas, end))
    expected.normalize()
    assistant.picker.activate()
    drag(qtbot, assistant.canvas, start, end)
    return expected


def test_find_in_a_drawn_region_makes_a_layer_in_the_project_crs(make_assistant, qtbot, tmp_path):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    region = select_region(qtbot, assistant)
    assert assistant.controller.region is not None
    assert assistant.controller.region.toString(1) == region.toString(1)
    assert " px" in assistant.dock.regionLabel.text() and "m" in assistant.dock.regionLabel.text()

    ask(qtbot, assistant, "/find storage tanks")
    turn = wait_answer(qtbot, assistant)

    request = assistant.client.requests[-1]
    assert request.task is Task.GROUND and request.prompt == "storage tanks"
    assert request.output_crs == "EPSG:3857"
    image = request.images[0]
    assert image.source == assistant.raster.source()  # file-backed: sent as its path
    assert image.crs == "EPSG:3857"
    assert QgsRectangle(*image.extent).toString(1) == region.toString(1)

    assert turn.state is TurnState.ANSWERED and turn.feature_count == 2
    transcript = assistant.dock.transcriptView.toPlainText()
    assert "/find storage tanks" in transcript and "found 2" in transcript
    assert assistant.dock.promptEdit.toPlainText() == ""

    group = assistant.project.layerTreeRoot().findGroup(GROUP_NAME)
    assert group is not None
    [layer] = [node.layer() for node in group.findLayers()]
    assert layer.name() == "find storage tanks"
    assert layer.crs().authid() == "EPSG:3857"
    assert layer.geometryType() == QgsWkbTypes.GeometryType.PolygonGeometry
    assert layer.source().startswith(str(tmp_path / "out" / GEOPACKAGE))
    assert layer.featureCount() == 2
    features = sorted(layer.getFeatures(), key=lambda f: -f["score"])
    assert [f["label"] for f in features] == ["storage tanks"] * 2
    assert [f["score"] for f in features] == [0.9, 0.7]
    assert {f["kind"] for f in features} == {"box"}
    assert {f["prompt"] for f in features} == {"storage tanks"}  # as typed, without the slash command
    assert {f["model"] for f in features} == {"default"}
    assert "request_id" not in layer.fields().names()
    assert all(f["created"] for f in features)
    region_geom = QgsGeometry.fromRect(region)
    assert all(region_geom.contains(f.geometry()) for f in features)
    assert layer.metadata().abstract() == "found 2"
    assert layer.labelsEnabled() and layer.renderer().symbol().color().alpha() == 0  # resources/styles/result_box.qml


def test_describe_sends_history_and_shows_a_thumbnail(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    qtbot.mouseClick(assistant.dock.describeButton, Qt.MouseButton.LeftButton)
    first = wait_answer(qtbot, assistant)
    assert first.state is TurnState.ANSWERED and first.answer == "a dark field with a bright square"
    assert assistant.client.requests[-1].task is Task.CAPTION
    [thumb] = assistant.controller.thumbnails(first.id)
    assert not thumb.isNull() and max(thumb.width(), thumb.height()) <= 160
    assert "rsa-thumb://" in assistant.dock.transcriptView.toHtml()

    ask(qtbot, assistant, "is there water?")
    wait_answer(qtbot, assistant)
    chat = assistant.client.requests[-1]
    assert chat.task is Task.CHAT and chat.prompt == "is there water?"
    assert [m.content for m in chat.history] == ["/describe", "a dark field with a bright square"]
    assert not assistant.project.layerTreeRoot().findGroup(GROUP_NAME)  # text only: no layer


def test_shift_enter_adds_a_line_and_enter_sends(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    qtbot.keyClicks(assistant.dock.promptEdit, "first line")
    qtbot.keyClick(assistant.dock.promptEdit, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(assistant.dock.promptEdit, "second line")
    assert assistant.client.requests == []
    assert assistant.dock.promptEdit.toPlainText() == "first line\nsecond line"
    qtbot.keyClick(assistant.dock.promptEdit, Qt.Key.Key_Enter)
    wait_answer(qtbot, assistant)
    assert assistant.client.requests[-1].prompt == "first line\nsecond line"


def test_send_becomes_stop_and_cancels(make_assistant, qtbot):
    assistant = make_assistant(FakeEngineClient(wait_for_cancel=True))
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/find ships")
    qtbot.waitUntil(assistant.client.started.is_set, timeout=10000)
    qtbot.waitUntil(lambda: assistant.dock.sendButton.text() == "Stop")
    assert assistant.dock.progressBar.isVisible()
    tasks = [t.description() for t in QgsApplication.taskManager().activeTasks()]
    assert "RS Assistant: /find ships" in tasks  # visible (and cancelable) in QGIS's task manager
    qtbot.mouseClick(assistant.dock.sendButton, Qt.MouseButton.LeftButton)
    turn = wait_answer(qtbot, assistant)
    assert turn.state is TurnState.CANCELLED
    assert assistant.dock.sendButton.text() == "Send"
    assert "Cancelled." in assistant.dock.transcriptView.toPlainText()


def test_quick_find_uses_the_typed_text_or_asks_for_it(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    qtbot.mouseClick(assistant.dock.findButton, Qt.MouseButton.LeftButton)
    assert assistant.dock.promptEdit.toPlainText() == "/find "
    assert assistant.client.requests == []
    assistant.dock.promptEdit.setPlainText("cars")
    qtbot.mouseClick(assistant.dock.segmentButton, Qt.MouseButton.LeftButton)
    turn = wait_answer(qtbot, assistant)
    assert assistant.client.requests[-1].task is Task.SEGMENT and assistant.client.requests[-1].prompt == "cars"
    layer = assistant.controller.last_layers[0]
    assert layer.name() == "segment cars" and {f["kind"] for f in layer.getFeatures()} == {"mask"}
    assert layer.renderer().symbol().color().alpha() > 0  # masks are filled
    assert turn.result_layers == ("segment cars",)


def test_help_and_mistakes_stay_local(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/help")
    ask(qtbot, assistant, "/find")
    ask(qtbot, assistant, "/paint it")
    text = assistant.dock.transcriptView.toPlainText()
    assert "/segment <what>" in text
    assert "needs to know what to look for" in text
    assert "Unknown command" in text
    assert assistant.client.requests == []


def test_the_region_label_warns_when_the_image_covers_little_of_the_view(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    layer_extent = extent_in_project(assistant.project, assistant.raster)
    assistant.canvas.setExtent(layer_extent)
    qtbot.waitUntil(lambda: " px" in assistant.dock.regionLabel.text(), timeout=5000)
    assert "zoom to the layer" not in assistant.dock.regionLabel.text()
    assistant.canvas.setExtent(layer_extent.buffered(layer_extent.width() * 20))  # zoomed far out
    qtbot.waitUntil(lambda: "zoom to the layer" in assistant.dock.regionLabel.text(), timeout=5000)
    label = assistant.dock.regionLabel.text()
    assert label.startswith("Current view: ") and "the image covers less than 1% of it" in label
    assert re.search(r"\d{1,3}(,\d{3})+ × \d{1,3}(,\d{3})+ px", label), label  # thousands grouped


def test_bad_input_gives_one_clear_message_and_keeps_the_conversation(make_assistant, qtbot):
    assistant = make_assistant()
    ask(qtbot, assistant, "/describe")  # no raster chosen
    assert "Choose an image layer first." in assistant.dock.transcriptView.toPlainText()

    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    far = QgsRectangle(0, 0, 1000, 1000)  # the Gulf of Guinea, far from the raster
    assistant.controller.set_region(far)
    ask(qtbot, assistant, "/describe")
    assert "does not overlap the chosen layer" in assistant.dock.transcriptView.toPlainText()

    qtbot.mouseClick(assistant.dock.compareButton, Qt.MouseButton.LeftButton)
    assert "Choose a before and an after layer" in assistant.dock.transcriptView.toPlainText()
    qtbot.mouseClick(assistant.dock.useViewButton, Qt.MouseButton.LeftButton)
    assert assistant.controller.region is None
    assert assistant.dock.regionLabel.text().startswith("Current view")

    for error, words in [
        (ProtocolError(ErrorCode.EXTENT_OUTSIDE, "window outside raster"), "outside the raster"),
        (ProtocolError(ErrorCode.TIMEOUT, "no answer within 1 s"), "did not answer in time"),
        (ProtocolError(ErrorCode.ENGINE_UNREACHABLE, "no engine at http://x"), "cannot be reached"),
        (ProtocolError(ErrorCode.INTERNAL, "boom"), "reported an error"),
    ]:
        assistant.client.error = error
        ask(qtbot, assistant, "/describe")
        turn = wait_answer(qtbot, assistant)
        assert turn.state is TurnState.FAILED and turn.error is error.code
        assert words in assistant.dock.transcriptView.toPlainText()
        assert error.message in assistant.dock.transcriptView.toPlainText()
    assert len(assistant.controller.conversation.turns) == 7
    assert assistant.dock.sendButton.isEnabled() and assistant.dock.sendButton.text() == "Send"


def test_no_engine_yet_is_a_message_not_a_hang(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.controller.set_client(None)
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/describe")
    assert "engine is not ready" in assistant.dock.transcriptView.toPlainText()
    assert not assistant.controller.busy


def test_new_chat_and_model_selector(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    assert [assistant.dock.modelCombo.itemText(i) for i in range(3)] == ["Auto (per task)", "default", "other"]
    assistant.dock.modelCombo.setCurrentIndex(2)
    assistant.dock.modelCombo.activated.emit(2)
    ask(qtbot, assistant, "hello")
    wait_answer(qtbot, assistant)
    assert assistant.client.requests[-1].model == "other"
    qtbot.mouseClick(assistant.dock.newChatButton, Qt.MouseButton.LeftButton)
    assert assistant.controller.conversation.turns == []
    assert assistant.dock.transcriptView.toPlainText().strip() == ""
    ask(qtbot, assistant, "again")
    wait_answer(qtbot, assistant)
    assert assistant.client.requests[-1].history == ()


def test_compare_sends_before_and_after_in_different_crs(make_assistant, qtbot, tmp_path):
    from tests.qgis.conftest import add_raster
    from tests.qgis.rasters import write_geotiff

    assistant = make_assistant()
    after = add_raster(
        assistant.project,
        write_geotiff(tmp_path / "after.tif", 4326, (15.0, 42.0), 0.0001, bright=(50, 50, 90, 90)),
        "after wgs84",
    )
    assistant.dock.beforeLayerCombo.setLayer(assistant.raster)
    assistant.dock.afterLayerCombo.setLayer(after)
    qtbot.mouseClick(assistant.dock.swapButton, Qt.MouseButton.LeftButton)
    assert assistant.dock.beforeLayerCombo.currentLayer() is after
    qtbot.mouseClick(assistant.dock.swapButton, Qt.MouseButton.LeftButton)
    assistant.controller.set_region(
        QgsRectangle(1669792, 5160979, 1670500, 5161500), QgsCoordinateReferenceSystem("EPSG:3857")
    )
    qtbot.mouseClick(assistant.dock.compareButton, Qt.MouseButton.LeftButton)
    turn = wait_answer(qtbot, assistant)
    request = assistant.client.requests[-1]
    assert request.task is Task.CHANGE
    assert [i.source for i in request.images] == [assistant.raster.source(), after.source()]
    assert turn.state is TurnState.ANSWERED
    assert {f["kind"] for f in assistant.controller.last_layers[0].getFeatures()} == {"change"}


def test_esc_cancels_a_drag_and_the_band_stays_until_replaced(make_assistant, qtbot):
    assistant = make_assistant()
    select_region(qtbot, assistant)
    first = assistant.controller.region
    band = assistant.picker._band
    assert band.numberOfVertices() >= 4 and band.isVisible()
    assistant.picker.activate()
    viewport = assistant.canvas.viewport()
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=QPoint(100, 100))
    qtbot.mouseMove(viewport, QPoint(200, 200))
    qtbot.keyClick(assistant.canvas, Qt.Key.Key_Escape)
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=QPoint(200, 200))
    assert assistant.controller.region == first  # the drag was dropped
    assert assistant.canvas.mapTool() is not assistant.picker.tool
    assert band.numberOfVertices() >= 4  # the chosen region is still shown
    select_region(qtbot, assistant, QPoint(100, 100), QPoint(200, 180))
    assert assistant.controller.region != first
    qtbot.mouseClick(assistant.dock.useViewButton, Qt.MouseButton.LeftButton)
    assert band.numberOfVertices() == 0


def test_a_raster_that_is_not_a_local_file_is_rendered_and_sent_as_png(make_assistant, qtbot):
    from osgeo import gdal
    from qgis.core import QgsRasterLayer
    from qgis.PyQt.QtGui import QImage

    from rs_assistant.core.settings import Settings

    assistant = make_assistant(settings=Settings(max_side=256))
    gdal.Translate("/vsimem/remote.tif", assistant.raster.source())  # stands in for WMS/XYZ: no file on disk
    remote = QgsRasterLayer("/vsimem/remote.tif", "remote")
    assert remote.isValid()
    assistant.project.addMapLayer(remote)
    assistant.dock.imageLayerCombo.setLayer(remote)
    region = select_region(qtbot, assistant)
    ask(qtbot, assistant, "/describe")
    assert wait_answer(qtbot, assistant).state is TurnState.ANSWERED
    image = assistant.client.requests[-1].images[0]
    assert image.source is None and image.crs == "EPSG:3857"
    pixel = max(region.width(), region.height()) / 256  # the PNG covers the region to within a pixel
    wanted = (region.xMinimum(), region.yMinimum(), region.xMaximum(), region.yMaximum())
    assert all(abs(a - b) <= pixel for a, b in zip(image.extent, wanted))
    png = QImage.fromData(image.png_bytes(), "PNG")
    assert max(png.width(), png.height()) == 256
    gdal.Unlink("/vsimem/remote.tif")


def test_results_are_written_next_to_the_project_and_survive_reopening_it(make_assistant, qtbot, tmp_path):
    from rs_assistant.core.settings import Settings

    assistant = make_assistant(settings=Settings(output_folder=""))
    project = assistant.project
    project_file = tmp_path / "saved" / "survey.qgz"
    project_file.parent.mkdir()
    assert project.write(str(project_file))
    asked = []
    assistant.controller.answers.ask_folder = lambda proposed, why_not: asked.append(proposed) or proposed
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/find tanks")
    assert wait_answer(qtbot, assistant).state is TurnState.ANSWERED
    assert asked == [project_file.parent]  # asked once, proposing the project's folder
    [layer] = assistant.controller.last_layers
    assert layer.source().startswith(str(project_file.parent / "survey_rs_assistant.gpkg"))
    assert project.write()
    project.clear()
    assert project.read(str(project_file))
    [reopened] = [node.layer() for node in project.layerTreeRoot().findGroup(GROUP_NAME).findLayers()]
    assert reopened.isValid() and reopened.name() == "find tanks" and reopened.featureCount() == 2
    assert reopened.metadata().abstract() == "found 2"
    assert reopened.crs().authid() == "EPSG:3857"


def test_auto_is_the_default_model_and_the_transcript_names_the_model_that_answered(make_assistant, qtbot):
    assistant = make_assistant(FakeEngineClient(routes={Task.CAPTION: "other"}))
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    assert assistant.dock.modelLabel.text() == "Model"
    assert assistant.dock.modelCombo.currentText() == "Auto (per task)"
    qtbot.mouseClick(assistant.dock.describeButton, Qt.MouseButton.LeftButton)
    turn = wait_answer(qtbot, assistant)
    assert assistant.client.requests[-1].model == "auto"
    assert turn.model == "other"  # the engine routed the caption to its default model for the task
    assert "Assistant (other)" in assistant.dock.transcriptView.toPlainText()
    ask(qtbot, assistant, "/find tanks")
    wait_answer(qtbot, assistant)
    assert assistant.client.requests[-1].model == "auto"
    assert "Assistant (default)" in assistant.dock.transcriptView.toPlainText()


def test_a_description_says_what_covers_the_region(make_assistant, qtbot):
    cover = (("grass areas", 0.444), ("roads", 0.139), ("buildings", 0.075))
    assistant = make_assistant(FakeEngineClient(land_cover=cover))
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    qtbot.mouseClick(assistant.dock.describeButton, Qt.MouseButton.LeftButton)
    turn = wait_answer(qtbot, assistant)
    assert turn.answer == "a dark field with a bright square Land cover: grass areas 44%, roads 14%, buildings 8%."
    assert "Land cover: grass areas 44%" in assistant.dock.transcriptView.toPlainText()
    assistant.client.land_cover = None  # an engine or model that does not say: nothing added
    ask(qtbot, assistant, "/describe")
    assert "Land cover" not in wait_answer(qtbot, assistant).answer


def test_an_answer_says_when_the_imagery_was_resampled_to_the_models_scale(make_assistant, qtbot):
    assistant = make_assistant(FakeEngineClient(resampled=(0.1, 0.5)))
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    qtbot.mouseClick(assistant.dock.describeButton, Qt.MouseButton.LeftButton)
    turn = wait_answer(qtbot, assistant)
    assert turn.answer.startswith("a dark field with a bright square")
    assert "This imagery has 0.1 m pixels; the model read it at 0.5 m" in turn.answer
    assistant.client.resampled = None  # read as it is: nothing said
    ask(qtbot, assistant, "/describe")
    assert "pixels" not in wait_answer(qtbot, assistant).answer
