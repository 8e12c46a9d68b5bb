"""The assistant without widgets: chosen layers, region, conversation, requests, result layers.

The dock drives it, and so can a script (``make demo``'s headless path)::

    controller = AssistantController(QgsProject.instance(), settings)
    controller.set_client(EngineClient(url, token))
    controller.set_layers(image=raster)
    controller.set_region(QgsRectangle(...))
    controller.ask("/find storage tanks")     # asynchronous: wait for busyChanged(False)
    controller.last_layers                    # the vector layers the answer made

``/search <description>`` is a tiled batch job over the layer (the drawn region, else the whole
layer) rather than one request: it reports ``progressChanged`` and its ranked tiles become a
layer, listed in the answer.

It never blocks the UI thread: images render in QGIS's render threads and the request runs in
a QgsTask. Mistakes and failures end up in the conversation as typed errors on the turn.

It follows the project: the chosen layers, the region and the transcript are kept in the
project (scope ``RSAssistant``), restored when a project is read and forgotten when it is cleared;
a request whose layer is removed, or whose project is cleared, stops with a message. A question
asked while the engine starts waits (``TurnState.QUEUED``) and runs when the engine is ready.
"""

from __future__ import annotations

import itertools
import logging

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCsException,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.gui import QgsMapCanvas
from qgis.PyQt.QtCore import QObject, QTimer, pyqtSignal
from qgis.PyQt.QtGui import QImage

from rs_assistant.core.client import EngineClient
from rs_assistant.core.commands import (
    Command,
    CommandError,
    CommandErrorCode,
    CommandKind,
    parse_command,
    routed_command,
)
from rs_assistant.core.conversation import Conversation, Problem, Region, Turn, TurnState
from rs_assistant.core.engine_state import EngineState, EngineStatus
from rs_assistant.core.layer_defaults import pick_before_after
from rs_assistant.core.protocol import (
    AnalyzeRequest,
    AnalyzeResponse,
    BatchRequest,
    ErrorCode,
    Intent,
    Message,
    ModelInfo,
    Options,
    ProtocolError,
    Role,
    RouteResult,
    Task,
)
from rs_assistant.core.search_ranking import features_bounds, rank_search
from rs_assistant.core.settings import Settings
from rs_assistant.ui import texts
from rs_assistant.ui.analyze_task import AnalyzeTask
from rs_assistant.ui.answer_features import AnswerFeatures
from rs_assistant.ui.background import BackgroundCall
from rs_assistant.ui.batch_task import BatchResult, BatchTask
from rs_assistant.ui.imagery import (
    PreparedImage,
    RegionImages,
    crs_id,
    layer_extent_in,
    local_file,
    pixel_size,
    rect_tuple,
)
from rs_assistant.ui.results import ResultWriteError

log = logging.getLogger(__name__)

AUTO_MODEL = "auto"  # the engine routes each task to the model its models file names for it (else default)
SEARCH_TOP_K = 5
SCOPE = "RSAssistant"  # the project entries the dock's memory lives in
ROLES = ("image", "before", "after")


def crs_from_id(text: str) -> QgsCoordinateReferenceSystem:
    """The CRS :func:`crs_id` wrote (an authority id or WKT); invalid when it cannot be read."""
    if not text:
        return QgsCoordinateReferenceSystem()
    if ":" in text and "[" not in text:
        return QgsCoordinateReferenceSystem(text)
    return QgsCoordinateReferenceSystem.fromWkt(text)


class AssistantController(QObject):
    turnChanged = pyqtSignal(int)  # a turn was added or changed
    conversationCleared = pyqtSignal()
    busyChanged = pyqtSignal(bool)
    modelsChanged = pyqtSignal(list)  # list[ModelInfo]
    regionChanged = pyqtSignal()
    layersChanged = pyqtSignal()
    resultsAdded = pyqtSignal(list)  # list[QgsVectorLayer]
    progressChanged = pyqtSignal(float)  # 0-100, batch jobs only

    def __init__(
        self, project: QgsProject, settings: Settings, canvas: QgsMapCanvas | None = None, parent: QObject | None = None
    ):
        super().__init__(parent)
        self.project = project
        self.canvas = canvas
        self.settings = settings
        self.conversation = Conversation()
        self.last_layers: list[QgsVectorLayer] = []
        self._client: EngineClient | None = None
        self._models: list[ModelInfo] = []
        self._model = AUTO_MODEL
        self._layer_ids: dict[str, str] = {role: "" for role in ROLES}
        self._region: QgsRectangle | None = None
        self._region_crs = QgsCoordinateReferenceSystem()  # the region is kept in the CRS it was drawn in
        self._thumbnails: dict[int, list[QImage]] = {}
        self._images: RegionImages | None = None
        self._task: AnalyzeTask | BatchTask | None = None
        self._turn_id: int | None = None
        self._routing: int | None = None  # the turn whose free text the engine's router is reading
        self._routes: dict[int, RouteResult] = {}  # how each free-text turn was routed (what its answer says it did)
        self.answers = AnswerFeatures(self)  # answers <-> their features (links, selection, held-back detections)
        self._request_layer_ids: tuple[str, ...] = ()  # the layers the request in flight is about
        self._engine_state = EngineState.STOPPED
        self._queued: tuple[int, tuple[str, ...], QgsRectangle | None] | None = None  # (turn, layer ids, region)
        self._next_turn_id = 1  # turn ids stay unique across projects (a late callback finds no one)
        self._restoring = False
        self._closed = False
        self._project_signals = [
            (project.cleared, self._on_project_cleared),
            (project.readProject, self._on_project_read),
            (project.writeProject, self._on_project_write),
            (project.layersWillBeRemoved, self._on_layers_removed),
            (project.crsChanged, self.regionChanged),
        ]
        for signal, slot in self._project_signals:
            signal.connect(slot)
        self._restore(defaults=bool(project.fileName()))  # the plugin reloaded: the project remembers

    def shutdown(self) -> None:
        """Stops following the project and drops any request in flight without a callback (plugin unload)."""
        if self._closed:
            return
        self._remember()
        self._abort(None)
        self._closed = True
        for signal, slot in self._project_signals:
            try:
                signal.disconnect(slot)
            except (TypeError, RuntimeError):
                pass

    # --- engine ---------------------------------------------------------------------------------
    @property
    def client(self) -> EngineClient | None:
        return self._client

    def set_client(self, client: EngineClient | None) -> None:
        self._client = client
        if client is not None:
            BackgroundCall(client.models, lambda models, err: self._on_models(client, models, err), self).start()
            if self._queued is not None:
                self._run_queued()

    def set_engine_status(self, status: EngineStatus) -> None:
        """Follows the engine's state: a question waits while it starts and fails when it cannot start."""
        self._engine_state = status.state
        if self._queued is None:
            return
        if status.state is EngineState.ERROR and not status.restarts_left:
            self._fail_queued(status.detail)
        elif status.state is EngineState.STOPPED:
            QTimer.singleShot(0, self._check_queued)  # a restart stops, then starts at once

    @property
    def queued(self) -> bool:
        """A question waits for the engine to be ready."""
        return self._queued is not None

    def _check_queued(self) -> None:
        if self._queued is not None and self._engine_state not in (EngineState.STARTING, EngineState.READY):
            self._fail_queued("")

    def _fail_queued(self, detail: str) -> None:
        turn_id = self._queued[0]
        self._queued = None
        self._fail(turn_id, Problem.ENGINE_NOT_READY, detail)
        self._set_busy(None)

    def _run_queued(self) -> None:
        turn_id, layer_ids, region = self._queued
        self._queued = None
        turn = self.conversation.update(turn_id, state=TurnState.PENDING)
        self.turnChanged.emit(turn_id)
        if turn.command.kind is CommandKind.CHAT and callable(getattr(self._client, "route", None)):
            self._route(turn)  # free text asked while the engine started: routed now that it can be
            return
        layers = [self.project.mapLayer(i) for i in layer_ids]
        problem = (Problem.LAYER_REMOVED, "") if any(layer is None for layer in layers) else None
        problem = problem or self._problem(turn.command, layers, region)
        if problem is not None:
            self._set_busy(None)
            self._fail(turn_id, *problem)
        elif turn.command.is_batch:
            self._start_batch(turn_id, layers[0])
        else:
            self._start(turn_id, layers, region)

    def _on_models(self, client: EngineClient, models: list[ModelInfo] | None, error: BaseException | None) -> None:
        if client is not self._client:
            return
        if error is not None:
            log.warning("cannot list the engine's models: %s", getattr(error, "message", error))
            return
        self._models = models or []
        names = [m.name for m in self._models]
        if names and self._model not in names and self._model != AUTO_MODEL:
            self._model = AUTO_MODEL  # the chosen model is gone (the models file changed)
        self.modelsChanged.emit(list(self._models))

    @property
    def models(self) -> list[ModelInfo]:
        return list(self._models)

    @property
    def model(self) -> str:
        return self._model

    def set_model(self, name: str) -> None:
        """A model's name, or ``"auto"`` (the default): each task's default model."""
        self._model = name or AUTO_MODEL

    def apply_settings(self, settings: Settings) -> None:
        self.settings = settings

    # --- layers and region ----------------------------------------------------------------------
    def set_layers(self, **layers: QgsRasterLayer | None) -> None:
        """``image=``, ``before=``, ``after=``: a raster layer or None."""
        for role, layer in layers.items():
            if role not in self._layer_ids:
                raise TypeError(f"unknown layer role {role!r}")
            self._layer_ids[role] = layer.id() if layer is not None else ""
        self.layersChanged.emit()
        self._remember_choices()

    def layer(self, role: str) -> QgsRasterLayer | None:
        layer = self.project.mapLayer(self._layer_ids[role]) if self._layer_ids[role] else None
        return layer if isinstance(layer, QgsRasterLayer) else None

    def swap_before_after(self) -> None:
        self._layer_ids["before"], self._layer_ids["after"] = self._layer_ids["after"], self._layer_ids["before"]
        self.layersChanged.emit()
        self._remember_choices()

    @property
    def region(self) -> QgsRectangle | None:
        """The chosen region in the project CRS; None for the current view, or when the region cannot
        be shown in the project CRS (then :attr:`has_region` is still true)."""
        if self._region is None:
            return None
        return self._transformed(self._region, self._region_crs, self.project.crs())

    @property
    def has_region(self) -> bool:
        return self._region is not None

    @property
    def region_crs(self) -> QgsCoordinateReferenceSystem:
        """The CRS the region was drawn in (it stays right when the project CRS changes)."""
        return QgsCoordinateReferenceSystem(self._region_crs)

    def set_region(self, rect: QgsRectangle, crs: QgsCoordinateReferenceSystem | None = None) -> None:
        """The region to ask about, in ``crs`` (default: the project CRS)."""
        self._region = QgsRectangle(rect)
        self._region_crs = QgsCoordinateReferenceSystem(
            crs if crs is not None and crs.isValid() else self.project.crs()
        )
        self.regionChanged.emit()
        self._remember_choices()

    def clear_region(self) -> None:
        """Back to the current view."""
        self._region = None
        self.regionChanged.emit()
        self._remember_choices()

    def _transformed(
        self, rect: QgsRectangle, source: QgsCoordinateReferenceSystem, target: QgsCoordinateReferenceSystem
    ) -> QgsRectangle | None:
        """``rect`` in ``target``; None when there is no transform (an invalid CRS, a region off the CRS's area)."""
        if source == target:
            return QgsRectangle(rect)
        if not source.isValid() or not target.isValid():
            return None
        try:
            out = QgsCoordinateTransform(source, target, self.project).transformBoundingBox(rect)
        except QgsCsException as exc:
            log.info("no transform of the region from %s to %s: %s", source.authid(), target.authid(), exc)
            return None
        return out if out.isFinite() else None

    def effective_region(self) -> QgsRectangle | None:
        """The chosen region, else the canvas extent, in the project CRS (None when neither can be had)."""
        if self._region is not None:
            return self.region
        if self.canvas is None:
            return None
        try:
            extent = self.canvas.extent()
            canvas_crs = self.canvas.mapSettings().destinationCrs()
        except RuntimeError:  # the canvas was deleted (its window closed): no view to ask about
            self.canvas = None
            return None
        if canvas_crs.isValid() and canvas_crs != self.project.crs():
            return self._transformed(extent, canvas_crs, self.project.crs())
        return extent

    # --- conversation ---------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._turn_id is not None

    def thumbnails(self, turn_id: int) -> list[QImage]:
        return list(self._thumbnails.get(turn_id, []))

    def new_chat(self) -> None:
        if self.busy:
            self.cancel()
        self.conversation.clear()
        self._thumbnails.clear()
        self.conversationCleared.emit()
        self._remember_transcript()

    def ask(self, text: str) -> Turn | None:
        """Starts answering ``text``; returns its turn (None for empty text or while busy)."""
        if self.busy:
            return None
        try:
            command = parse_command(text)
        except CommandError as exc:
            if exc.code is CommandErrorCode.EMPTY:
                return None
            turn = self.conversation.ask(text.strip(), None)
            return self._fail(turn.id, exc.code)
        if command.kind is CommandKind.HELP:
            turn = self.conversation.ask(command.text, command, state=TurnState.ANSWERED)
            self.turnChanged.emit(turn.id)
            return turn
        if command.kind is CommandKind.CHAT and callable(getattr(self._client, "route", None)):
            return self._ask_routed(command)  # free text: the engine's router picks the task
        layers = self._layers_for(command)
        region = self._batch_region(layers[0]) if command.is_batch else self.effective_region()
        turn = self.conversation.ask(
            command.text,
            command,
            region=Region(rect_tuple(region), crs_id(self.project.crs())) if region is not None else None,
            layer_names=tuple(layer.name() for layer in layers if layer is not None),
        )
        self._next_turn_id = max(self._next_turn_id, turn.id + 1)
        self.turnChanged.emit(turn.id)
        problem = self._problem(command, layers, region)
        if problem is not None:
            return self._fail(turn.id, *problem)
        if self._client is None:
            if self._engine_state is not EngineState.STARTING:
                return self._fail(turn.id, Problem.ENGINE_NOT_READY)
            # the engine is starting: the question waits for it, visibly (Stop drops it)
            self._queued = (turn.id, tuple(layer.id() for layer in layers), region)
            self.conversation.update(turn.id, state=TurnState.QUEUED)
            self._set_busy(turn.id)
            self.turnChanged.emit(turn.id)
        elif command.is_batch:
            self._start_batch(turn.id, layers[0])
        else:
            self._start(turn.id, layers, region)
        return self.conversation.get(turn.id)

    def cancel(self) -> None:
        if self._routing is not None and self._routing == self._turn_id:
            turn_id, self._routing = self._routing, None
            self._finish(turn_id, error=ProtocolError(ErrorCode.CANCELLED, "cancelled"))
        elif self._queued is not None:
            turn_id, self._queued = self._queued[0], None
            self._finish(turn_id, error=ProtocolError(ErrorCode.CANCELLED, "cancelled"))
        elif self._task is not None:
            self._task.cancel()  # its callback fails the turn as cancelled
        elif self._images is not None and self._turn_id is not None:
            self._images.cancel()
            self._finish(self._turn_id, error=ProtocolError(ErrorCode.CANCELLED, "cancelled"))

    def _abort(self, error: tuple[Problem, str] | None) -> None:
        """Stops the request in flight now, without waiting for its task: the turn fails with
        ``error`` (None: silently, the conversation is going away) and a late callback finds nothing."""
        turn_id = self._turn_id
        if turn_id is None:
            return
        task, images, self._task, self._images, self._queued = self._task, self._images, None, None, None
        self._routing = None
        if images is not None:
            images.cancel()
        if task is not None:
            try:
                task.cancel()
            except RuntimeError:  # the task manager already deleted it
                pass
        if error is not None:
            self._fail(turn_id, *error)
        self._request_layer_ids = ()
        self._set_busy(None)

    # --- free text: routed by the engine, then run as its slash command would ------------------
    def _ask_routed(self, command: Command) -> Turn:
        region = self.effective_region()
        image = self.layer("image")
        turn = self.conversation.ask(
            command.text,
            command,
            region=Region(rect_tuple(region), crs_id(self.project.crs())) if region is not None else None,
            layer_names=(image.name(),) if image is not None else (),
        )
        self._next_turn_id = max(self._next_turn_id, turn.id + 1)
        self.turnChanged.emit(turn.id)
        self._route(turn)
        return turn

    def _route(self, turn: Turn) -> None:
        client, model = self._client, self._model
        before, after = self.layer("before"), self.layer("after")
        images = 2 if before is not None and after is not None and before.id() != after.id() else 1
        history = self._typed_history(turn.id)
        self._routing = turn.id
        self._set_busy(turn.id)
        BackgroundCall(
            lambda: client.route(turn.question, history, images, model),
            lambda result, error: self._on_route(turn.id, result, error),
            self,
        ).start()

    def _typed_history(self, before: int, turns: int = 4) -> tuple[Message, ...]:
        """The last answered turns as typed (slash commands included): the router's context."""
        answered = [
            t for t in self.conversation.turns if t.id < before and t.state is TurnState.ANSWERED and not t.is_help
        ][-turns:]
        messages: list[Message] = []
        for turn in answered:
            messages += [Message(Role.USER, turn.question), Message(Role.ASSISTANT, turn.answer)]
        return tuple(messages)

    def _on_route(self, turn_id: int, result: RouteResult | None, error: BaseException | None) -> None:
        if self._routing != turn_id or self._turn_id != turn_id or self._closed:
            return
        self._routing = None
        turn = self.conversation.get(turn_id)
        if error is not None or result is None:  # an engine without /v1/route, or a failure: ask it as before
            log.warning(
                "could not route %r (%s); asking it as a question", turn.question, getattr(error, "message", error)
            )
            result = RouteResult(Intent.CHAT, turn.question, "", 0.0)
        log.info(
            "routed %r -> %s %r (confidence %.2f)", turn.question, result.intent.value, result.prompt, result.confidence
        )
        self._routes[turn_id] = result
        command = routed_command(result, turn.question)
        if result.known_classes:  # the model has a fixed class list without this object: say so, run nothing
            self.conversation.update(turn_id, command=command)
            self._set_busy(None)
            text = "\n".join([result.assumed, self.tr("Type /find {what} to try anyway.").format(what=result.prompt)])
            self._show_answer(turn_id, [], text)
            self._remember_transcript()
            return
        layers = self._layers_for(command)
        try:
            region = self._batch_region(layers[0]) if command.is_batch else self.effective_region()
        except QgsCsException as exc:
            region = None
            log.warning("cannot transform the layer's extent: %s", exc)
        self.conversation.update(
            turn_id,
            command=command,
            region=Region(rect_tuple(region), crs_id(self.project.crs())) if region is not None else None,
            layer_names=tuple(layer.name() for layer in layers if layer is not None),
        )
        self.turnChanged.emit(turn_id)
        problem = self._problem(command, layers, region)
        if problem is not None:
            self._set_busy(None)
            self._fail(turn_id, *problem)
        elif command.is_batch:
            self._start_batch(turn_id, layers[0])
        else:
            self._start(turn_id, layers, region)

    def _said(self, turn_id: int, text: str, drawn: int) -> str:
        """A routed turn's answer says what was done ("Found 12 buildings") and what the router assumed;
        a slash command's answer is the model's text."""
        route = self._routes.get(turn_id)
        if route is None:
            return text
        turn = self.conversation.get(turn_id)
        what = _singular(route.prompt) if drawn == 1 else route.prompt
        # Nothing drawn: the model's own words may say why ("This model does not know helicopters. It can find...").
        why = not drawn and text.strip() not in ("", "nothing found")
        if route.intent in (Intent.COUNT, Intent.GROUND, Intent.SEGMENT) and route.prompt.startswith("the "):
            did, keep = self.tr("Looked for {what}: {count} found").format(what=route.prompt, count=drawn), why
        elif route.intent is Intent.COUNT:
            did, keep = self.tr("Counted {count} {what}").format(count=drawn, what=what), why
        elif route.intent is Intent.GROUND:
            did = (
                self.tr("Found {count} {what}").format(count=drawn, what=what)
                if drawn
                else self.tr("Found no {what}").format(what=route.prompt)
            )
            keep = why
        elif route.intent is Intent.SEGMENT:
            did = (
                self.tr("Outlined {what}: {count} polygon(s)").format(count=drawn, what=route.prompt)
                if drawn
                else self.tr("Found no {what} to outline").format(what=route.prompt)
            )
            keep = why
        elif route.intent is Intent.CAPTION:
            did, keep = self.tr("Described the region"), True
        elif route.intent is Intent.CHANGE and len(turn.layer_names) == 2:
            did, keep = (
                self.tr("Compared {before} with {after}").format(before=turn.layer_names[0], after=turn.layer_names[1]),
                True,
            )
        elif route.intent is Intent.RETRIEVE:
            did, keep = self.tr("Searched the layer for {what}").format(what=route.prompt), True
        else:
            did, keep = "", True
        return "\n".join(line for line in (did, route.assumed, text if keep else "") if line)

    # --- the request ----------------------------------------------------------------------------
    def _layers_for(self, command: Command) -> list[QgsRasterLayer | None]:
        if command.needs_two_images:
            return [self.layer("before"), self.layer("after")]
        return [self.layer("image")]

    def _problem(
        self, command: Command, layers: list[QgsRasterLayer | None], region: QgsRectangle | None
    ) -> tuple[Problem, str] | None:
        if command.needs_two_images:
            if None in layers:
                return Problem.NO_BEFORE_AFTER, ""
            if layers[0].id() == layers[1].id():
                return Problem.SAME_BEFORE_AFTER, layers[0].name()
        elif layers[0] is None:
            return Problem.NO_IMAGE_LAYER, ""
        elif command.is_batch and local_file(layers[0]) is None:
            return Problem.NOT_A_LOCAL_FILE, layers[0].name()
        if region is None and self._region is not None:  # drawn in a CRS the project's cannot be had from
            return (
                Problem.REGION_NOT_TRANSFORMABLE,
                f"{self._region_crs.authid() or '?'} → {self.project.crs().authid() or '?'}",
            )
        if region is None or region.isEmpty():
            return Problem.REGION_OUTSIDE_LAYER, ""
        context = self.project.transformContext()
        for layer in layers:
            try:
                extent = layer_extent_in(layer, self.project.crs(), context)
                pixels = pixel_size(layer, region, self.project.crs(), context)
            except QgsCsException as exc:
                return Problem.REGION_NOT_TRANSFORMABLE, f"{layer.name()}: {exc}"
            if not extent.intersects(region):
                return Problem.REGION_OUTSIDE_LAYER, layer.name()
            if min(pixels) < 1:
                return Problem.REGION_NO_PIXELS, f"{layer.name()}: {pixels[0]} × {pixels[1]} px"
        return None

    def _start(self, turn_id: int, layers: list[QgsRasterLayer], region: QgsRectangle) -> None:
        self._set_busy(turn_id)
        self._request_layer_ids = tuple(layer.id() for layer in layers)
        images = RegionImages(
            layers, region, self.project.crs(), self.project.transformContext(), self.settings.max_side, self
        )
        images.ready.connect(lambda prepared: self._on_images(turn_id, prepared))
        images.failed.connect(lambda message: self._finish(turn_id, error=(Problem.RENDER_FAILED, message)))
        self._images = images
        images.start()

    def _batch_region(self, layer: QgsRasterLayer | None) -> QgsRectangle | None:
        """A batch job covers the drawn region, else the whole layer (in the project CRS)."""
        if self._region is not None:
            return QgsRectangle(self._region)
        if layer is None:
            return None
        return layer_extent_in(layer, self.project.crs(), self.project.transformContext())

    def _start_batch(self, turn_id: int, layer: QgsRasterLayer) -> None:
        self._set_busy(turn_id)
        self._request_layer_ids = (layer.id(),)
        turn = self.conversation.get(turn_id)
        project_crs = crs_id(self.project.crs())
        try:
            request = BatchRequest(
                task=Task.RETRIEVE,
                sources=(local_file(layer),),
                output_crs=project_crs,
                model=self._model,
                prompt=turn.command.argument,
                extent=rect_tuple(self._region) if self._region is not None else None,
                extent_crs=project_crs if self._region is not None else None,
                options=Options(top_k=SEARCH_TOP_K),
            )
        except ProtocolError as exc:
            self._finish(turn_id, error=exc)
            return
        searched = self.region if self._region is not None else self._batch_region(layer)
        task = BatchTask(
            self.tr("RS Assistant: {question}").format(question=turn.question),
            self._client,
            request,
            lambda result, error: self._finish(turn_id, result, error),
            area=rect_tuple(searched) if searched is not None and not searched.isEmpty() else None,
        )
        task.progressChanged.connect(self.progressChanged)
        self._task = task
        QgsApplication.taskManager().addTask(task)

    def _on_images(self, turn_id: int, prepared: list[PreparedImage]) -> None:
        if self._turn_id != turn_id:
            return
        self._images = None
        self._thumbnails[turn_id] = [p.thumbnail for p in prepared]
        turn = self.conversation.update(turn_id, images=tuple(p.ref for p in prepared))
        self.turnChanged.emit(turn_id)
        try:
            request = AnalyzeRequest(
                task=turn.command.task,
                images=turn.images,
                output_crs=crs_id(self.project.crs()),
                model=self._model,
                prompt=turn.command.argument,
                history=self.conversation.history(before=turn_id),
                options=Options(max_side=self.settings.max_side),
            )
        except ProtocolError as exc:
            self._finish(turn_id, error=exc)
            return
        task = AnalyzeTask(
            self.tr("RS Assistant: {question}").format(question=turn.question),
            self._client,
            request,
            lambda response, error: self._finish(turn_id, response, error),
        )
        self._task = task
        QgsApplication.taskManager().addTask(task)

    def _finish(
        self,
        turn_id: int,
        response: AnalyzeResponse | BatchResult | None = None,
        error: ProtocolError | tuple[Problem, str] | None = None,
    ) -> None:
        if self._turn_id != turn_id or self._closed:
            return
        self._task = None
        self._images = None
        self._request_layer_ids = ()
        if response is not None:
            try:
                if isinstance(response, BatchResult):
                    self._answer_search(turn_id, response)
                else:
                    self._answer(turn_id, response)
            except ResultWriteError as exc:
                error = (Problem.LAYER_WRITE_FAILED, str(exc))
        if isinstance(error, ProtocolError):
            log.warning("request failed: %s %s", error.code.value, error.message)
            self._fail(turn_id, error.code, error.message)
        elif error is not None:
            self._fail(turn_id, *error)
        self._set_busy(None)
        self._remember_transcript()

    def _answer(self, turn_id: int, response: AnalyzeResponse) -> None:
        layers, details = self.answers.write(turn_id, response)
        text = self._said(turn_id, response.text, details.get("feature_count", len(response.feature_list)))
        if response.land_cover:  # a caption's window, what covers it (the model's class map)
            text = f"{text} {texts.land_cover_text(response.land_cover)}"
        if response.model_pixel_size_m is not None:  # a finer window than the model was trained on, resampled
            text = f"{text} {texts.resampled_text(response.pixel_size_m, response.model_pixel_size_m)}"
        self._show_answer(turn_id, layers, text, model=response.model, request_id=response.request_id, **details)

    def _answer_search(self, turn_id: int, result: BatchResult) -> None:
        """Only the relevant tiles, each with its rank, similarity (%) and place (core.search_ranking)."""
        turn = self.conversation.get(turn_id)
        area = result.area or features_bounds(result.ranked)
        ranking = rank_search(result.ranked, result.scores, area, top_k=SEARCH_TOP_K, searched=result.tiles)
        text = texts.search_answer(turn.command.argument, ranking, whole_layer=result.whole_layer)
        provenance = self.answers.provenance(turn, result.model or self._model, text)
        layers, details = self.answers.write_features(turn, ranking.features(), provenance)
        text = self._said(turn_id, text, details.get("feature_count", len(result.ranked)))
        self._show_answer(turn_id, layers, text, model=result.model or self._model, request_id=result.job_id, **details)

    def _show_answer(self, turn_id: int, layers: list[QgsVectorLayer], text: str, **details) -> None:
        self.last_layers = layers
        self.conversation.answer(turn_id, text, result_layers=tuple(l.name() for l in layers), **details)
        self.turnChanged.emit(turn_id)
        if layers:
            self.resultsAdded.emit(layers)
            if self.canvas is not None:
                for layer in layers:
                    self.canvas.flashFeatureIds(layer, [f.id() for f in layer.getFeatures()])

    def _fail(self, turn_id: int, error, detail: str = "") -> Turn:
        turn = self.conversation.fail(turn_id, error, detail)
        self.turnChanged.emit(turn_id)
        if not self.busy:
            self._remember_transcript()
        return turn

    def _set_busy(self, turn_id: int | None) -> None:
        was = self.busy
        self._turn_id = turn_id
        if self.busy != was:
            self.busyChanged.emit(self.busy)

    # --- the project ----------------------------------------------------------------------------
    def _on_layers_removed(self, layer_ids: list[str]) -> None:
        """Layers are leaving the project: a request about one of them stops with a message, and the
        pickers forget them."""
        removed = set(layer_ids)
        if self._turn_id is not None:
            ids = self._request_layer_ids or (self._queued[1] if self._queued is not None else ())
            gone = [i for i in ids if i in removed]
            if gone:
                names = [layer.name() for layer in (self.project.mapLayer(i) for i in gone) if layer is not None]
                self._abort((Problem.LAYER_REMOVED, ", ".join(names)))
        changed = False
        for role, layer_id in self._layer_ids.items():
            if layer_id and layer_id in removed:
                self._layer_ids[role] = ""
                changed = True
        if changed:
            self.layersChanged.emit()

    def _on_project_cleared(self) -> None:
        """Project > New (and the start of reading another project): the conversation, the layers and
        the region belonged to the project that went away; a request in flight stops quietly."""
        self._abort(None)
        self._layer_ids = {role: "" for role in ROLES}
        self._region = None
        self.conversation = Conversation(max_history_turns=self.conversation.max_history_turns)
        self._continue_ids(self.conversation)
        self._thumbnails.clear()
        self.last_layers = []
        self.conversationCleared.emit()
        self.layersChanged.emit()
        self.regionChanged.emit()

    def _on_project_read(self, _document=None) -> None:
        self._restore(defaults=True)

    def _on_project_write(self, _document=None) -> None:
        self._remember()

    def _restore(self, defaults: bool) -> None:
        """Takes the layers, region and transcript the project keeps; with none kept and ``defaults``,
        picks the top raster as the image and two rasters in time order as before/after."""
        project = self.project
        self._restoring = True
        try:
            stored = {role: project.readEntry(SCOPE, role, "")[0] for role in ROLES}
            if any(stored.values()):
                self._layer_ids = {
                    role: i if isinstance(project.mapLayer(i), QgsRasterLayer) else "" for role, i in stored.items()
                }
            elif defaults:
                self._layer_ids = self._default_layers()
            region_text, has_region = project.readEntry(SCOPE, "region", "")
            self._region = None
            if has_region and region_text:
                try:
                    xmin, ymin, xmax, ymax = (float(v) for v in region_text.split(","))
                    self._region = QgsRectangle(xmin, ymin, xmax, ymax)
                    crs = crs_from_id(project.readEntry(SCOPE, "region_crs", "")[0])
                    self._region_crs = crs if crs.isValid() else project.crs()
                except ValueError:
                    log.warning(
                        "the project's saved region %r is not xmin,ymin,xmax,ymax; the view is used", region_text
                    )
            transcript, has_transcript = project.readEntry(SCOPE, "transcript", "")
            if has_transcript and transcript:
                try:
                    conversation = Conversation.from_json(transcript, self.conversation.max_history_turns)
                except ValueError as exc:
                    log.warning("the project's transcript cannot be read (%s); the chat starts empty", exc)
                else:
                    self._continue_ids(conversation)
                    self.conversation = conversation
                    self._thumbnails.clear()
        finally:
            self._restoring = False
        self.conversationCleared.emit()
        self.layersChanged.emit()
        self.regionChanged.emit()

    def _continue_ids(self, conversation: Conversation) -> None:
        """New turns get ids no turn of this session had (a late callback of an old request matches none)."""
        last = max((t.id for t in conversation.turns), default=0)
        conversation._ids = itertools.count(max(last + 1, self._next_turn_id))

    def _default_layers(self) -> dict[str, str]:
        rasters = [
            node.layer()
            for node in self.project.layerTreeRoot().findLayers()
            if isinstance(node.layer(), QgsRasterLayer)
        ]
        chosen = {role: "" for role in ROLES}
        if rasters:
            chosen["image"] = rasters[0].id()
        pair = pick_before_after([layer.name() for layer in rasters])
        if pair is not None:
            chosen["before"], chosen["after"] = rasters[pair[0]].id(), rasters[pair[1]].id()
        return chosen

    def _remember_choices(self) -> None:
        if self._restoring or self._closed:
            return
        project = self.project
        for role, layer_id in self._layer_ids.items():
            project.writeEntry(SCOPE, role, layer_id)
        if self._region is None:
            project.removeEntry(SCOPE, "region")
            project.removeEntry(SCOPE, "region_crs")
        else:
            project.writeEntry(SCOPE, "region", ",".join(repr(v) for v in rect_tuple(self._region)))
            project.writeEntry(SCOPE, "region_crs", crs_id(self._region_crs))

    def _remember_transcript(self) -> None:
        if self._restoring or self._closed:
            return
        if self.conversation.turns:
            self.project.writeEntry(SCOPE, "transcript", self.conversation.to_json())
        else:
            self.project.removeEntry(SCOPE, "transcript")

    def _remember(self) -> None:
        self._remember_choices()
        self._remember_transcript()


def _singular(noun: str) -> str:
    """ "building" for "buildings" in "Found 1 building" (the router's prompts are English)."""
    if noun.endswith("ies") and len(noun) > 4:
        return noun[:-3] + "y"
    if noun.endswith("s") and not noun.endswith("ss") and len(noun) > 3:
        return noun[:-1]
    return noun
