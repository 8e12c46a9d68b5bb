"""The plugin object QGIS creates: registers the dock, actions, toolbar and menu entries.

``initGui`` makes every registration and ``unload`` undoes each of them, so reloading the
plugin leaves nothing behind.
"""

from __future__ import annotations

import logging

from qgis.core import QgsApplication, QgsSettings
from qgis.PyQt.QtCore import QCoreApplication, QLocale, Qt, QTranslator
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QToolBar

from rs_assistant.core.paths import i18n_dir, resource
from rs_assistant.ui import log_handler

log = logging.getLogger(__name__)

MENU = "&RS Assistant"


def tr(text: str) -> str:
    return QCoreApplication.translate("RSAssistantPlugin", text)


class RSAssistantPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.dock = None
        self.toolbar: QToolBar | None = None
        self.actions: list[QAction] = []
        self.translator: QTranslator | None = None
        self._log_handler = None

    # --- set-up ---------------------------------------------------------------------------------
    def _install_translator(self) -> None:
        locale = (QgsSettings().value("locale/userLocale", "") or QLocale().name())[:2]
        qm = i18n_dir() / f"rs_assistant_{locale}.qm"
        if qm.is_file():
            translator = QTranslator()
            if translator.load(str(qm)):
                QCoreApplication.installTranslator(translator)
                self.translator = translator

    def _add_action(self, name: str, icon: str, text: str, callback, checkable: bool = False) -> QAction:
        action = QAction(QIcon(str(resource("icons", icon))), text, self.iface.mainWindow())
        action.setObjectName(name)
        action.setCheckable(checkable)
        action.triggered.connect(callback)
        self.toolbar.addAction(action)
        self.iface.addPluginToRasterMenu(MENU, action)
        self.actions.append(action)
        return action

    def initGui(self) -> None:  # noqa: N802 (QGIS's name)
        self._log_handler = log_handler.install()
        self._install_translator()
        from rs_assistant.ui.dock import ChatDock

        self.dock = ChatDock(self.iface.mainWindow())
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()

        self.toolbar = self.iface.addToolBar(tr("RS Assistant"))
        self.toolbar.setObjectName("RSAssistantToolbar")
        self.toggle_action = self._add_action(
            "actionRSAssistantDock", "rs_assistant.svg", tr("RS Assistant chat"), self._toggle_dock, checkable=True
        )
        self.select_region_action = self._add_action(
            "actionSelectRegion", "select_region.svg", tr("Select a region"), self._select_region, checkable=True
        )
        self.dock.visibilityChanged.connect(self.toggle_action.setChecked)
        log.info("RS Assistant loaded")

    # --- behaviour ------------------------------------------------------------------------------
    def _toggle_dock(self, checked: bool) -> None:
        self.dock.setVisible(checked)

    def _select_region(self, checked: bool) -> None:
        self.dock.show()

    # --- tear-down ------------------------------------------------------------------------------
    def unload(self) -> None:
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
            self.iface.removeToolBarIcon(action)
            action.deleteLater()
        self.actions.clear()
        if self.toolbar is not None:
            self.iface.mainWindow().removeToolBar(self.toolbar)
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.dock is not None:
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.translator is not None:
            QCoreApplication.removeTranslator(self.translator)
            self.translator = None
        if self._log_handler is not None:
            log_handler.uninstall(self._log_handler)
            self._log_handler = None
