"""xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots_polish.py [OUT_DIR]

Saves PNGs of the screens issue 21's polish changed into OUT_DIR (default out/screens/), from the
real widgets over the demo imagery (resources/demo/after.tif):

- mask-export-before.png  the export dialog before a run (extent, pixel size with its unit, no progress)
- mask-export-done.png    after the export: the dialog closed, the message bar, the mask with 0 transparent
- search-answer.png       a /search answer in the dock and its heat-styled tiles on the map
- search-table.png        the search layer's attribute table (rank, similarity, place; no internal columns)
- dock-narrow.png         the dock in a 300 px dock area under a Processing-toolbox-like panel

The engine is the tests' stand-in (tests/qgis/fake_engine.py), so the script needs no model.
Nothing is written outside a temporary folder and OUT_DIR.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qgis.core import (  # noqa: E402
    QgsApplication,
    QgsFeature,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.gui import QgsDualView, QgsMapCanvas, QgsMessageBar  # noqa: E402
from qgis.PyQt.QtCore import Qt  # noqa: E402
from qgis.PyQt.QtGui import QIcon  # noqa: E402
from qgis.PyQt.QtWidgets import QAction, QDockWidget, QMainWindow, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget  # noqa: E402

from rs_assistant.core.engine_state import EngineState, EngineStatus  # noqa: E402
from rs_assistant.core.paths import resource  # noqa: E402
from rs_assistant.core.settings import Settings  # noqa: E402

DEMO = resource("demo", "after.tif")


def wait_until(app, condition, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the screen did not reach the state to capture")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(10):
        app.processEvents()
        time.sleep(0.01)


def save(widget, path: Path) -> None:
    widget.grab().save(str(path))
    print(path)


def settle_canvas(app, canvas: QgsMapCanvas) -> None:
    canvas.refresh()
    wait_until(app, lambda: not canvas.isDrawing())
    time.sleep(0.2)
    wait_until(app, lambda: not canvas.isDrawing())


class Window(QMainWindow):
    """A QGIS-like main window: a message bar over the map canvas."""

    def __init__(self):
        super().__init__()
        self.resize(1280, 800)
        central = QWidget(self)
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        self.bar = QgsMessageBar(central)
        self.canvas = QgsMapCanvas(central)
        layout.addWidget(self.bar)
        layout.addWidget(self.canvas, 1)
        self.setCentralWidget(central)


def buildings(raster: QgsRasterLayer) -> QgsVectorLayer:
    """A few building-like polygons over the demo image, in its CRS."""
    layer = QgsVectorLayer(f"Polygon?crs={raster.crs().authid()}&field=class:integer", "buildings", "memory")
    extent = raster.extent()
    x0, y0, w, h = extent.xMinimum(), extent.yMinimum(), extent.width(), extent.height()
    features = []
    for u, v, du, dv in [(0.55, 0.55, 0.08, 0.06), (0.7, 0.6, 0.06, 0.1), (0.62, 0.4, 0.1, 0.05), (0.3, 0.7, 0.05, 0.05)]:
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(x0 + u * w, y0 + v * h, x0 + (u + du) * w, y0 + (v + dv) * h)))
        feature.setAttributes([1])
        features.append(feature)
    layer.dataProvider().addFeatures(features)
    layer.updateExtents()
    return layer


def mask_export_screens(app, out: Path, work: Path) -> None:
    from rs_assistant.ui.mask_export_dialog import MaskExportDialog

    project = QgsProject.instance()
    raster = QgsRasterLayer(str(DEMO), "after")
    polygons = buildings(raster)
    project.addMapLayers([raster, polygons])
    project.setCrs(raster.crs())
    window = Window()
    canvas = window.canvas
    canvas.setDestinationCrs(raster.crs())
    canvas.setLayers([polygons, raster])
    window.show()
    canvas.setExtent(raster.extent())
    settle_canvas(app, canvas)

    dialog = MaskExportDialog(window, canvas, message_bar=window.bar)
    dialog.inputLayerCombo.setLayer(polygons)
    dialog.extentRadio.setChecked(True)
    dialog.maskFileWidget.setFilePath(str(work / "buildings_mask.tif"))
    dialog.show()
    wait_until(app, dialog.isVisible)
    save(dialog, out / "mask-export-before.png")

    dialog.referenceRadio.setChecked(True)
    dialog.referenceLayerCombo.setLayer(raster)
    done = []
    dialog.exportFinished.connect(lambda ok, path: done.append(ok))
    dialog.start_export()
    wait_until(app, lambda: done, timeout_s=120)
    mask = project.mapLayersByName("buildings_mask")[0]
    canvas.setLayers([mask, raster])
    settle_canvas(app, canvas)
    save(window, out / "mask-export-done.png")
    window.close()
    project.clear()


def search_screens(app, out: Path, work: Path) -> None:
    from rs_assistant.ui.controller import AssistantController
    from rs_assistant.ui.dock import ChatDock
    from tests.qgis.fake_engine import FakeEngineClient

    project = QgsProject.instance()
    raster = QgsRasterLayer(str(DEMO), "after")
    project.addMapLayer(raster)
    project.setCrs(raster.crs())
    window = Window()
    canvas = window.canvas
    canvas.setDestinationCrs(raster.crs())
    canvas.setLayers([raster])
    controller = AssistantController(project, Settings(output_folder=str(work / "results")), canvas)
    region_action = QAction(QIcon(str(resource("icons", "select_region.svg"))), "Select a region", window)
    dock = ChatDock(controller, region_action, parent=window)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    window.resizeDocks([dock], [420], Qt.Orientation.Horizontal)
    window.show()
    canvas.setExtent(raster.extent())
    settle_canvas(app, canvas)
    controller.set_client(FakeEngineClient())
    dock.set_engine_status(EngineStatus(EngineState.READY))
    dock.imageLayerCombo.setLayer(raster)
    extent = raster.extent()
    controller.set_region(extent.buffered(-extent.width() * 0.1), raster.crs())
    controller.ask("/search a parking lot")
    wait_until(app, lambda: not controller.busy and controller.last_layers, timeout_s=60)
    [layer] = controller.last_layers
    canvas.setLayers([layer, raster])
    settle_canvas(app, canvas)
    save(window, out / "search-answer.png")

    table = QgsDualView()
    table.init(layer, canvas)
    table.setView(QgsDualView.ViewMode.AttributeTable)
    table.resize(1100, 160)
    table.show()
    wait_until(app, lambda: table.tableView().model() is not None and table.tableView().model().rowCount() > 0)
    table.tableView().resizeColumnsToContents()
    wait_until(app, table.isVisible)
    save(table, out / "search-table.png")
    table.close()

    # the dock in a narrow dock area, under a panel standing for the Processing toolbox
    toolbox = QDockWidget("Processing Toolbox", window)
    tree = QTreeWidget()
    tree.setHeaderHidden(True)
    for name in ("Recently used", "RS Assistant", "Raster analysis", "Vector geometry"):
        QTreeWidgetItem(tree, [name])
    toolbox.setWidget(tree)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, toolbox)
    window.splitDockWidget(toolbox, dock, Qt.Orientation.Vertical)
    window.resize(1280, 1000)
    window.resizeDocks([toolbox, dock], [300, 300], Qt.Orientation.Horizontal)
    window.resizeDocks([toolbox, dock], [260, 740], Qt.Orientation.Vertical)
    wait_until(app, lambda: True)
    print("dock width", dock.width(), "minimum", dock.minimumSizeHint().width())
    save(dock, out / "dock-narrow.png")
    controller.shutdown()
    dock.shutdown()
    window.close()
    project.clear()


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else ROOT / "out" / "screens")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    app = QgsApplication([], True)
    app.initQgis()
    work = Path(tempfile.mkdtemp(prefix="rsa-polish-screens-"))
    mask_export_screens(app, out, work)
    search_screens(app, out, work)
    app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
