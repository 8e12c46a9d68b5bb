"""The headless demo: the installed plugin, its own dock and controller, the engine it starts.

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/demo_headless.py --profile out/demo-profile/profiles/default
        [--data resources/demo] [--models FILE] [--out out]        (what `make demo` runs without a display)

It starts QGIS offscreen on a fresh profile where `make demo` unzipped the plugin, opens the demo
project (a before/after pair), opens the chat dock (which starts the engine), selects a region
and asks Describe, Find buildings, Segment water and Compare by typing into the dock's prompt as a
person would. It prints the transcript and writes out/demo.gpkg (the result layers),
out/demo_transcript.md and out/demo.png (the map with the result layers beside the dock).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ("/describe", "/find buildings", "/segment water", "/change")


def wait(app, condition, timeout_s: float, what) -> None:
    """Process Qt events until ``condition()``; ``what`` (text, or a callable giving it) names it on time-out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(
                f"demo: timed out after {timeout_s:.0f} s waiting for {what() if callable(what) else what}"
            )
        app.processEvents()
        time.sleep(0.02)


def render_png(path: Path, project, layers, region, dock) -> None:
    """The map around the region with the result layers, the region outlined, beside the dock."""
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings
    from qgis.PyQt.QtCore import QPointF, QRectF, QSize, Qt
    from qgis.PyQt.QtGui import QColor, QImage, QPainter, QPen

    side = 900
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(project.crs())
    settings.setOutputSize(QSize(side, side))
    settings.setBackgroundColor(QColor("white"))
    settings.setExtent(region.buffered(region.width() * 0.15))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    panel = dock.grab().toImage()
    height = max(side, panel.height())
    image = QImage(side + panel.width(), height, QImage.Format.Format_ARGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    painter.drawImage(0, 0, job.renderedImage())
    to_pixel = settings.mapToPixel()
    corner0 = to_pixel.transform(region.xMinimum(), region.yMaximum())
    corner1 = to_pixel.transform(region.xMaximum(), region.yMinimum())
    painter.setPen(QPen(QColor(255, 140, 0), 3, Qt.PenStyle.DashLine))
    painter.drawRect(QRectF(QPointF(corner0.x(), corner0.y()), QPointF(corner1.x(), corner1.y())))
    painter.drawImage(side, 0, panel)
    painter.end()
    image.save(str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RS Assistant headless demo")
    parser.add_argument(
        "--profile", type=Path, required=True, help="QGIS profile folder holding python/plugins/rs_assistant"
    )
    parser.add_argument("--data", type=Path, default=ROOT / "resources" / "demo")
    parser.add_argument("--models", default="", help="models file for the engine (default: the built-in model)")
    parser.add_argument("--out", type=Path, default=ROOT / "out")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the engine and each answer")
    parser.add_argument(
        "--ask", action="append", default=None, help="a question to type instead of the demo's four (repeatable)"
    )
    args = parser.parse_args(argv)

    from qgis.core import QgsApplication, QgsProject, QgsRectangle, QgsSettings

    app = QgsApplication([], True, str(args.profile.resolve()))
    app.initQgis()
    plugins = args.profile.resolve() / "python" / "plugins"
    sys.path.insert(0, str(plugins))
    sys.path.insert(1, str(ROOT))  # for tests.qgis.recording_iface: a QgisInterface on a real window

    import qgis.utils
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtTest import QTest

    from tests.qgis.recording_iface import RecordingIface

    args.out.mkdir(parents=True, exist_ok=True)
    # The settings the plugin reads when it starts (the installed copy's own settings module).
    from rs_assistant.core.settings import Settings
    from rs_assistant.ui.settings_store import SettingsStore

    SettingsStore(QgsSettings()).save(
        Settings(
            engine_python=str(ROOT / ".venv" / "bin" / "python"),
            models_file=args.models,
            output_folder=str(args.out.resolve()),
            timeout_s=args.timeout,
        )
    )
    for old in ("rs_assistant_results.gpkg", "demo.gpkg"):  # each demo starts from an empty results file
        (args.out / old).unlink(missing_ok=True)
    iface = RecordingIface()
    iface.mainWindow().resize(1600, 900)
    qgis.utils.iface = iface
    qgis.utils.plugin_paths = [str(plugins)]
    qgis.utils.updateAvailablePlugins()
    if not (qgis.utils.loadPlugin("rs_assistant") and qgis.utils.startPlugin("rs_assistant")):
        raise SystemExit("demo: the installed plugin did not start (see the messages above)")
    plugin = qgis.utils.plugins["rs_assistant"]
    import rs_assistant

    if not str(rs_assistant.__file__).startswith(str(plugins)):
        raise SystemExit(f"demo: imported {rs_assistant.__file__}, not the installed plugin")

    project = QgsProject.instance()
    project_file = args.data / "demo.qgs"
    if not project.read(str(project_file)):
        raise SystemExit(f"demo: cannot open {project_file}: run `make demo` to make the demo data")
    before = project.mapLayersByName("before")[0]
    after = project.mapLayersByName("after")[0]
    canvas = iface.mapCanvas()
    canvas.setDestinationCrs(project.crs())
    canvas.setLayers([after])
    canvas.setExtent(canvas.mapSettings().layerExtentToOutputExtent(after, after.extent()))
    iface.mainWindow().show()

    plugin.toggle_action.trigger()  # opening the chat starts the engine
    dock = plugin.dock
    dock.imageLayerCombo.setLayer(after)
    dock.beforeLayerCombo.setLayer(before)
    dock.afterLayerCombo.setLayer(after)
    print("demo: waiting for the engine to start ...", flush=True)
    wait(
        app,
        lambda: plugin.controller.client is not None,
        args.timeout,
        lambda: f"the engine (its status: {dock.engineStatusLabel.text()!r})",
    )

    ext = after.extent()
    side = min(ext.width(), ext.height()) / 4  # a region of about 512 x 512 pixels of the 2048 raster
    cx, cy = ext.center().x(), ext.center().y()
    plugin.controller.set_region(QgsRectangle(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), after.crs())

    for question in args.ask or QUESTIONS:
        print(f"demo: asking {question!r}", flush=True)
        QTest.keyClicks(dock.promptEdit, question)
        QTest.keyClick(dock.promptEdit, Qt.Key.Key_Return)
        wait(app, lambda: not plugin.controller.busy, args.timeout, f"the answer to {question!r}")

    lines = ["# RS Assistant demo transcript", ""]
    for turn in plugin.controller.conversation.turns:
        answer = turn.answer if turn.error is None else f"ERROR ({turn.error.value}): {turn.error_detail}"
        lines += [f"**You:** {turn.question}", "", f"**RS Assistant** ({turn.model or '-'}): {answer}"]
        if turn.result_layers:
            lines.append(f"_{turn.feature_count} feature(s) in layer(s): {', '.join(turn.result_layers)}_")
        lines.append("")
    transcript = "\n".join(lines)
    print(transcript)
    (args.out / "demo_transcript.md").write_text(transcript, encoding="utf-8")

    results = [layer for layer in project.mapLayers().values() if layer.type() == layer.VectorLayer]
    render_png(args.out / "demo.png", project, results + [after], plugin.controller.region, dock)

    gpkg = Path(args.out) / "rs_assistant_results.gpkg"
    failed = [t for t in plugin.controller.conversation.turns if t.error is not None]
    qgis.utils.unloadPlugin("rs_assistant")
    project.clear()
    if gpkg.exists():
        shutil.copyfile(gpkg, args.out / "demo.gpkg")
    print(
        f"demo: wrote {args.out / 'demo.gpkg'}, {args.out / 'demo_transcript.md'}, {args.out / 'demo.png'}", flush=True
    )
    app.exitQgis()
    # Python's own teardown of PyQGIS objects can crash after exitQgis(); everything is written.
    os._exit(1 if failed else 0)


if __name__ == "__main__":
    raise SystemExit(main())
