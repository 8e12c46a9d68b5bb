"""Fixtures for driving the plugin as a person would: a real main window and canvas
(RecordingIface), a project in EPSG:3857 with a GeoTIFF in UTM 33N, and the assistant's
controller, dock and region tool on top, talking to an injected engine client."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsRasterLayer, QgsRectangle
from qgis.PyQt.QtCore import QPoint, Qt

from rs_assistant.core.settings import Settings
from rs_assistant.ui.controller import AssistantController
from rs_assistant.ui.dock import ChatDock
from rs_assistant.ui.region_tool import RegionPicker
from tests.qgis.fake_engine import FakeEngineClient
from tests.qgis.rasters import write_geotiff
from tests.qgis.recording_iface import RecordingIface

PROJECT_CRS = "EPSG:3857"
UTM = 32633
UTM_ORIGIN = (500000.0, 4650000.0)  # top-left corner; 200 px of 10 m: a 2 km square near 42°N 15°E


@dataclass
class Assistant:
    iface: RecordingIface
    project: QgsProject
    raster: QgsRasterLayer
    controller: AssistantController
    dock: ChatDock
    picker: RegionPicker
    client: FakeEngineClient

    @property
    def canvas(self):
        return self.iface.mapCanvas()


def add_raster(project: QgsProject, path, name: str) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(path), name)
    assert layer.isValid(), path
    project.addMapLayer(layer)
    return layer


def extent_in_project(project: QgsProject, layer: QgsRasterLayer) -> QgsRectangle:
    return QgsCoordinateTransform(layer.crs(), project.crs(), project).transformBoundingBox(layer.extent())


def drag(qtbot, canvas, start: QPoint, end: QPoint) -> None:
    """Press, move and release the left button on the canvas, as a hand would."""
    viewport = canvas.viewport()
    qtbot.mousePress(viewport, Qt.MouseButton.LeftButton, pos=start)
    for step in (0.3, 0.7, 1.0):
        qtbot.mouseMove(viewport, start + (end - start) * step)
    qtbot.mouseRelease(viewport, Qt.MouseButton.LeftButton, pos=end)


def map_point(canvas, pixel: QPoint):
    return canvas.getCoordinateTransform().toMapCoordinates(pixel.x(), pixel.y())


@pytest.fixture
def make_assistant(qgis_new_project, qtbot, tmp_path):
    made = []

    def make(client: FakeEngineClient | None = None, settings: Settings | None = None) -> Assistant:
        project = QgsProject.instance()
        project.setCrs(QgsCoordinateReferenceSystem(PROJECT_CRS))
        raster = add_raster(project, write_geotiff(tmp_path / "utm.tif", UTM, UTM_ORIGIN, 10.0), "utm image")
        iface = RecordingIface()
        window = iface.mainWindow()
        window.resize(1400, 800)
        canvas = iface.mapCanvas()
        canvas.setDestinationCrs(project.crs())
        canvas.setLayers([raster])
        controller = AssistantController(project, settings or Settings(output_folder=str(tmp_path / "out")), canvas)
        picker = RegionPicker(canvas, controller)
        dock = ChatDock(controller, parent=window)
        iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        window.show()
        qtbot.waitExposed(window)
        qtbot.waitUntil(lambda: canvas.mapSettings().outputSize() == canvas.viewport().size())
        canvas.setExtent(extent_in_project(project, raster).buffered(300))
        canvas.refresh()
        qtbot.waitUntil(lambda: not canvas.isDrawing())
        client = client if client is not None else FakeEngineClient()
        controller.set_client(client)
        qtbot.waitUntil(lambda: dock.modelCombo.count() == 3)  # Auto (per task), then the engine's two
        assistant = Assistant(iface, project, raster, controller, dock, picker, client)
        made.append(assistant)
        return assistant

    yield make
    for assistant in made:
        assistant.controller.cancel()
        assistant.controller.shutdown()  # stops following QgsProject.instance() (the next test clears it)
        assistant.dock.shutdown()
        assistant.picker.unload()
        assistant.iface.mainWindow().close()
        assistant.iface.mainWindow().deleteLater()
