"""A QgisInterface for tests that records what a plugin registers on a real QMainWindow.

Unlike a stub, docks, toolbars and menus really land on the window, so a test can check that
``unload()`` removed every one of them.
"""

from __future__ import annotations

from qgis.gui import QgsMapCanvas
from qgis.PyQt.QtCore import QObject, Qt
from qgis.PyQt.QtWidgets import QMainWindow, QMenu, QToolBar


class RecordingIface(QObject):
    def __init__(self, canvas: QgsMapCanvas | None = None):
        super().__init__()
        self._window = QMainWindow()
        self._canvas = canvas or QgsMapCanvas(self._window)
        self._window.setCentralWidget(self._canvas)
        self._plugins_toolbar = self._window.addToolBar("Plugins")
        self._plugins_toolbar.setObjectName("mPluginToolBar")
        self._menus: dict[str, QMenu] = {}
        self.raster_menu = self._window.menuBar().addMenu("&Raster")
        self.plugin_menu = self._window.menuBar().addMenu("&Plugins")

    # windows
    def mainWindow(self):  # noqa: N802
        return self._window

    def mapCanvas(self):  # noqa: N802
        return self._canvas

    def messageBar(self):  # noqa: N802
        from qgis.gui import QgsMessageBar

        if not hasattr(self, "_message_bar"):
            self._message_bar = QgsMessageBar(self._window)
        return self._message_bar

    # docks and toolbars
    def addDockWidget(self, area, dock):  # noqa: N802
        self._window.addDockWidget(area, dock)

    def removeDockWidget(self, dock):  # noqa: N802
        self._window.removeDockWidget(dock)

    def addToolBar(self, name):  # noqa: N802
        toolbar = name if isinstance(name, QToolBar) else QToolBar(name, self._window)
        self._window.addToolBar(Qt.ToolBarArea.TopToolBarArea, toolbar)
        return toolbar

    def addToolBarIcon(self, action):  # noqa: N802
        self._plugins_toolbar.addAction(action)

    def removeToolBarIcon(self, action):  # noqa: N802
        self._plugins_toolbar.removeAction(action)

    # menus
    def _submenu(self, parent: QMenu, name: str) -> QMenu:
        key = f"{parent.title()}/{name}"
        if key not in self._menus:
            self._menus[key] = parent.addMenu(name)
        return self._menus[key]

    def _remove(self, parent: QMenu, name: str, action) -> None:
        key = f"{parent.title()}/{name}"
        menu = self._menus.get(key)
        if menu is None:
            return
        menu.removeAction(action)
        if not menu.actions():
            parent.removeAction(menu.menuAction())
            del self._menus[key]

    def addPluginToRasterMenu(self, name, action):  # noqa: N802
        self._submenu(self.raster_menu, name).addAction(action)

    def removePluginRasterMenu(self, name, action):  # noqa: N802
        self._remove(self.raster_menu, name, action)

    def addPluginToMenu(self, name, action):  # noqa: N802
        self._submenu(self.plugin_menu, name).addAction(action)

    def removePluginMenu(self, name, action):  # noqa: N802
        self._remove(self.plugin_menu, name, action)

    def registered_menus(self) -> list[str]:
        return sorted(self._menus)
