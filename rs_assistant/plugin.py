"""The plugin object QGIS creates: registers the dock, actions, toolbar, menu entries, map tool,
engine and Processing provider.

``initGui`` makes every registration and ``unload`` undoes each of them, so reloading the
plugin leaves nothing behind (the engine process it started included).
"""

from __future__ import annotations

import logging

from qgis.core import QgsApplication, QgsProject, QgsSettings
from qgis.PyQt.QtCore import QCoreApplication, QLocale, Qt, QTranslator
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction, QToolBar

from rs_assistant.core.paths import i18n_dir, resource
from rs_assistant.ui import log_handler

log = logging.getLogger(__name__)

MENU = "&RS Assistant"


class RSAssistantPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.dock = None
        self.toolbar: QToolBar | None = None
        self.actions: list[QAction] = []
        self.translator: QTranslator | None = None
        self._log_handler = None
        self.settings_store = None
        self.engine = None
        self.controller = None
        self.region_picker = None
        self.processing_provider = None
        self.mask_dialog = None
        self.setup_panel = None
        self.model_manager = None

    # --- set-up ---------------------------------------------------------------------------------
    def _install_translator(self) -> None:
        locale = (QgsSettings().value("locale/userLocale", "") or QLocale().name())[:2]
        qm = i18n_dir() / f"rs_assistant_{locale}.qm"
        if qm.is_file():
            translator = QTranslator()
            if translator.load(str(qm)):
                QCoreApplication.installTranslator(translator)
                self.translator = translator

    def _add_action(
        self, name: str, icon: str, text: str, callback, checkable: bool = False, toolbar: bool = True
    ) -> QAction:
        action = QAction(QIcon(str(resource("icons", icon))), text, self.iface.mainWindow())
        action.setObjectName(name)
        action.setCheckable(checkable)
        action.triggered.connect(callback)
        if toolbar:
            self.toolbar.addAction(action)
        self.iface.addPluginToRasterMenu(MENU, action)
        self.actions.append(action)
        return action

    def initGui(self) -> None:  # noqa: N802 (QGIS's name)
        self._log_handler = log_handler.install()
        self._install_translator()
        from rs_assistant.ui.controller import AssistantController
        from rs_assistant.ui.dock import ChatDock
        from rs_assistant.ui.engine import EngineSupervisor
        from rs_assistant.ui.region_tool import RegionPicker
        from rs_assistant.ui.settings_store import SettingsStore
        from rs_assistant.ui.setup_panel import SetupPanel

        canvas = self.iface.mapCanvas()
        self.settings_store = SettingsStore()
        settings = self.settings_store.load()
        self.engine = EngineSupervisor(settings)
        self.controller = AssistantController(QgsProject.instance(), settings, canvas)
        self.engine.clientChanged.connect(self.controller.set_client)
        self.engine.statusChanged.connect(self.controller.set_engine_status)  # before the dock's: it shows the queue
        self.region_picker = RegionPicker(canvas, self.controller)

        translate = QCoreApplication.translate
        self.toolbar = self.iface.addToolBar(translate("RSAssistantPlugin", "RS Assistant"))
        self.toolbar.setObjectName("RSAssistantToolbar")
        self.toggle_action = self._add_action(
            "actionRSAssistantDock",
            "rs_assistant.svg",
            translate("RSAssistantPlugin", "RS Assistant chat"),
            self._toggle_dock,
            checkable=True,
        )
        self.select_region_action = self._add_action(
            "actionSelectRegion",
            "select_region.svg",
            translate("RSAssistantPlugin", "Select a region"),
            self._select_region,
            checkable=True,
        )
        self.settings_action = self._add_action(
            "actionRSAssistantSettings",
            "rs_assistant.svg",
            translate("RSAssistantPlugin", "RS Assistant settings…"),
            self._open_settings,
            toolbar=False,
        )
        self.setup_action = self._add_action(
            "actionRSAssistantSetup",
            "rs_assistant.svg",
            translate("RSAssistantPlugin", "Set up the engine…"),
            self._show_setup,
            toolbar=False,
        )
        self.models_action = self._add_action(
            "actionRSAssistantModels",
            "rs_assistant.svg",
            translate("RSAssistantPlugin", "Manage models…"),
            self._open_model_manager,
            toolbar=False,
        )
        canvas.mapToolSet.connect(self._on_map_tool_set)

        self.setup_panel = SetupPanel(self.settings_store, self.engine)
        self.setup_panel.settingsSaved.connect(self.controller.apply_settings)
        self.dock = ChatDock(
            self.controller, self.select_region_action, self.iface.mainWindow(), setup_panel=self.setup_panel
        )
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()
        self.dock.visibilityChanged.connect(self._on_dock_visible)
        self.dock.restartRequested.connect(self.engine.restart)
        self.dock.settingsRequested.connect(self._open_settings)
        self.dock.manageModelsRequested.connect(self._open_model_manager)
        self.engine.statusChanged.connect(self.dock.set_engine_status)
        self.engine.healthChanged.connect(self.dock.set_engine_health)
        QgsApplication.instance().aboutToQuit.connect(self.engine.stop)

        from rs_assistant.processing.engine_connection import ENGINE
        from rs_assistant.processing.provider import RSAssistantProvider
        from rs_assistant.ui.mask_export_dialog import MaskExportDialog

        self.export_mask_action = self._add_action(
            "actionExportMask", "export_mask.svg", MaskExportDialog.action_text(), self._export_mask
        )
        self.processing_provider = RSAssistantProvider()
        QgsApplication.processingRegistry().addProvider(self.processing_provider)
        ENGINE.attach(self.engine)  # Processing jobs use the chat's engine while it runs
        log.info("RS Assistant loaded")

    # --- behaviour ------------------------------------------------------------------------------
    def _toggle_dock(self, checked: bool) -> None:
        self.dock.setVisible(checked)

    def _on_dock_visible(self, visible: bool) -> None:
        self.toggle_action.setChecked(visible)
        if visible:
            self.engine.start()  # the engine starts when someone first opens the chat

    def _select_region(self, checked: bool) -> None:
        if checked:
            self.dock.show()
            self.region_picker.activate()
        else:
            self.region_picker.deactivate()

    def _on_map_tool_set(self, new_tool, _old_tool=None) -> None:
        self.select_region_action.setChecked(new_tool is self.region_picker.tool)

    def _open_settings(self) -> None:
        from rs_assistant.ui.settings_dialog import SettingsDialog

        dialog = SettingsDialog(self.settings_store.load(), self.iface.mainWindow())
        if dialog.exec():
            settings = dialog.settings()
            self.settings_store.save(settings)
            self.controller.apply_settings(settings)
            self.engine.apply_settings(settings)
        dialog.deleteLater()

    def _show_setup(self) -> None:
        """The set-up panel on request (a repair, another PyTorch build): in the dock, in place of the chat."""
        self.setup_panel.load_settings()
        self.dock.show()
        self.dock.raise_()
        self.dock.show_setup()

    def _open_model_manager(self) -> None:
        if self.model_manager is None:
            from rs_assistant.ui.model_manager import ModelManagerDialog

            self.model_manager = ModelManagerDialog(self.settings_store, self.iface.mainWindow())
            self.model_manager.modelsFileChanged.connect(self._on_models_file_changed)
            self.model_manager.setupRequested.connect(self._show_setup)
        self.model_manager.show()
        self.model_manager.raise_()
        self.model_manager.refresh()

    def _on_models_file_changed(self) -> None:
        """The model manager changed the models file: a running engine restarts to read it."""
        from rs_assistant.core.engine_state import EngineState

        if self.engine.status.state is not EngineState.STOPPED:
            self.engine.restart()

    def _export_mask(self) -> None:
        if self.mask_dialog is None:
            from rs_assistant.ui.mask_export_dialog import MaskExportDialog

            self.mask_dialog = MaskExportDialog(self.iface.mainWindow(), self.iface.mapCanvas())
        self.mask_dialog.show()
        self.mask_dialog.raise_()

    # --- tear-down ------------------------------------------------------------------------------
    def unload(self) -> None:
        # first what follows the project and the canvas: whatever fails below, nothing is left listening
        if self.controller is not None:
            self.controller.shutdown()  # the project keeps its layers, region and transcript; a request stops
        if self.dock is not None:
            self.dock.shutdown()
        if self.processing_provider is not None:
            from rs_assistant.processing.engine_connection import ENGINE

            try:
                QgsApplication.processingRegistry().removeProvider(self.processing_provider)
            except (
                RuntimeError
            ):  # the registry refused it (another window's plugin in this process has the id) and deleted it
                log.debug("the Processing provider was already gone")
            self.processing_provider = None
            ENGINE.detach(self.engine)
            ENGINE.shutdown()  # the engine Processing started for itself, if any
        if self.model_manager is not None:
            self.model_manager.shutdown()
            self.model_manager.deleteLater()
            self.model_manager = None
        if self.setup_panel is not None:
            self.setup_panel.shutdown()
            self.setup_panel = None  # the dock owns the widget
        if self.mask_dialog is not None:
            self.mask_dialog.shutdown()
            self.mask_dialog.deleteLater()
            self.mask_dialog = None
        if self.engine is not None:
            QgsApplication.instance().aboutToQuit.disconnect(self.engine.stop)
            self.engine.stop()
            self.engine.deleteLater()
            self.engine = None
        if self.region_picker is not None:
            try:
                self.iface.mapCanvas().mapToolSet.disconnect(self._on_map_tool_set)
            except (TypeError, RuntimeError):  # the canvas went first
                pass
            self.region_picker.unload()
            self.region_picker = None
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
        if self.controller is not None:
            self.controller.deleteLater()
            self.controller = None
        if self.translator is not None:
            QCoreApplication.removeTranslator(self.translator)
            self.translator = None
        if self._log_handler is not None:
            log_handler.uninstall(self._log_handler)
            self._log_handler = None
