"""The chat dock: transcript, prompt, quick actions, engine status, model, layers and region.

Layout lives in resources/ui/chat_dock.ui; this class wires it to an
:class:`AssistantController`, which does the work (the dock holds no state of its own).
When the engine cannot start for want of its environment, the dock shows the set-up panel it
was given (rs_assistant.ui.setup_panel) in place of the chat and of an error line.
"""

from __future__ import annotations

import html
import logging

from qgis.core import QgsMapLayerProxyModel, QgsUnitTypes
from qgis.PyQt import uic
from qgis.PyQt.QtCore import QEvent, QObject, Qt, pyqtSignal
from qgis.PyQt.QtGui import QTextCursor
from qgis.PyQt.QtWidgets import QAction, QDockWidget, QWidget

from rs_assistant.core.engine_state import EngineFault, EngineState, EngineStatus
from rs_assistant.core.paths import resource
from rs_assistant.ui import texts
from rs_assistant.ui.controller import AUTO_MODEL, AssistantController
from rs_assistant.ui.imagery import pixel_size
from rs_assistant.ui.setup_panel import needs_setup
from rs_assistant.ui.transcript import TranscriptRenderer

log = logging.getLogger(__name__)

_FORM, _ = uic.loadUiType(str(resource("ui", "chat_dock.ui")), from_imports=False, import_from="")


class ChatDock(QDockWidget, _FORM):
    restartRequested = pyqtSignal()  # the person clicked "restart" in an engine error
    settingsRequested = pyqtSignal()
    manageModelsRequested = pyqtSignal()  # the person clicked "Manage models…"

    def __init__(self, controller: AssistantController, region_action: QAction | None = None, parent=None,
                 setup_panel: QWidget | None = None):
        super().__init__(parent)
        self.setupUi(self)
        self.setObjectName("RSAssistantDock")
        self.controller = controller
        self.setup_panel = setup_panel
        self._setup_required = False  # the panel is shown because the engine cannot start without it
        if setup_panel is not None:
            self.mainLayout.insertWidget(1, setup_panel, 1)
            setup_panel.hide()
            setup_panel.closeRequested.connect(self.hide_setup)
        self._engine_status = EngineStatus(EngineState.STOPPED)
        self._engine_health = None  # Health | None: what the ready engine computes on (set_engine_health)
        self._transcript = TranscriptRenderer(self.transcriptView)
        self._combos = {"image": self.imageLayerCombo, "before": self.beforeLayerCombo, "after": self.afterLayerCombo}
        for role, combo in self._combos.items():
            combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
            combo.setAllowEmptyLayer(True)
            combo.setLayer(None)
            combo.layerChanged.connect(lambda layer, role=role: self.controller.set_layers(**{role: layer}))
        if region_action is not None:
            self.selectRegionButton.setDefaultAction(region_action)
        self.promptEdit.installEventFilter(self)
        self.sendButton.clicked.connect(self._on_send_clicked)
        self.describeButton.clicked.connect(lambda: self._quick("/describe", needs_text=False))
        self.findButton.clicked.connect(lambda: self._quick("/find", needs_text=True))
        self.segmentButton.clicked.connect(lambda: self._quick("/segment", needs_text=True))
        self.compareButton.clicked.connect(lambda: self._quick("/change", needs_text=False))
        self.newChatButton.clicked.connect(controller.new_chat)
        self.settingsButton.clicked.connect(self.settingsRequested)
        self.swapButton.clicked.connect(controller.swap_before_after)
        self.useViewButton.clicked.connect(controller.clear_region)
        self.modelCombo.activated.connect(lambda index: controller.set_model(self.modelCombo.itemData(index)))
        self.manageModelsButton.clicked.connect(self.manageModelsRequested)
        self._on_models(controller.models)
        self.engineStatusLabel.linkActivated.connect(lambda _link: self.restartRequested.emit())
        self.engineStatusLabel.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)

        controller.turnChanged.connect(self._render)
        controller.conversationCleared.connect(self._render)
        controller.busyChanged.connect(self._on_busy)
        controller.progressChanged.connect(self._on_progress)
        controller.modelsChanged.connect(self._on_models)
        controller.regionChanged.connect(self._show_region)
        controller.layersChanged.connect(self._on_layers_changed)
        if controller.canvas is not None:
            controller.canvas.extentsChanged.connect(self._show_region)
        self.set_engine_status(self._engine_status)
        self._on_busy(controller.busy)
        self._show_region()

    # --- sending --------------------------------------------------------------------------------
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        if (watched is self.promptEdit and event.type() == QEvent.Type.KeyPress
                and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
                and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier):
            if not self.controller.busy:
                self.send()
            return True
        return super().eventFilter(watched, event)

    def send(self) -> None:
        text = self.promptEdit.toPlainText()
        if self.controller.ask(text) is not None:
            self.promptEdit.clear()

    def _on_send_clicked(self) -> None:
        if self.controller.busy:
            self.controller.cancel()
        else:
            self.send()

    def _quick(self, command: str, needs_text: bool) -> None:
        """Runs a quick action with what is typed (unless it is a command); asks for it when missing."""
        typed = self.promptEdit.toPlainText().strip()
        if typed.startswith("/"):
            typed = ""
        if needs_text and not typed:
            self.promptEdit.setPlainText(f"{command} ")
            self.promptEdit.moveCursor(QTextCursor.MoveOperation.End)
            self.promptEdit.setFocus()
            return
        if self.controller.ask(f"{command} {typed}".strip()) is not None:
            self.promptEdit.clear()

    # --- showing --------------------------------------------------------------------------------
    def _render(self, *_args) -> None:
        turns = self.controller.conversation.turns
        self._transcript.render(turns, {t.id: self.controller.thumbnails(t.id) for t in turns})

    def _on_busy(self, busy: bool) -> None:
        self.sendButton.setText(self.tr("Stop") if busy else self.tr("Send"))
        self.sendButton.setToolTip(self.tr("Cancel the running request") if busy else self.tr("Send (Enter)"))
        for button in (self.describeButton, self.findButton, self.segmentButton, self.compareButton):
            button.setEnabled(not busy)
        self.progressBar.setVisible(busy)
        self.progressBar.setMaximum(0)  # busy without a measure, until a batch job reports progress
        self.set_engine_status(self._engine_status)

    def _on_progress(self, percent: float) -> None:
        self.progressBar.setMaximum(100)
        self.progressBar.setValue(int(percent))

    def set_engine_health(self, health) -> None:
        """Shows the ready engine's device after its status, and its warning (an unused GPU) under it."""
        self._engine_health = health
        self.set_engine_status(self._engine_status)

    def _device_info(self, status: EngineStatus):  # -> DeviceInfo | None, while the engine is ready
        health = self._engine_health
        return health.device_info if health is not None and status.state is EngineState.READY else None

    def set_engine_status(self, status: EngineStatus) -> None:
        self._engine_status = status
        warning = texts.device_warning_text(self._device_info(status))
        self.deviceWarningLabel.setText(warning)
        self.deviceWarningLabel.setVisible(bool(warning))
        if self.setup_panel is not None and needs_setup(status):
            self.show_setup(status)
            text = texts.engine_status_text(status) if status.fault is EngineFault.NOT_SET_UP else self.tr("Engine: to be set up again")
            self.engineStatusLabel.setText(f'<span style="color:#777777">●</span> {text}')
            self.engineStatusLabel.setToolTip(status.detail)
            return
        if self._setup_required and status.state in (EngineState.STARTING, EngineState.READY) and not self.setup_panel.running:
            self.hide_setup()
        if status.state is EngineState.READY and self.controller.busy:
            text = texts.busy_text()
        else:
            text = texts.engine_status_text(status)
        colour = {EngineState.READY: "#2e7d32", EngineState.STARTING: "#f9a825", EngineState.ERROR: "#b00020"}.get(status.state, "#777777")
        if self._device_info(status) is not None:
            text = f"{text} · {html.escape(texts.device_text(self._device_info(status)))}"
        restart = self.tr("Restart")
        link = f' <a href="restart">{restart}</a>' if status.state is EngineState.ERROR else ""
        self.engineStatusLabel.setText(f'<span style="color:{colour}">●</span> {text}{link}')
        self.engineStatusLabel.setToolTip(text)

    # --- the set-up panel -----------------------------------------------------------------------
    def _chat_widgets(self) -> list[QWidget]:
        return [self.modelLabel, self.modelCombo, self.manageModelsButton, self.layersGroup, self.transcriptView,
                self.describeButton, self.findButton, self.segmentButton, self.compareButton, self.promptEdit,
                self.sendButton]

    def show_setup(self, status: EngineStatus | None = None) -> None:
        """Shows the set-up panel in place of the chat: because of ``status``'s fault, or (None) on request."""
        if self.setup_panel is None:
            return
        if status is None and needs_setup(self._engine_status):
            status = self._engine_status  # asked for while the engine cannot start: the same as shown for it
        self._setup_required = status is not None
        self.setup_panel.show_reason(status, required=self._setup_required)
        for widget in self._chat_widgets():
            widget.setVisible(False)
        self.progressBar.setVisible(False)
        self.setup_panel.show()

    def hide_setup(self) -> None:
        if self.setup_panel is None or not self.setup_panel.isVisible():
            return
        self._setup_required = False
        self.setup_panel.hide()
        for widget in self._chat_widgets():
            widget.setVisible(True)
        self._on_busy(self.controller.busy)

    # --- models ---------------------------------------------------------------------------------
    def _on_models(self, models: list) -> None:
        self.modelCombo.clear()
        self.modelCombo.addItem(self.tr("Auto (per task)"), AUTO_MODEL)
        self.modelCombo.setItemData(0, self.tr("Each task goes to its default model (Manage models…)"),
                                    Qt.ItemDataRole.ToolTipRole)
        for model in models:
            self.modelCombo.addItem(model.name, model.name)
            self.modelCombo.setItemData(self.modelCombo.count() - 1, ", ".join(t.value for t in model.tasks),
                                        Qt.ItemDataRole.ToolTipRole)
        self.modelCombo.setCurrentIndex(max(0, self.modelCombo.findData(self.controller.model)))

    def _on_layers_changed(self) -> None:
        for role, combo in self._combos.items():
            layer = self.controller.layer(role)
            if combo.currentLayer() is not layer:
                combo.blockSignals(True)
                combo.setLayer(layer)
                combo.blockSignals(False)
        self._show_region()

    def _show_region(self) -> None:
        controller = self.controller
        rect = controller.effective_region()
        if rect is None or rect.isEmpty():
            self.regionLabel.setText(self.tr("Current view"))
            return
        crs = controller.project.crs()
        units = QgsUnitTypes.toAbbreviatedString(crs.mapUnits())
        size = self.tr("{w} × {h} {units}").format(w=f"{rect.width():.6g}", h=f"{rect.height():.6g}", units=units)
        raster = controller.layer("image") or controller.layer("before")
        if raster is not None:
            px, py = pixel_size(raster, rect, crs, controller.project.transformContext())
            size += " · " + self.tr("{w} × {h} px").format(w=px, h=py)
        if controller.region is None:
            size = self.tr("Current view: {size}").format(size=size)
        self.regionLabel.setText(size)
