"""Loads, starts and unloads an installed plugin in a fresh headless QGIS; prints a JSON report.

    QT_QPA_PLATFORM=offscreen .venv/bin/python tests/qgis/plugin_lifecycle_probe.py PROFILE_DIR

Run as its own process so that the plugin imported is the one installed in PROFILE_DIR's
``python/plugins/``, not the repository's copy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QCoreApplication, QEvent
from qgis.PyQt.QtWidgets import QAction, QDockWidget, QToolBar

NAME = "rs_assistant"


def snapshot(iface) -> dict:
    window = iface.mainWindow()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    QCoreApplication.processEvents()
    tool = iface.mapCanvas().mapTool()
    registry = QgsApplication.processingRegistry()
    return {
        "docks": sorted(d.objectName() for d in window.findChildren(QDockWidget)),
        "actions": sorted(a.objectName() for a in window.findChildren(QAction) if a.objectName()),
        "toolbars": sorted(t.objectName() for t in window.findChildren(QToolBar)),
        "toolbar_actions": sorted(
            a.objectName() for t in window.findChildren(QToolBar) for a in t.actions() if a.objectName()
        ),
        "menus": iface.registered_menus(),
        "map_tool": type(tool).__module__ if tool is not None else None,
        "providers": sorted(p.id() for p in registry.providers()),
    }


def main() -> None:
    profile = Path(sys.argv[1])
    app = QgsApplication([], True, str(profile))
    app.initQgis()
    import qgis.utils

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from recording_iface import RecordingIface

    plugins = Path(QgsApplication.qgisSettingsDirPath()) / "python" / "plugins"
    sys.path.insert(0, str(plugins))
    qgis.utils.plugin_paths = [str(plugins)]
    iface = RecordingIface()
    qgis.utils.iface = iface
    qgis.utils.updateAvailablePlugins()
    report = {"available": NAME in qgis.utils.available_plugins, "before": snapshot(iface)}
    report["loaded"] = bool(qgis.utils.loadPlugin(NAME))
    report["started"] = bool(qgis.utils.startPlugin(NAME))
    # a person picks the region tool: unload must take the map tool away again
    for action in iface.mainWindow().findChildren(QAction, "actionSelectRegion"):
        action.trigger()
    module = sys.modules.get(NAME)
    report["module_file"] = getattr(module, "__file__", None)
    report["during"] = snapshot(iface)
    report["unloaded"] = bool(qgis.utils.unloadPlugin(NAME))
    report["after"] = snapshot(iface)
    print("REPORT " + json.dumps(report))
    app.exitQgis()


if __name__ == "__main__":
    main()
