"""xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py [OUT_DIR]

Regenerates every screen the README and the issues show, as PNGs in OUT_DIR (default docs/screens/),
from the plugin's real widgets in a QGIS-like window (a message bar over a map canvas, the
RS Assistant dock on the right). About a minute on 2 CPU cores.

First run (no engine yet, empty project):

- setup-before.png        the dock on a fresh profile: the set-up panel (Advanced open)
- setup-during.png        a set-up running: step, progress bar and log
- setup-cancelled.png     after Cancel: the button offers to resume
- setup-after.png         a finished set-up, starting the engine
- dock-models.png         the chat with its Model row (Auto (per task), Manage models…) and an answer naming its model
- model-manager.png       the model manager, listed by a real ``models list --json`` run with this Python

The assistant on the demo project (resources/demo: the before/after pair), answered by the real
engine on the built-in model, started by the plugin's own EngineSupervisor with this Python:

- queued-question.png     a question typed while the engine starts waits, visibly
- answer-describe.png     the queued question answered: a description with the region's land cover
- answer-map.png          a plain sentence answered on the map: the buildings outlined, listed in the dock
- answer-features.png     a building selected on the map shades the answer it belongs to
- answer-routed.png       "what changed?" with a before and an after, and a question in French
- answer-held-back.png    /find offering the detections under the score threshold ("Show N more below 0.3")
- answer-held-back-shown.png  the same answer once they were added
- answer-table.png        the buildings' attribute table (provenance; nothing internal)
- search-answer.png       /search: the ranked, heat-styled tiles on the map and the answer
- search-table.png        the search layer's attribute table (rank, similarity, place)
- mask-export-before.png  the mask export dialog on the buildings, before a run
- mask-export-done.png    after the export: the message bar, the mask drawn with 0 transparent
- dock-narrow.png         the dock in a 300 px dock area under a Processing-toolbox-like panel
- project-new.png         the dock after Project > New during a request: usable, nothing left over

The set-up screens run a stand-in process that prints the set-up's own line format (its real step
names, pip-like log lines) in seconds, so the script needs no network and no wheels; the real
set-up is exercised by tests/qgis/test_setup_panel.py. Settings go to an in-memory store and
results to a temporary folder: the script never touches the person's QGIS settings or profile.

At the end it stops the engine, shuts the plugin objects down, deletes every widget while QGIS
still runs (deferred deletes flushed), clears the project, and only then calls ``exitQgis()``:
deleting widgets after ``exitQgis()`` (the Python objects of the attribute tables and canvases
going at interpreter exit) is what made an earlier script segfault after it had saved its PNGs.
"""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qgis.core import QgsApplication, QgsProject, QgsRasterLayer, QgsRectangle, QgsVectorLayer  # noqa: E402
from qgis.gui import QgsDualView, QgsMapCanvas, QgsMessageBar  # noqa: E402
from qgis.PyQt.QtCore import QCoreApplication, QEvent, QRect, Qt  # noqa: E402
from qgis.PyQt.QtGui import QIcon, QImage  # noqa: E402
from qgis.PyQt.QtWidgets import (  # noqa: E402
    QAction,
    QDockWidget,
    QMainWindow,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from rs_assistant import setup_engine  # noqa: E402
from rs_assistant.core.conversation import TurnState  # noqa: E402
from rs_assistant.core.engine_state import EngineFault, EngineState, EngineStatus  # noqa: E402
from rs_assistant.core.paths import resource  # noqa: E402
from rs_assistant.core.protocol import ModelInfo, Task  # noqa: E402
from rs_assistant.core.settings import Settings  # noqa: E402

DOCK_WIDTH = 420
WINDOW_SIZE = (1280, 820)
ENGINE_TIMEOUT_S = 180.0  # the engine's start and each answer, on a busy 2-core machine


# --- shared helpers ----------------------------------------------------------------------------
class Shots:
    """Where the PNGs go, and the application whose events are processed while waiting."""

    def __init__(self, app: QgsApplication, out: Path):
        self.app = app
        self.out = out
        self.saved: list[Path] = []

    def wait_until(self, condition, timeout_s: float = 30.0, what: str = "the screen to capture") -> None:
        """Processes Qt events until ``condition()``, then a few more so the widgets have painted."""
        end = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > end:
                raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            self.app.processEvents()
            time.sleep(0.02)
        for _ in range(10):
            self.app.processEvents()
            time.sleep(0.01)

    def settle(self, canvas: QgsMapCanvas) -> None:
        """Redraws the canvas and waits until it has finished (twice: a refresh can start a second render)."""
        canvas.refresh()
        for _ in range(2):
            self.wait_until(lambda: not canvas.isDrawing(), what="the map to render")
            time.sleep(0.2)

    def save(self, widget: QWidget, name: str, area: QRect | None = None, palette: bool = False) -> None:
        """Grabs ``widget`` (or ``area`` of it) into OUT_DIR/name; ``palette`` keeps a screen that shows imagery
        small (256 colours chosen for that image, no dithering)."""
        image = widget.grab(area or QRect(0, 0, -1, -1)).toImage()
        path = self.out / name
        if palette:
            from PIL import Image  # Pillow: Debian's, seen by .venv

            image = image.convertToFormat(QImage.Format.Format_RGB888)
            pixels = Image.frombytes(
                "RGB",
                (image.width(), image.height()),
                image.constBits().asstring(image.sizeInBytes()),
                "raw",
                "RGB",
                image.bytesPerLine(),
            )
            pixels.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
                path, "PNG", optimize=True
            )
        elif not image.save(str(path), "PNG", 0):
            raise OSError(f"could not write {path}")
        self.saved.append(path)
        print(f"{path}  {image.width()} x {image.height()}  {path.stat().st_size // 1024} KB", flush=True)


class Window(QMainWindow):
    """A QGIS-like main window: a message bar over the map canvas, docks on the right."""

    def __init__(self, size: tuple[int, int] = WINDOW_SIZE):
        super().__init__()
        self.resize(*size)
        central = QWidget(self)
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        self.bar = QgsMessageBar(central)
        self.canvas = QgsMapCanvas(central)
        layout.addWidget(self.bar)
        layout.addWidget(self.canvas, 1)
        self.setCentralWidget(central)
        self.region_action = QAction(QIcon(str(resource("icons", "select_region.svg"))), "Select a region", self)
        self.region_action.setCheckable(True)

    def add_dock(self, dock: QDockWidget, width: int = DOCK_WIDTH) -> None:
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.resizeDocks([dock], [width], Qt.Orientation.Horizontal)


def attribute_table(shots: Shots, layer: QgsVectorLayer, canvas: QgsMapCanvas, rows: int) -> QgsDualView:
    """The layer's attribute table as QGIS opens it, sized to its columns and ``rows`` rows."""
    table = QgsDualView()
    table.init(layer, canvas)
    table.setView(QgsDualView.ViewMode.AttributeTable)
    table.resize(2400, 600)
    table.show()
    view = table.tableView()
    shots.wait_until(lambda: view.model() is not None and view.model().rowCount() > 0, what=f"{layer.name()}'s table")
    view.resizeColumnsToContents()
    shots.wait_until(table.isVisible)
    header = view.horizontalHeader()
    width = view.verticalHeader().width() + header.length() + 2 * view.frameWidth()
    height = header.height() + sum(view.rowHeight(r) for r in range(min(rows, view.model().rowCount())))
    table.resize(width + view.verticalScrollBar().sizeHint().width() + 8, height + 2 * view.frameWidth() + 8)
    shots.wait_until(lambda: True)
    return table


# --- the first run ------------------------------------------------------------------------------
class MemoryStore:
    """The settings store's two methods, in memory."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def load(self) -> Settings:
        return self.settings

    def save(self, settings: Settings) -> None:
        self.settings = settings


class QuietSupervisor:
    """What the set-up panel asks of the engine supervisor; here it only remembers."""

    def apply_settings(self, settings: Settings) -> None:
        self.settings = settings

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def stand_in_setup(target: Path, stop_at_step: int | None) -> list[str]:
    """A process printing what ``python -m rs_assistant.setup_engine`` prints, quickly."""
    lines = {
        1: ["Python 3.11.2 at /usr/bin/python3.11"],
        2: [f"free space in the target's disk: 212.4 GB (needs {setup_engine.disk_needed_gb('cpu'):.1f} GB)"],
        3: [f"created the virtual environment {target}"],
        4: [
            "  Looking in links: /data/wheelhouse",
            "  Processing /data/wheelhouse/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl",
            "  Processing /data/wheelhouse/filelock-3.16.1-py3-none-any.whl",
            "  Installing collected packages: filelock, torch",
        ],
        5: [
            "  Processing /data/wheelhouse/transformers-4.57.1-py3-none-any.whl",
            "  Processing /data/wheelhouse/rasterio-1.4.3-cp311-cp311-manylinux_2_17_x86_64.whl",
            "  Successfully installed fastapi-0.115.6 rasterio-1.4.3 transformers-4.57.1 uvicorn-0.32.1",
        ],
        6: ["torch 2.13.0+cpu, transformers 4.57.1, rasterio 1.4.3: all import"],
    }
    steps = setup_engine.STEPS
    script = ["import sys, time"]
    for k, what in enumerate(steps, start=1):
        script.append(f"print({f'STEP {k}/{len(steps)} {what}'!r}, flush=True)")
        for line in lines.get(k, []):
            script.append(f"print({line!r}, flush=True); time.sleep(0.05)")
        if stop_at_step is not None and k == stop_at_step:
            script.append("time.sleep(120)")
    script.append(f"print({'ENGINE_PYTHON ' + str(setup_engine.venv_python(target))!r}, flush=True)")
    return [sys.executable, "-c", "\n".join(script)]


def first_run_screens(shots: Shots, work: Path, keep: list) -> None:
    from rs_assistant.core.commands import parse_command
    from rs_assistant.ui.controller import AssistantController
    from rs_assistant.ui.dock import ChatDock
    from rs_assistant.ui.model_manager import ModelManagerDialog
    from rs_assistant.ui.setup_panel import SetupPanel

    store = MemoryStore(Settings())
    stop_at: list[int | None] = [4]

    class ScreenshotPanel(SetupPanel):
        def command(self) -> list[str]:
            return stand_in_setup(self.target(), stop_at[0])

    window = Window((1280, 860))
    controller = AssistantController(QgsProject.instance(), store.load(), window.canvas)
    panel = ScreenshotPanel(store, QuietSupervisor())
    dock = ChatDock(controller, window.region_action, parent=window, setup_panel=panel)
    window.add_dock(dock, 440)
    window.show()
    keep += [window, controller, dock, panel]
    dock.set_engine_status(EngineStatus(EngineState.ERROR, EngineFault.NOT_SET_UP))
    panel.advancedButton.setChecked(True)
    shots.wait_until(panel.isVisible)
    shots.save(dock, "setup-before.png")

    panel.setupEngineButton.click()
    shots.wait_until(
        lambda: "STEP 4/" in panel.logView.toPlainText() and panel.progressBar.value() >= 50, what="the set-up's step 4"
    )
    shots.save(dock, "setup-during.png")

    panel.cancelButton.click()
    shots.wait_until(lambda: not panel.running, what="the set-up to stop")
    shots.save(dock, "setup-cancelled.png")

    stop_at[0] = None
    panel.setupEngineButton.click()
    shots.wait_until(lambda: not panel.running, what="the set-up to finish")
    shots.save(dock, "setup-after.png")

    # the chat once the engine is ready: the Model row and an answer that names its model
    dock.set_engine_status(EngineStatus(EngineState.READY))
    dock.hide_setup()
    controller.modelsChanged.emit(
        [
            ModelInfo("default", "rsa", (Task.CAPTION, Task.GROUND, Task.SEGMENT, Task.CHANGE), True),
            ModelInfo("florence2-base", "florence2", (Task.CAPTION, Task.GROUND, Task.SEGMENT), False),
        ]
    )
    turn = controller.conversation.ask(
        "/find storage tanks", parse_command("/find storage tanks"), layer_names=("after",)
    )
    controller.conversation.answer(
        turn.id, "found 3", model="florence2-base", feature_count=3, result_layers=("find storage tanks",)
    )
    controller.turnChanged.emit(turn.id)
    shots.wait_until(lambda: True)
    shots.save(dock, "dock-models.png")
    controller.shutdown()
    dock.shutdown()
    panel.shutdown()
    window.close()

    # the model manager, listed by the real engine CLI with this Python
    models_file = work / "models.toml"
    models_file.write_text(
        textwrap.dedent(f"""\
        [models.rsa-large]
        backend = "rsa"
        path = "{resource("models", "rsa-default").as_posix()}"

        [tasks]
        ground = "rsa-large"
        """),
        encoding="utf-8",
    )
    store.save(Settings(engine_python=sys.executable, models_file=str(models_file)))
    dialog = ModelManagerDialog(store)
    keep.append(dialog)
    dialog.resize(1000, 560)
    dialog.show()
    done = []
    dialog.listed.connect(lambda: done.append(True))
    dialog.refresh()
    shots.wait_until(lambda: done, timeout_s=120, what="models list --json")
    dialog.select("florence2-base")
    shots.wait_until(lambda: True)
    shots.save(dialog, "model-manager.png")
    dialog.close()


# --- the assistant on the demo project, with the real engine -----------------------------------
class Assistant:
    """The plugin's objects wired as RSAssistantPlugin.initGui wires them, over the demo pair, with an
    engine started by the plugin's own supervisor on the built-in model (this Python, no models file)."""

    def __init__(self, shots: Shots, work: Path, keep: list):
        from rs_assistant.ui.controller import AssistantController
        from rs_assistant.ui.dock import ChatDock
        from rs_assistant.ui.engine import EngineSupervisor
        from rs_assistant.ui.region_tool import RegionPicker

        self.shots = shots
        self.project = QgsProject.instance()
        self.project.clear()
        self.before = QgsRasterLayer(str(resource("demo", "before.tif")), "before")
        self.after = QgsRasterLayer(str(resource("demo", "after.tif")), "after")
        self.project.addMapLayers([self.before, self.after])
        self.project.setCrs(self.after.crs())
        self.window = Window()
        self.canvas = self.window.canvas
        self.canvas.setDestinationCrs(self.after.crs())
        self.canvas.setLayers([self.after])
        settings = Settings(engine_python=sys.executable, output_folder=str(work / "results"))
        self.controller = AssistantController(self.project, settings, self.canvas)
        self.engine = EngineSupervisor(settings, resolve_python=lambda _s: sys.executable, resolve_models=lambda _s: "")
        self.picker = RegionPicker(self.canvas, self.controller)
        self.dock = ChatDock(self.controller, self.window.region_action, parent=self.window)
        self.engine.clientChanged.connect(self.controller.set_client)
        self.engine.statusChanged.connect(self.controller.set_engine_status)  # before the dock's: it shows the queue
        self.engine.statusChanged.connect(self.dock.set_engine_status)
        self.engine.healthChanged.connect(self.dock.set_engine_health)
        self.window.add_dock(self.dock)
        self.window.show()
        keep += [self.window, self.dock]
        extent = self.after.extent()
        self.canvas.setExtent(extent)
        shots.settle(self.canvas)
        self.dock.imageLayerCombo.setLayer(self.after)
        # a 160 m square west of the centre: a parking lot, a large building, houses, streets
        x, y = extent.center().x() - 270, extent.center().y() - 160
        self.region = QgsRectangle(x, y, x + 160, y + 160)
        self.controller.set_region(self.region, self.after.crs())

    def type(self, text: str) -> None:
        """Types ``text`` into the prompt and presses Send, as a person would."""
        self.dock.promptEdit.setPlainText(text)
        self.dock.sendButton.click()

    def answered(self) -> bool:
        turns = self.controller.conversation.turns
        return not self.controller.busy and bool(turns) and turns[-1].state not in (TurnState.PENDING, TurnState.QUEUED)

    def ask(self, text: str) -> None:
        """Asks ``text`` and waits for its answer; an answer that failed stops the script."""
        self.type(text)
        self.shots.wait_until(self.answered, ENGINE_TIMEOUT_S, f"the answer to {text!r}")
        turn = self.controller.conversation.turns[-1]
        if turn.state is not TurnState.ANSWERED:
            raise RuntimeError(f"{text!r} was not answered: {turn.state.value} {turn.error} {turn.error_detail}")
        print(
            f"  {text!r}: {turn.answer.splitlines()[0] if turn.answer else ''} ({turn.feature_count} features)",
            flush=True,
        )

    def show(self, layers: list, extent: QgsRectangle | None = None) -> None:
        self.canvas.setLayers([*layers, self.after])
        self.canvas.setExtent(extent or self.region.buffered(20))
        self.shots.settle(self.canvas)

    def shutdown(self) -> None:
        self.engine.stop()
        self.controller.shutdown()
        self.dock.shutdown()
        self.picker.unload()
        self.window.close()


def assistant_screens(shots: Shots, work: Path, keep: list) -> None:
    a = Assistant(shots, work, keep)
    dock, controller = a.dock, a.controller

    # a question typed while the engine starts waits, and runs once it is ready
    a.engine.start()
    shots.wait_until(lambda: a.engine.status.state is EngineState.STARTING, what="the engine to start")
    a.type("what is in this image?")
    shots.wait_until(lambda: controller.queued, what="the question to wait")
    shots.save(dock, "queued-question.png")
    shots.wait_until(a.answered, ENGINE_TIMEOUT_S, "the engine and its first answer")
    print(f"  engine: {dock.engineStatusLabel.text()}", flush=True)
    print(f"  'what is in this image?': {controller.conversation.turns[-1].answer}", flush=True)
    shots.save(dock, "answer-describe.png")

    # plain sentences: the router picks the task; the answers list their features
    controller.new_chat()
    a.ask("outline the buildings")
    buildings = controller.last_layers[0]
    a.show([buildings])
    shots.save(a.window, "answer-map.png", palette=True)

    # a building selected on the map shades the answer it came from
    buildings.selectByIds([controller.conversation.turns[0].features[0].fid])
    shots.wait_until(lambda: True)
    shots.save(dock, "answer-features.png")
    buildings.removeSelection()

    # the detections under the score threshold are offered, then added
    a.ask("/find buildings")
    find_turn = controller.conversation.turns[-1]
    shots.save(dock, "answer-held-back.png")
    if find_turn.held_back:
        dock._on_link(f"heldback:{find_turn.id}")  # what clicking "Show N more below 0.3" does
        shots.wait_until(
            lambda: controller.conversation.get(find_turn.id).held_back == 0, what="the held-back detections"
        )
    else:
        print("  (the find held nothing back: answer-held-back-shown.png shows the answer as it is)", flush=True)
    shots.save(dock, "answer-held-back-shown.png")

    table = attribute_table(shots, buildings, a.canvas, rows=4)
    keep.append(table)
    shots.save(table, "answer-table.png")
    table.close()

    # a before and an after over the whole view: "what changed?" compares them; French works too
    controller.new_chat()
    dock.beforeLayerCombo.setLayer(a.before)
    dock.afterLayerCombo.setLayer(a.after)
    controller.clear_region()
    a.window.resize(WINDOW_SIZE[0], 1000)  # the two turns in full
    a.show([], a.after.extent())
    a.ask("what changed?")
    a.ask("segmente les bâtiments")
    dock.transcriptView.scrollToAnchor(f"turn-{controller.conversation.turns[0].id}")  # from the first question
    shots.save(dock, "answer-routed.png", palette=True)
    a.window.resize(*WINDOW_SIZE)
    controller.set_region(a.region, a.after.crs())

    mask_export_screens(shots, a, buildings, work, keep)

    # /search: the region's tiles ranked by a description, heat-styled on the map
    controller.new_chat()
    controller.clear_region()  # no region: the whole layer's tiles
    a.ask("/search a parking lot")
    tiles = controller.last_layers[0]
    best = QgsRectangle()
    for feature in tiles.getFeatures():
        if feature["rank"] <= 2:  # the map around the two best tiles, the imagery at its own scale
            best.combineExtentWith(feature.geometry().boundingBox())
    a.show([tiles], best.buffered(best.width() * 0.1).intersect(a.after.extent()))
    shots.save(a.window, "search-answer.png", palette=True)
    table = attribute_table(shots, tiles, a.canvas, rows=5)
    keep.append(table)
    shots.save(table, "search-table.png")
    table.close()

    narrow_dock_screen(shots, a, keep)

    # Project > New while a request runs: the dock is usable at once, nothing is left of the old project
    a.type("/describe")
    a.project.clear()
    a.canvas.setLayers([])
    shots.wait_until(lambda: not controller.busy, what="the request to stop")
    shots.save(dock, "project-new.png")
    a.shutdown()


def mask_export_screens(shots: Shots, a: Assistant, buildings: QgsVectorLayer, work: Path, keep: list) -> None:
    from rs_assistant.ui.mask_export_dialog import MaskExportDialog

    a.show([buildings])
    dialog = MaskExportDialog(a.window, a.canvas, message_bar=a.window.bar)
    keep.append(dialog)
    dialog.inputLayerCombo.setLayer(buildings)
    dialog.extentRadio.setChecked(True)
    dialog.maskFileWidget.setFilePath(str(work / "buildings_mask.tif"))
    dialog.show()
    shots.wait_until(dialog.isVisible)
    shots.save(dialog, "mask-export-before.png")

    dialog.referenceRadio.setChecked(True)
    dialog.referenceLayerCombo.setLayer(a.after)
    done = []
    dialog.exportFinished.connect(lambda ok, path: done.append(ok))
    dialog.start_export()
    shots.wait_until(lambda: done, timeout_s=120, what="the mask export")
    if not done[0]:
        raise RuntimeError(
            f"the mask export failed: {dialog.statusLabel.text() if hasattr(dialog, 'statusLabel') else ''}"
        )
    mask = a.project.mapLayersByName("buildings_mask")[0]
    a.show([mask])
    shots.save(a.window, "mask-export-done.png", palette=True)
    dialog.shutdown()
    a.window.bar.clearWidgets()


def narrow_dock_screen(shots: Shots, a: Assistant, keep: list) -> None:
    """The dock in a 300 px dock area, under a panel standing for the Processing toolbox."""
    window, dock = a.window, a.dock
    toolbox = QDockWidget("Processing Toolbox", window)
    keep.append(toolbox)
    tree = QTreeWidget()
    tree.setHeaderHidden(True)
    for name in ("Recently used", "RS Assistant", "Raster analysis", "Vector geometry"):
        QTreeWidgetItem(tree, [name])
    toolbox.setWidget(tree)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, toolbox)
    window.splitDockWidget(toolbox, dock, Qt.Orientation.Vertical)
    window.resize(1280, 1000)
    window.resizeDocks([toolbox, dock], [300, 300], Qt.Orientation.Horizontal)
    window.resizeDocks([toolbox, dock], [200, 800], Qt.Orientation.Vertical)
    shots.wait_until(lambda: True)
    area = toolbox.geometry().united(dock.geometry())
    print(f"  narrow dock: {dock.width()} px (its minimum {dock.minimumSizeHint().width()} px)", flush=True)
    shots.save(window, "dock-narrow.png", area)
    window.removeDockWidget(toolbox)
    window.resize(*WINDOW_SIZE)
    window.add_dock(dock)


def close_cleanly(app: QgsApplication, keep: list) -> None:
    """Deletes every widget while QGIS still runs, then clears the project, then exits QGIS."""
    for widget in keep:
        try:
            widget.deleteLater()
        except RuntimeError:  # already deleted with its parent
            pass
    keep.clear()
    for _ in range(3):
        QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
        app.processEvents()
    QgsProject.instance().clear()
    app.exitQgis()


def main(argv: list[str]) -> int:
    started = time.monotonic()
    out = Path(argv[0] if argv else ROOT / "docs" / "screens")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    app = QgsApplication([], True)
    app.initQgis()
    shots = Shots(app, out)
    keep: list = []  # every top-level widget and plugin object, deleted before QGIS exits
    with tempfile.TemporaryDirectory(prefix="rsa-screens-") as folder:
        work = Path(folder)
        first_run_screens(shots, work, keep)
        assistant_screens(shots, work, keep)
        close_cleanly(app, keep)
    print(f"{len(shots.saved)} screens in {out} ({time.monotonic() - started:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
