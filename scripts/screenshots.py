"""xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py [OUT_DIR]

Saves PNGs of the first-run screens into OUT_DIR (default out/screens/), from the real widgets in
a sized QMainWindow with a map canvas and the RS Assistant dock on the right:

- setup-before.png     the dock on a fresh profile: the set-up panel (Advanced open)
- setup-during.png     a set-up running: step, progress bar and log
- setup-cancelled.png  after Cancel: the button offers to resume
- setup-after.png      a finished set-up, starting the engine
- dock-models.png      the chat with its Model row (Auto (per task), Manage models…) and an answer naming its model
- model-manager.png    the model manager, listed by a real ``models list --json`` run with this Python

The set-up screens run a stand-in process that prints the set-up's own line format (its real
step names, pip-like log lines) in seconds, so the script needs no network and no wheels; the
real set-up is exercised by tests/qgis/test_setup_panel.py. Settings go to an in-memory store:
the script never touches the person's QGIS settings.
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

from qgis.core import QgsApplication, QgsProject  # noqa: E402
from qgis.gui import QgsMapCanvas  # noqa: E402
from qgis.PyQt.QtCore import Qt  # noqa: E402
from qgis.PyQt.QtGui import QIcon  # noqa: E402
from qgis.PyQt.QtWidgets import QAction, QMainWindow  # noqa: E402

from rs_assistant import setup_engine  # noqa: E402
from rs_assistant.core.engine_state import EngineFault, EngineState, EngineStatus  # noqa: E402
from rs_assistant.core.paths import resource  # noqa: E402
from rs_assistant.core.protocol import ModelInfo, Task  # noqa: E402
from rs_assistant.core.settings import Settings  # noqa: E402

DOCK_WIDTH = 440


class MemoryStore:
    """The settings store's two methods, in memory."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def load(self) -> Settings:
        return self.settings

    def save(self, settings: Settings) -> None:
        self.settings = settings


class QuietSupervisor:
    """What the panel asks of the engine supervisor; here it only remembers."""

    def __init__(self):
        self.started = False

    def apply_settings(self, settings: Settings) -> None:
        self.settings = settings

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        pass


def stand_in_setup(target: Path, stop_at_step: int | None) -> list[str]:
    """A process printing what ``python -m rs_assistant.setup_engine`` prints, quickly."""
    lines = {
        1: ["Python 3.11.2 at /usr/bin/python3.11"],
        2: [f"free space in the target's disk: 212.4 GB (needs {setup_engine.disk_needed_gb('cpu'):.1f} GB)"],
        3: [f"created the virtual environment {target}"],
        4: ["  Looking in links: /data/wheelhouse", "  Processing /data/wheelhouse/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl",
            "  Processing /data/wheelhouse/filelock-3.16.1-py3-none-any.whl", "  Installing collected packages: filelock, torch"],
        5: ["  Processing /data/wheelhouse/transformers-4.57.1-py3-none-any.whl",
            "  Processing /data/wheelhouse/rasterio-1.4.3-cp311-cp311-manylinux_2_17_x86_64.whl",
            "  Successfully installed fastapi-0.115.6 rasterio-1.4.3 transformers-4.57.1 uvicorn-0.32.1"],
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


def wait_until(app, condition, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the screen did not reach the state to capture")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(5):
        app.processEvents()


def save(widget, path: Path) -> None:
    widget.grab().save(str(path))
    print(path)


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else ROOT / "out" / "screens")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    app = QgsApplication([], True)
    app.initQgis()

    from rs_assistant.ui.controller import AssistantController
    from rs_assistant.ui.dock import ChatDock
    from rs_assistant.ui.model_manager import ModelManagerDialog
    from rs_assistant.ui.setup_panel import SetupPanel

    store = MemoryStore(Settings())
    supervisor = QuietSupervisor()
    stop_at: list[int | None] = [4]

    class ScreenshotPanel(SetupPanel):
        def command(self) -> list[str]:
            return stand_in_setup(self.target(), stop_at[0])

    window = QMainWindow()
    window.resize(1280, 860)
    canvas = QgsMapCanvas(window)
    window.setCentralWidget(canvas)
    controller = AssistantController(QgsProject.instance(), store.load(), canvas)
    panel = ScreenshotPanel(store, supervisor)
    region_action = QAction(QIcon(str(resource("icons", "select_region.svg"))), "Select a region", window)
    region_action.setCheckable(True)
    dock = ChatDock(controller, region_action, parent=window, setup_panel=panel)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    window.resizeDocks([dock], [DOCK_WIDTH], Qt.Orientation.Horizontal)
    window.show()
    dock.set_engine_status(EngineStatus(EngineState.ERROR, EngineFault.NOT_SET_UP))
    panel.advancedButton.setChecked(True)
    wait_until(app, panel.isVisible)
    save(dock, out / "setup-before.png")

    panel.setupEngineButton.click()
    wait_until(app, lambda: "STEP 4/" in panel.logView.toPlainText() and panel.progressBar.value() >= 50)
    save(dock, out / "setup-during.png")

    panel.cancelButton.click()
    wait_until(app, lambda: not panel.running)
    save(dock, out / "setup-cancelled.png")

    stop_at[0] = None
    panel.setupEngineButton.click()
    wait_until(app, lambda: not panel.running)
    save(dock, out / "setup-after.png")

    # the chat once the engine is ready: the Model row and an answer that names its model
    dock.set_engine_status(EngineStatus(EngineState.READY))
    dock.hide_setup()
    controller.modelsChanged.emit([ModelInfo("default", "rsa", (Task.CAPTION, Task.GROUND, Task.SEGMENT, Task.CHANGE), True),
                                   ModelInfo("florence2-base", "florence2", (Task.CAPTION, Task.GROUND, Task.SEGMENT), False)])
    from rs_assistant.core.commands import parse_command

    turn = controller.conversation.ask("/find storage tanks", parse_command("/find storage tanks"), layer_names=("after",))
    controller.conversation.answer(turn.id, "found 3", model="florence2-base", feature_count=3, result_layers=("find storage tanks",))
    controller.turnChanged.emit(turn.id)
    wait_until(app, lambda: True)
    save(dock, out / "dock-models.png")

    # the model manager, listed by the real engine CLI with this Python
    work = Path(tempfile.mkdtemp(prefix="rsa-screens-"))
    models_file = work / "models.toml"
    models_file.write_text(textwrap.dedent(f"""\
        [models.rsa-large]
        backend = "rsa"
        path = "{resource('models', 'rsa-default').as_posix()}"

        [tasks]
        ground = "rsa-large"
        """), encoding="utf-8")
    store.save(Settings(engine_python=sys.executable, models_file=str(models_file)))
    dialog = ModelManagerDialog(store)
    dialog.resize(1000, 560)
    dialog.show()
    done = []
    dialog.listed.connect(lambda: done.append(True))
    dialog.refresh()
    wait_until(app, lambda: done, timeout_s=60)
    dialog.select("florence2-base")
    wait_until(app, lambda: True)
    save(dialog, out / "model-manager.png")

    dialog.close()
    window.close()
    app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
