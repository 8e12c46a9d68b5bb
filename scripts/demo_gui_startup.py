"""Run by QGIS at start-up in `make demo`'s windowed mode (qgis --code): opens the RS Assistant dock.

    qgis --profiles-path out/demo-profile --profile default --project resources/demo/demo.qgs --code
scripts/demo_gui_startup.py

Opening the dock starts the engine on the built-in model; the after image is chosen as the layer to ask about.
"""

from qgis.core import QgsProject
from qgis.utils import plugins

plugin = plugins.get("rs_assistant")
if plugin is not None:
    plugin.toggle_action.trigger()
    project = QgsProject.instance()
    named = {name: project.mapLayersByName(name) for name in ("before", "after")}
    if all(named.values()):
        plugin.dock.imageLayerCombo.setLayer(named["after"][0])
        plugin.dock.beforeLayerCombo.setLayer(named["before"][0])
        plugin.dock.afterLayerCombo.setLayer(named["after"][0])
