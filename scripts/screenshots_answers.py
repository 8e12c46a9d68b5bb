"""xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots_answers.py [OUT_DIR]

Saves PNGs of the answers tied to their features (issue 21) into OUT_DIR (default out/screens/), from
the real widgets over the demo imagery (resources/demo/after.tif):

- answer-features.png   the dock: a /segment answer listing its objects (class, area on the ground, score),
                        a /find answer offering "Show 14 more below 0.3", and a feature selected on the
                        map shading its turn
- answer-held-back.png  the same /find answer after "Show 14 more below 0.3" was clicked
- answer-table.png      the /segment layer's attribute table (provenance; nothing internal)

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

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer  # noqa: E402
from qgis.gui import QgsDualView, QgsMapCanvas  # noqa: E402
from qgis.PyQt.QtCore import Qt  # noqa: E402
from qgis.PyQt.QtGui import QIcon  # noqa: E402
from qgis.PyQt.QtWidgets import QAction, QMainWindow  # noqa: E402

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


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else ROOT / "out" / "screens")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    app = QgsApplication([], True)
    app.initQgis()
    work = Path(tempfile.mkdtemp(prefix="rsa-answer-screens-"))

    from rs_assistant.ui.controller import AssistantController
    from rs_assistant.ui.dock import ChatDock
    from tests.qgis.fake_engine import FakeEngineClient

    project = QgsProject.instance()
    raster = QgsRasterLayer(str(DEMO), "after")
    project.addMapLayer(raster)
    project.setCrs(raster.crs())
    window = QMainWindow()
    window.resize(1280, 900)
    canvas = QgsMapCanvas(window)
    window.setCentralWidget(canvas)
    canvas.setDestinationCrs(raster.crs())
    canvas.setLayers([raster])
    controller = AssistantController(project, Settings(output_folder=str(work / "results")), canvas)
    region_action = QAction(QIcon(str(resource("icons", "select_region.svg"))), "Select a region", window)
    dock = ChatDock(controller, region_action, parent=window)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    window.resizeDocks([dock], [400], Qt.Orientation.Horizontal)
    window.show()
    canvas.setExtent(raster.extent())
    canvas.refresh()
    wait_until(app, lambda: not canvas.isDrawing())
    client = FakeEngineClient(multipart=True, held_back=14)
    controller.set_client(client)
    dock.set_engine_status(EngineStatus(EngineState.READY))
    dock.imageLayerCombo.setLayer(raster)
    extent = raster.extent()
    controller.set_region(extent.buffered(-extent.width() * 0.3), raster.crs())

    controller.ask("/segment buildings")
    wait_until(app, lambda: not controller.busy and controller.last_layers, timeout_s=60)
    [buildings] = controller.last_layers
    controller.ask("/find cars")
    wait_until(app, lambda: not controller.busy and controller.conversation.turns[-1].answer, timeout_s=60)
    first = controller.conversation.turns[0]
    buildings.selectByIds([first.features[1].fid])  # shades the /segment turn
    canvas.setLayers([*controller.last_layers, buildings, raster])
    canvas.refresh()
    wait_until(app, lambda: not canvas.isDrawing())
    save(dock, out / "answer-features.png")

    buildings.removeSelection()
    find_turn = controller.conversation.turns[-1]
    controller.answers.open_link(f"heldback:{find_turn.id}")
    wait_until(app, lambda: controller.conversation.get(find_turn.id).held_back == 0)
    save(dock, out / "answer-held-back.png")

    table = QgsDualView()
    table.init(buildings, canvas)
    table.setView(QgsDualView.ViewMode.AttributeTable)
    table.resize(1500, 170)
    table.show()
    wait_until(app, lambda: table.tableView().model() is not None and table.tableView().model().rowCount() > 0)
    table.tableView().resizeColumnsToContents()
    wait_until(app, table.isVisible)
    save(table, out / "answer-table.png")
    table.close()
    controller.shutdown()
    dock.shutdown()
    window.close()
    project.clear()
    app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
