"""Drawing the region: a map tool that drags a rectangle, and the rubber band that shows the
chosen region on the canvas until it is cleared or replaced (switching tools keeps it)."""

from __future__ import annotations

import logging

from qgis.core import QgsGeometry, QgsPointXY, QgsRectangle, QgsWkbTypes
from qgis.gui import QgsMapCanvas, QgsMapMouseEvent, QgsMapTool, QgsRubberBand
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor, QKeyEvent

from rs_assistant.ui.controller import AssistantController

log = logging.getLogger(__name__)

BAND_COLOUR = QColor(255, 120, 0)
BAND_FILL = QColor(255, 120, 0, 40)


def _band(canvas: QgsMapCanvas, dashed: bool = False) -> QgsRubberBand:
    band = QgsRubberBand(canvas, QgsWkbTypes.GeometryType.PolygonGeometry)
    band.setStrokeColor(BAND_COLOUR)
    band.setFillColor(BAND_FILL)
    band.setWidth(2)
    if dashed:
        band.setLineStyle(Qt.PenStyle.DashLine)
    return band


class RegionMapTool(QgsMapTool):
    """Press, drag, release: emits ``regionSelected`` (canvas CRS). Esc drops the drag and the tool."""

    regionSelected = pyqtSignal(QgsRectangle)
    cancelled = pyqtSignal()

    MIN_DRAG_PIXELS = 3

    def __init__(self, canvas: QgsMapCanvas):
        super().__init__(canvas)
        self.setCursor(Qt.CursorShape.CrossCursor)
        self._start: QgsPointXY | None = None
        self._start_pixel = None
        self._drag = _band(canvas, dashed=True)
        # The canvas keeps key presses from the tool while a button is down; its signal has them all.
        canvas.keyPressed.connect(self._on_key)

    def canvasPressEvent(self, event: QgsMapMouseEvent) -> None:  # noqa: N802
        if event.button() == Qt.MouseButton.LeftButton:
            self._start = event.mapPoint()
            self._start_pixel = event.pos()

    def canvasMoveEvent(self, event: QgsMapMouseEvent) -> None:  # noqa: N802
        if self._start is not None:
            self._drag.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
            rect = QgsGeometry.fromRect(QgsRectangle(self._start, event.mapPoint()))
            self._drag.addGeometry(rect, self.canvas().mapSettings().destinationCrs())

    def canvasReleaseEvent(self, event: QgsMapMouseEvent) -> None:  # noqa: N802
        if self._start is None or event.button() != Qt.MouseButton.LeftButton:
            return
        start, self._start = self._start, None
        self._drag.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        moved = (event.pos() - self._start_pixel).manhattanLength()
        if moved < self.MIN_DRAG_PIXELS:
            return  # a click, not a drag
        rect = QgsRectangle(start, event.mapPoint())
        rect.normalize()
        self.regionSelected.emit(rect)

    def _on_key(self, event: QKeyEvent) -> None:
        if event.key() == Qt.Key.Key_Escape and self.canvas().mapTool() is self:
            self._start = None
            self._drag.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
            self.cancelled.emit()
            event.accept()

    def deactivate(self) -> None:
        self._start = None
        self._drag.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        super().deactivate()

    def release(self) -> None:
        """Disconnects from the canvas and removes the drag band (plugin unload); a canvas already
        deleted has nothing left to undo."""
        try:
            self.canvas().keyPressed.disconnect(self._on_key)
            self.canvas().scene().removeItem(self._drag)
        except (TypeError, RuntimeError, AttributeError):
            log.debug("the canvas went first: nothing to release")
        self._drag = None


class RegionPicker:
    """Owns the map tool and the region's rubber band and keeps them in step with the controller."""

    def __init__(self, canvas: QgsMapCanvas, controller: AssistantController):
        self.canvas = canvas
        self.controller = controller
        self.tool = RegionMapTool(canvas)
        self.tool.regionSelected.connect(self._on_selected)
        self.tool.cancelled.connect(self.deactivate)
        self._band = _band(canvas)
        self._previous_tool: QgsMapTool | None = None
        controller.regionChanged.connect(self._show_region)

    def activate(self) -> None:
        if self.canvas.mapTool() is not self.tool:
            self._previous_tool = self.canvas.mapTool()
            self.canvas.setMapTool(self.tool)

    def deactivate(self) -> None:
        if self.canvas.mapTool() is self.tool:
            if self._previous_tool is not None:
                self.canvas.setMapTool(self._previous_tool)
            else:
                self.canvas.unsetMapTool(self.tool)
        self._previous_tool = None

    def _on_selected(self, rect: QgsRectangle) -> None:
        self.controller.set_region(rect, self.canvas.mapSettings().destinationCrs())

    def _show_region(self) -> None:
        """Draws the region where it was drawn (the band follows a change of the project's CRS)."""
        if self._band is None:
            return
        try:
            self._band.reset(QgsWkbTypes.GeometryType.PolygonGeometry)
        except RuntimeError:  # the canvas and its band were deleted first
            self._band = None
            return
        region = self.controller.region
        if region is not None:
            self._band.addGeometry(QgsGeometry.fromRect(region), self.controller.project.crs())

    def unload(self) -> None:
        try:
            self.controller.regionChanged.disconnect(self._show_region)
        except (TypeError, RuntimeError):
            pass
        try:
            self.deactivate()
            self.canvas.unsetMapTool(self.tool)
            self.canvas.scene().removeItem(self._band)
        except RuntimeError:  # the canvas was deleted first (a closing window, a test harness)
            log.debug("the canvas went first: no map tool or band to remove")
        self.tool.release()
        self._band = None
        self.tool.deleteLater()
