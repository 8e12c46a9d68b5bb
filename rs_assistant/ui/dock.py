"""The chat dock: transcript, prompt, quick actions, engine status, model, layers and region.

Layout lives in resources/ui/chat_dock.ui; this class wires it to an
:class:`AssistantController`, which does the work (the dock holds no state of its own).
When the engine cannot start for want of its environment, the dock shows the set-up panel it
was given (rs_assistant.ui.setup_panel) in place of the chat and of an error line.
"""

from __future__ import annotations

import html
import logging

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransformContext,
    QgsCsException,
    QgsMapLayerProxyModel,
    QgsRasterLayer,
    QgsRectangle,
)
from qgis.PyQt import uic
from qgis.PyQt.QtCore import QEvent, QLocale, QObject, Qt, pyqtSignal
from qgis.PyQt.QtGui import QIcon, QTextCursor
from qgis.PyQt.QtWidgets import QAction, QDockWidget, QWidget

from rs_assistant.core.engine_state import EngineFault, EngineState, EngineStatus
from rs_assistant.core.paths import resource
from rs_assistant.core.protocol.analyze import DEFAULT_MIN_COVERAGE
from rs_assistant.ui import texts
from rs_assistant.ui.controller import AUTO_MODEL, AssistantController
from rs_assistant.ui.ground import format_ground_size, ground_size
from rs_assistant.ui.imagery import layer_extent_in, pixel_size
from rs_assistant.ui.setup_panel import needs_setup
from rs_assistant.ui.transcript import HELD_BACK_SCHEME, TranscriptRenderer, parse_link

log = logging.getLogger(__name__)

_FORM, _ = uic.loadUiType(str(resource("ui", "chat_dock.ui")), from_imports=False, import_from="")


class ChatDock(QDockWidget, _FORM):
    restartRequested = pyqtSignal()  # the person clicked "restart" in an engine error
    settingsRequested = pyqtSignal()
    manageModelsRequested = pyqtSignal()  # the person clicked "Manage models…"

    def __init__(
        self,
        controller: AssistantController,
        region_action: QAction | None = None,
        parent=None,
        setup_panel: QWidget | None = None,
    ):
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
        self._highlighted: int | None = None  # the turn whose feature is selected on the map
        self._scroll_to: int | None = None  # the turn to show after the next render (else the last one)
        self._last_turn: int | None = None
        self.transcriptView.anchorClicked.connect(self._on_link)
        controller.answers.turnHighlighted.connect(self._highlight_turn)
        self._combos = {"image": self.imageLayerCombo, "before": self.beforeLayerCombo, "after": self.afterLayerCombo}
        for role, combo in self._combos.items():
            combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
            combo.setAllowEmptyLayer(True)
            combo.setLayer(None)
            combo.layerChanged.connect(lambda layer, role=role: self.controller.set_layers(**{role: layer}))
        self.selectRegionButton.setIcon(QIcon(str(resource("icons", "select_region.svg"))))  # the action's, when given
        if region_action is not None:
            self.selectRegionButton.setDefaultAction(region_action)
        self.settingsButton.setIcon(QgsApplication.getThemeIcon("/mActionOptions.svg"))  # QGIS's own, not a ⚙ glyph
        self.settingsButton.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        for button in (self.describeButton, self.findButton, self.segmentButton, self.compareButton):
            # a narrow dock (300 px beside the Processing toolbox) squeezes the padding, never the text
            button.setMinimumWidth(button.fontMetrics().horizontalAdvance(button.text()) + 8)
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
        self._canvas = controller.canvas
        if self._canvas is not None:
            self._canvas.extentsChanged.connect(self._show_region)
            self._canvas.destroyed.connect(self._forget_canvas)
        self.set_engine_status(self._engine_status)
        self._on_busy(controller.busy)
        self._on_layers_changed()
        self._render()  # a reloaded plugin: the project's transcript

    def shutdown(self) -> None:
        """Stops following the canvas (plugin unload): a canvas deleted later calls nothing of ours."""
        if self._canvas is not None:
            try:
                self._canvas.extentsChanged.disconnect(self._show_region)
                self._canvas.destroyed.disconnect(self._forget_canvas)
            except (TypeError, RuntimeError):
                pass
        self._canvas = None

    def _forget_canvas(self, *_args) -> None:
        self._canvas = None

    # --- sending --------------------------------------------------------------------------------
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        if (
            watched is self.promptEdit
            and event.type() == QEvent.Type.KeyPress
            and event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
            and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier
        ):
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
        last = turns[-1].id if turns else None
        if last != self._last_turn:  # a new question (or a new chat): it is what to show
            self._last_turn, self._highlighted, self._scroll_to = last, None, None
        scroll_to, self._scroll_to = self._scroll_to or self._highlighted, None
        self._transcript.render(
            turns, {t.id: self.controller.thumbnails(t.id) for t in turns}, self._highlighted, scroll_to
        )

    def _on_link(self, url) -> None:
        """A feature of an answer: zoom to it and flash it; "Show N more": add the held-back detections."""
        link = parse_link(url)
        if link is not None and link[0] == HELD_BACK_SCHEME:
            self._scroll_to = link[2]  # stay on that answer when it grows
        self.controller.answers.open_link(url)

    def _highlight_turn(self, turn_id: int) -> None:
        """Shades the turn of the feature selected on the map (0: none) and scrolls to it."""
        self._highlighted = turn_id or None
        self._render()

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
            text = (
                texts.engine_status_text(status)
                if status.fault is EngineFault.NOT_SET_UP
                else self.tr("Engine: to be set up again")
            )
            self.engineStatusLabel.setText(f'<span style="color:#777777">●</span> {text}')
            self.engineStatusLabel.setToolTip(status.detail)
            return
        if (
            self._setup_required
            and status.state in (EngineState.STARTING, EngineState.READY)
            and not self.setup_panel.running
        ):
            self.hide_setup()
        if status.state is EngineState.READY and self.controller.busy:
            text = texts.busy_text()
        else:
            text = texts.engine_status_text(status)
        if self.controller.queued:
            text = f"{text} · {texts.queued_text()}"
        colour = {EngineState.READY: "#2e7d32", EngineState.STARTING: "#f9a825", EngineState.ERROR: "#b00020"}.get(
            status.state, "#777777"
        )
        if self._device_info(status) is not None:
            text = f"{text} · {html.escape(texts.device_text(self._device_info(status)))}"
        restart = self.tr("Restart")
        link = f' <a href="restart">{restart}</a>' if status.state is EngineState.ERROR else ""
        self.engineStatusLabel.setText(f'<span style="color:{colour}">●</span> {text}{link}')
        self.engineStatusLabel.setToolTip(text)

    # --- the set-up panel -----------------------------------------------------------------------
    def _chat_widgets(self) -> list[QWidget]:
        return [
            self.modelLabel,
            self.modelCombo,
            self.manageModelsButton,
            self.layersGroup,
            self.transcriptView,
            self.describeButton,
            self.findButton,
            self.segmentButton,
            self.compareButton,
            self.promptEdit,
            self.sendButton,
        ]

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
        self.modelCombo.setItemData(
            0, self.tr("Each task goes to its default model (Manage models…)"), Qt.ItemDataRole.ToolTipRole
        )
        for model in models:
            self.modelCombo.addItem(model.name, model.name)
            self.modelCombo.setItemData(
                self.modelCombo.count() - 1, ", ".join(t.value for t in model.tasks), Qt.ItemDataRole.ToolTipRole
            )
        self.modelCombo.setCurrentIndex(max(0, self.modelCombo.findData(self.controller.model)))

    def _on_layers_changed(self) -> None:
        for role, combo in self._combos.items():
            layer = self.controller.layer(role)
            if combo.currentLayer() is not layer:
                combo.blockSignals(True)
                combo.setLayer(layer)
                combo.blockSignals(False)
        self._show_region()

    def _show_region(self, *_args) -> None:
        """The region's size on the ground ("437 × 437 m", "1.2 × 0.9 km") and in the chosen raster's
        pixels; "Current view" alone while the map shows nothing (a new project)."""
        controller = self.controller
        drawn = controller.has_region
        rect = controller.effective_region()
        if drawn and rect is None:
            self.regionLabel.setText(self.tr("Drawn region (cannot be shown in the project's CRS)"))
            return
        canvas = self._canvas
        if rect is None or rect.isEmpty() or (not drawn and canvas is not None and not canvas.layers()):
            self.regionLabel.setText(self.tr("Current view"))
            return
        crs = controller.project.crs()
        metres = ground_size(rect, crs, controller.project)
        size = format_ground_size(*metres) if metres is not None else ""
        raster = controller.layer("image") or controller.layer("before")
        if raster is not None:
            try:
                px, py = pixel_size(raster, rect, crs, controller.project.transformContext())
            except QgsCsException:
                px = py = None
            if px is not None:
                locale = QLocale()
                pixels = self.tr("{w} × {h} px").format(w=locale.toString(px), h=locale.toString(py))
                size = f"{size} · {pixels}" if size else pixels
            share = _covered_share(raster, rect, crs, controller.project.transformContext())
            if share is not None and share < DEFAULT_MIN_COVERAGE:  # the engine would refuse it (mostly_outside)
                shown = self.tr("less than 1%") if share < 0.01 else f"{share * 100:.0f}%"
                size = self.tr("{size} · the image covers {share} of it: zoom to the layer").format(
                    size=size, share=shown
                )
        if not drawn:
            size = self.tr("Current view: {size}").format(size=size) if size else self.tr("Current view")
        self.regionLabel.setText(size)


def _covered_share(
    raster: QgsRasterLayer,
    rect: QgsRectangle,
    crs: QgsCoordinateReferenceSystem,
    context: QgsCoordinateTransformContext,
) -> float | None:
    """The share of ``rect`` that the raster's extent covers (None when it cannot be told)."""
    try:
        extent = layer_extent_in(raster, crs, context)
    except QgsCsException:
        return None
    area = rect.width() * rect.height()
    if area <= 0:
        return None
    inside = extent.intersect(rect)
    return 0.0 if inside.isEmpty() else inside.width() * inside.height() / area
