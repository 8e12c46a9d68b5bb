"""The dock against what QGIS does to it: Project > New or a layer removed while a request runs,
the project CRS changed, the canvas deleted after unload, the plugin reloaded, a project saved and
read back, a question asked while the engine starts. Each leaves a usable dock, no Python error
(pytest-qt fails a test on an exception raised in a Qt callback) and, where it says so, a message."""

from __future__ import annotations

import re

import pytest
from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRectangle
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QCoreApplication, QEvent, Qt

from rs_assistant.core.conversation import Problem, TurnState
from rs_assistant.core.engine_state import EngineFault, EngineState, EngineStatus
from rs_assistant.core.protocol import ErrorCode
from rs_assistant.plugin import RSAssistantPlugin
from rs_assistant.ui.settings_store import SettingsStore
from tests.qgis.conftest import UTM, UTM_ORIGIN, add_raster, extent_in_project
from tests.qgis.fake_engine import FakeEngineClient
from tests.qgis.rasters import write_geotiff
from tests.qgis.recording_iface import RecordingIface


def ask(qtbot, dock, text: str) -> None:
    qtbot.keyClicks(dock.promptEdit, text)
    qtbot.keyClick(dock.promptEdit, Qt.Key.Key_Return)


def transcript(dock) -> str:
    return dock.transcriptView.toPlainText()


def km(label: str) -> tuple[float, float]:
    match = re.search(r"([\d.]+) × ([\d.]+) km", label)
    assert match, label
    return float(match.group(1)), float(match.group(2))


# --- Project > New, layers removed, CRS changed ---------------------------------------------------
def test_project_new_during_a_request_stops_it_and_leaves_a_usable_dock(make_assistant, qtbot, tmp_path):
    assistant = make_assistant(FakeEngineClient(wait_for_cancel=True))
    dock, project = assistant.dock, assistant.project
    dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, dock, "/describe")
    qtbot.waitUntil(assistant.client.started.is_set, timeout=10000)
    assert dock.sendButton.text() == "Stop"

    project.clear()  # Project > New

    assert not assistant.controller.busy
    qtbot.waitUntil(lambda: assistant.client._cancel.is_set())  # the engine was told to stop
    assert transcript(dock).strip() == ""  # the conversation belonged to the old project
    assert dock.sendButton.text() == "Send" and dock.describeButton.isEnabled()
    assert not dock.progressBar.isVisible()
    assert dock.imageLayerCombo.currentLayer() is None
    assert dock.regionLabel.text() == "Current view"  # not "1.07699e-07 × 9.73522e-08 deg"
    assert "Stop" not in dock.sendButton.text()

    # the dock works in the new project
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    raster = add_raster(project, write_geotiff(tmp_path / "new.tif", UTM, UTM_ORIGIN, 10.0), "new image")
    assistant.canvas.setLayers([raster])
    dock.imageLayerCombo.setLayer(raster)
    assistant.controller.set_region(extent_in_project(project, raster))
    assistant.client.wait_for_cancel = False
    ask(qtbot, dock, "/describe")
    qtbot.waitUntil(lambda: not assistant.controller.busy, timeout=15000)
    assert assistant.controller.conversation.turns[-1].state is TurnState.ANSWERED
    assert "a dark field" in transcript(dock)


def test_project_new_while_the_image_renders_raises_nothing(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant.dock, "/describe")  # the render job starts in QGIS's threads
    assistant.project.clear()  # before it ends: its end must touch neither the layer nor the turn
    qtbot.wait(500)
    assert not assistant.controller.busy and assistant.client.requests == []
    assert transcript(assistant.dock).strip() == ""


def test_removing_the_layer_of_a_running_request_says_so(make_assistant, qtbot):
    assistant = make_assistant(FakeEngineClient(wait_for_cancel=True))
    dock = assistant.dock
    dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, dock, "/describe")
    qtbot.waitUntil(assistant.client.started.is_set, timeout=10000)

    assistant.project.removeMapLayer(assistant.raster.id())

    turn = assistant.controller.conversation.turns[-1]
    assert turn.state is TurnState.FAILED and turn.error is Problem.LAYER_REMOVED
    assert "utm image" in turn.error_detail
    assert "The layer was removed from the project" in transcript(dock)
    assert not assistant.controller.busy and dock.sendButton.text() == "Send"
    assert dock.imageLayerCombo.currentLayer() is None and assistant.controller.layer("image") is None
    qtbot.waitUntil(lambda: assistant.client._cancel.is_set())
    qtbot.wait(300)  # the cancelled task's late callback changes nothing
    assert assistant.controller.conversation.turns[-1].error is Problem.LAYER_REMOVED


def test_region_sizes_are_on_the_ground_and_follow_a_crs_change(make_assistant, qtbot):
    assistant = make_assistant()
    controller, dock, project = assistant.controller, assistant.dock, assistant.project
    dock.imageLayerCombo.setLayer(assistant.raster)
    region = QgsRectangle(500200, 4648200, 501700, 4649700)  # 1.5 km square in UTM 33N, inside the raster
    controller.set_region(region, QgsCoordinateReferenceSystem(f"EPSG:{UTM}"))
    label = dock.regionLabel.text()
    w, h = km(label)  # Web-Mercator metres would read about 2.0 km at 42°N
    assert 1.5 <= w <= 1.6 and 1.5 <= h <= 1.6, label
    assert label.endswith("px") and "150 × 150 px" in label or "151 × 151 px" in label, label

    project.setCrs(QgsCoordinateReferenceSystem("EPSG:4326"))  # a geographic project CRS
    assistant.canvas.setDestinationCrs(project.crs())
    label = dock.regionLabel.text()
    assert km(label) == (w, h), label  # the same ground, not degrees
    assert "deg" not in label and "e-0" not in label
    in_4326 = controller.region
    assert 14 < in_4326.xMinimum() < 16 and 41 < in_4326.yMinimum() < 43

    ask(qtbot, dock, "/describe")
    qtbot.waitUntil(lambda: not controller.busy, timeout=15000)
    request = assistant.client.requests[-1]
    assert request.output_crs == "EPSG:4326" and request.images[0].crs == "EPSG:4326"
    assert QgsRectangle(*request.images[0].extent).toString(6) == in_4326.toString(6)


def test_bad_regions_get_a_message_not_an_error(make_assistant, qtbot):
    assistant = make_assistant()
    controller, dock = assistant.controller, assistant.dock
    dock.imageLayerCombo.setLayer(assistant.raster)
    utm = QgsCoordinateReferenceSystem(f"EPSG:{UTM}")
    controller.set_region(QgsRectangle(500500, 4649000, 500503, 4649003), utm)  # 3 m: under one 10 m pixel
    ask(qtbot, dock, "/describe")
    assert controller.conversation.turns[-1].error is Problem.REGION_NO_PIXELS
    assert "smaller than one pixel" in transcript(dock)

    controller.set_region(QgsRectangle(10, 95, 20, 120), QgsCoordinateReferenceSystem("EPSG:4326"))  # beyond the pole
    assert "cannot be shown" in dock.regionLabel.text()
    ask(qtbot, dock, "/describe")
    assert controller.conversation.turns[-1].error is Problem.REGION_NOT_TRANSFORMABLE
    assert "cannot be converted" in transcript(dock)
    assert not controller.busy and assistant.client.requests == []


# --- the plugin: unload, reload, save and read back, the starting engine ------------------------
@pytest.fixture
def plugin_factory(qgis_new_project, qtbot, tmp_path):
    SettingsStore().clear()
    made = []

    def start(iface: RecordingIface | None = None) -> RSAssistantPlugin:
        plugin = RSAssistantPlugin(iface or RecordingIface())
        plugin.initGui()
        plugin.iface.mainWindow().resize(1200, 800)
        made.append(plugin)
        return plugin

    yield start
    for plugin in made:
        if plugin.dock is not None:
            plugin.unload()
    SettingsStore().clear()


def ready(plugin, client: FakeEngineClient) -> None:
    """What the engine supervisor signals when an engine is up (no process in these tests)."""
    plugin.engine.statusChanged.emit(EngineStatus(EngineState.STARTING))
    plugin.engine.clientChanged.emit(client)
    plugin.engine.statusChanged.emit(EngineStatus(EngineState.READY))


def project_with_rasters(tmp_path, *names: str):
    project = QgsProject.instance()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    return [
        add_raster(project, write_geotiff(tmp_path / f"{i}.tif", UTM, UTM_ORIGIN, 10.0), name)
        for i, name in enumerate(names)
    ]


def test_deleting_the_canvas_or_clearing_the_project_after_unload_calls_nothing(plugin_factory, qtbot):
    plugin = plugin_factory()
    canvas = plugin.iface.mapCanvas()
    plugin.select_region_action.trigger()
    plugin.unload()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    QgsProject.instance().clear()
    canvas.setExtent(QgsRectangle(0, 0, 10, 10))
    canvas.refresh()
    sip.delete(canvas)
    QCoreApplication.processEvents()
    assert plugin.dock is None and plugin.controller is None


def test_unloading_with_a_request_in_flight_drops_it_quietly(plugin_factory, qtbot, tmp_path):
    [raster] = project_with_rasters(tmp_path, "image")
    plugin = plugin_factory()
    client = FakeEngineClient(wait_for_cancel=True)
    ready(plugin, client)
    plugin.dock.imageLayerCombo.setLayer(raster)
    plugin.controller.set_region(raster.extent(), raster.crs())
    ask(qtbot, plugin.dock, "/describe")
    qtbot.waitUntil(client.started.is_set, timeout=10000)
    plugin.unload()
    qtbot.waitUntil(lambda: client._cancel.is_set())
    qtbot.wait(300)  # the task's end finds no controller to call


def test_reloading_the_plugin_keeps_layers_region_and_transcript(plugin_factory, qtbot, tmp_path):
    before, after = project_with_rasters(tmp_path, "before 2019", "after 2023")
    iface = RecordingIface()
    plugin = plugin_factory(iface)
    ready(plugin, FakeEngineClient())
    plugin.dock.imageLayerCombo.setLayer(after)
    plugin.dock.beforeLayerCombo.setLayer(before)
    plugin.dock.afterLayerCombo.setLayer(after)
    region = QgsRectangle(500200, 4648200, 501700, 4649700)
    plugin.controller.set_region(region, QgsCoordinateReferenceSystem(f"EPSG:{UTM}"))
    ask(qtbot, plugin.dock, "/describe")
    qtbot.waitUntil(lambda: not plugin.controller.busy, timeout=15000)
    label = plugin.dock.regionLabel.text()
    plugin.unload()

    again = plugin_factory(iface)  # Plugin Reloader: unload, then a new plugin object
    assert again.dock.imageLayerCombo.currentLayer() is after
    assert again.dock.beforeLayerCombo.currentLayer() is before
    assert again.dock.afterLayerCombo.currentLayer() is after
    assert again.controller.region.toString(0) == plugin_region_in_project(region)
    assert again.dock.regionLabel.text() == label
    text = transcript(again.dock)
    assert "/describe" in text and "a dark field with a bright square" in text
    ready(again, FakeEngineClient())
    ask(qtbot, again.dock, "and the roads?")  # the conversation goes on, with its history
    qtbot.waitUntil(lambda: not again.controller.busy, timeout=15000)
    turns = again.controller.conversation.turns
    assert [t.id for t in turns] == [1, 2] and turns[-1].state is TurnState.ANSWERED


def plugin_region_in_project(region: QgsRectangle) -> str:
    from qgis.core import QgsCoordinateTransform

    project = QgsProject.instance()
    utm = QgsCoordinateReferenceSystem(f"EPSG:{UTM}")
    return QgsCoordinateTransform(utm, project.crs(), project).transformBoundingBox(region).toString(0)


def test_a_saved_project_brings_back_its_layers_region_and_transcript(plugin_factory, qtbot, tmp_path):
    before, after = project_with_rasters(tmp_path, "before 2019", "after 2023")
    plugin = plugin_factory()
    ready(plugin, FakeEngineClient())
    plugin.dock.imageLayerCombo.setLayer(before)
    plugin.controller.set_region(
        QgsRectangle(500200, 4648200, 501700, 4649700), QgsCoordinateReferenceSystem(f"EPSG:{UTM}")
    )
    ask(qtbot, plugin.dock, "/describe")
    qtbot.waitUntil(lambda: not plugin.controller.busy, timeout=15000)
    region = plugin.controller.region.toString(0)
    project = QgsProject.instance()
    assert project.write(str(tmp_path / "saved.qgz"))

    project.clear()  # Project > New: the transcript goes with the project
    assert transcript(plugin.dock).strip() == "" and plugin.dock.imageLayerCombo.currentLayer() is None
    assert plugin.controller.region is None

    assert project.read(str(tmp_path / "saved.qgz"))
    assert plugin.dock.imageLayerCombo.currentLayer().name() == "before 2019"
    assert plugin.controller.region.toString(0) == region
    assert "a dark field with a bright square" in transcript(plugin.dock)
    assert [t.state for t in plugin.controller.conversation.turns] == [TurnState.ANSWERED]

    project.clear()
    project_with_rasters(tmp_path, "elsewhere")
    assert project.write(str(tmp_path / "other.qgz"))
    assert project.read(str(tmp_path / "saved.qgz"))
    assert project.read(str(tmp_path / "other.qgz"))  # another project: not this transcript
    assert transcript(plugin.dock).strip() == ""
    assert plugin.dock.imageLayerCombo.currentLayer().name() == "elsewhere"  # the top raster


def test_a_project_with_two_rasters_opens_with_sensible_choices(plugin_factory, qtbot, tmp_path):
    project_with_rasters(tmp_path, "site 2023-06-01", "site 2019-05-12")  # added last = top of the tree
    project = QgsProject.instance()
    assert project.write(str(tmp_path / "two.qgz"))
    plugin = plugin_factory()
    project.clear()
    assert project.read(str(tmp_path / "two.qgz"))
    dock = plugin.dock
    assert dock.imageLayerCombo.currentLayer().name() == project.layerTreeRoot().findLayers()[0].layer().name()
    assert dock.beforeLayerCombo.currentLayer().name() == "site 2019-05-12"
    assert dock.afterLayerCombo.currentLayer().name() == "site 2023-06-01"
    assert not project.isDirty()  # opening it changed nothing


def test_a_question_asked_while_the_engine_starts_waits_and_then_runs(plugin_factory, qtbot, tmp_path):
    [raster] = project_with_rasters(tmp_path, "image")
    plugin = plugin_factory()
    dock = plugin.dock
    plugin.iface.mainWindow().show()
    dock.show()
    dock.imageLayerCombo.setLayer(raster)
    plugin.controller.set_region(raster.extent(), raster.crs())
    plugin.engine.statusChanged.emit(EngineStatus(EngineState.STARTING))

    ask(qtbot, dock, "/ask what is in this image?")  # a slash command: no router in between

    assert dock.promptEdit.toPlainText() == ""  # taken, not thrown away
    turn = plugin.controller.conversation.turns[-1]
    assert turn.state is TurnState.QUEUED
    assert "Waiting for the engine to start" in transcript(dock)
    assert "not ready" not in transcript(dock)
    assert "your question will run when it is ready" in dock.engineStatusLabel.text()
    assert dock.sendButton.text() == "Stop"

    client = FakeEngineClient()
    plugin.engine.clientChanged.emit(client)
    plugin.engine.statusChanged.emit(EngineStatus(EngineState.READY))
    qtbot.waitUntil(lambda: not plugin.controller.busy, timeout=15000)
    assert len(client.requests) == 1 and client.requests[0].prompt == "what is in this image?"
    assert plugin.controller.conversation.turns[-1].state is TurnState.ANSWERED
    assert "Waiting" not in transcript(dock) and "a dark field" in transcript(dock)
    assert "will run" not in dock.engineStatusLabel.text()


def test_a_waiting_question_can_be_stopped_or_fails_when_the_engine_cannot_start(plugin_factory, qtbot, tmp_path):
    [raster] = project_with_rasters(tmp_path, "image")
    plugin = plugin_factory()
    dock = plugin.dock
    dock.imageLayerCombo.setLayer(raster)
    plugin.controller.set_region(raster.extent(), raster.crs())
    plugin.engine.statusChanged.emit(EngineStatus(EngineState.STARTING))
    ask(qtbot, dock, "/describe")
    qtbot.mouseClick(dock.sendButton, Qt.MouseButton.LeftButton)  # Stop
    assert plugin.controller.conversation.turns[-1].state is TurnState.CANCELLED
    assert not plugin.controller.busy

    ask(qtbot, dock, "/describe")
    assert plugin.controller.conversation.turns[-1].state is TurnState.QUEUED
    plugin.engine.statusChanged.emit(EngineStatus(EngineState.ERROR, EngineFault.START_TIMEOUT, "120 s"))
    turn = plugin.controller.conversation.turns[-1]
    assert turn.state is TurnState.FAILED and turn.error is Problem.ENGINE_NOT_READY
    assert not plugin.controller.busy and dock.sendButton.text() == "Send"
    assert ErrorCode.CANCELLED is plugin.controller.conversation.turns[-2].error
