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
"""

from __future__ import annotations

import logging

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.gui import QgsMapCanvas
from qgis.PyQt.QtCore import QObject, pyqtSignal
from qgis.PyQt.QtGui import QImage

from rs_assistant.core.client import EngineClient
from rs_assistant.core.commands import Command, CommandError, CommandErrorCode, CommandKind, parse_command
from rs_assistant.core.conversation import Conversation, Problem, Region, Turn, TurnState
from rs_assistant.core.protocol import (
    AnalyzeRequest,
    AnalyzeResponse,
    BatchRequest,
    ErrorCode,
    ModelInfo,
    Options,
    ProtocolError,
    Task,
)
from rs_assistant.core.settings import Settings
from rs_assistant.ui import texts
from rs_assistant.ui.analyze_task import AnalyzeTask
from rs_assistant.ui.background import BackgroundCall
from rs_assistant.ui.batch_task import BatchResult, BatchTask
from rs_assistant.ui.imagery import PreparedImage, RegionImages, crs_id, layer_extent_in, local_file, rect_tuple
from rs_assistant.ui.results import ResultLayerWriter, ResultWriteError

log = logging.getLogger(__name__)

AUTO_MODEL = "auto"  # the engine routes each task to the model its models file names for it (else default)
SEARCH_TOP_K = 5


class AssistantController(QObject):
    turnChanged = pyqtSignal(int)  # a turn was added or changed
    conversationCleared = pyqtSignal()
    busyChanged = pyqtSignal(bool)
    modelsChanged = pyqtSignal(list)  # list[ModelInfo]
    regionChanged = pyqtSignal()
    layersChanged = pyqtSignal()
    resultsAdded = pyqtSignal(list)  # list[QgsVectorLayer]
    progressChanged = pyqtSignal(float)  # 0-100, batch jobs only

    def __init__(self, project: QgsProject, settings: Settings, canvas: QgsMapCanvas | None = None,
                 parent: QObject | None = None):
        super().__init__(parent)
        self.project = project
        self.canvas = canvas
        self.settings = settings
        self.conversation = Conversation()
        self.last_layers: list[QgsVectorLayer] = []
        self._client: EngineClient | None = None
        self._models: list[ModelInfo] = []
        self._model = AUTO_MODEL
        self._layer_ids: dict[str, str] = {"image": "", "before": "", "after": ""}
        self._region: QgsRectangle | None = None
        self._thumbnails: dict[int, list[QImage]] = {}
        self._images: RegionImages | None = None
        self._task: AnalyzeTask | BatchTask | None = None
        self._turn_id: int | None = None

    # --- engine ---------------------------------------------------------------------------------
    @property
    def client(self) -> EngineClient | None:
        return self._client

    def set_client(self, client: EngineClient | None) -> None:
        self._client = client
        if client is not None:
            BackgroundCall(client.models, lambda models, err: self._on_models(client, models, err), self).start()

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

    def layer(self, role: str) -> QgsRasterLayer | None:
        layer = self.project.mapLayer(self._layer_ids[role]) if self._layer_ids[role] else None
        return layer if isinstance(layer, QgsRasterLayer) else None

    def swap_before_after(self) -> None:
        self._layer_ids["before"], self._layer_ids["after"] = self._layer_ids["after"], self._layer_ids["before"]
        self.layersChanged.emit()

    @property
    def region(self) -> QgsRectangle | None:
        return QgsRectangle(self._region) if self._region is not None else None

    def set_region(self, rect: QgsRectangle, crs: QgsCoordinateReferenceSystem | None = None) -> None:
        """The region to ask about, in ``crs`` (default: the project CRS)."""
        if crs is not None and crs != self.project.crs():
            rect = QgsCoordinateTransform(crs, self.project.crs(), self.project).transformBoundingBox(rect)
        self._region = QgsRectangle(rect)
        self.regionChanged.emit()

    def clear_region(self) -> None:
        """Back to the current view."""
        self._region = None
        self.regionChanged.emit()

    def effective_region(self) -> QgsRectangle | None:
        """The chosen region, else the canvas extent, in the project CRS."""
        if self._region is not None:
            return QgsRectangle(self._region)
        if self.canvas is None:
            return None
        extent = self.canvas.extent()
        canvas_crs = self.canvas.mapSettings().destinationCrs()
        if canvas_crs.isValid() and canvas_crs != self.project.crs():
            extent = QgsCoordinateTransform(canvas_crs, self.project.crs(), self.project).transformBoundingBox(extent)
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
        layers = self._layers_for(command)
        region = self._batch_region(layers[0]) if command.is_batch else self.effective_region()
        turn = self.conversation.ask(
            command.text, command,
            region=Region(rect_tuple(region), crs_id(self.project.crs())) if region is not None else None,
            layer_names=tuple(layer.name() for layer in layers if layer is not None),
        )
        self.turnChanged.emit(turn.id)
        problem = self._problem(command, layers, region)
        if problem is not None:
            return self._fail(turn.id, *problem)
        if command.is_batch:
            self._start_batch(turn.id, layers[0])
        else:
            self._start(turn.id, layers, region)
        return self.conversation.get(turn.id)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()  # its callback fails the turn as cancelled
        elif self._images is not None and self._turn_id is not None:
            self._images.cancel()
            self._finish(self._turn_id, error=ProtocolError(ErrorCode.CANCELLED, "cancelled"))

    # --- the request ----------------------------------------------------------------------------
    def _layers_for(self, command: Command) -> list[QgsRasterLayer | None]:
        if command.needs_two_images:
            return [self.layer("before"), self.layer("after")]
        return [self.layer("image")]

    def _problem(self, command: Command, layers: list[QgsRasterLayer | None],
                 region: QgsRectangle | None) -> tuple[Problem, str] | None:
        if command.needs_two_images:
            if None in layers:
                return Problem.NO_BEFORE_AFTER, ""
            if layers[0].id() == layers[1].id():
                return Problem.SAME_BEFORE_AFTER, layers[0].name()
        elif layers[0] is None:
            return Problem.NO_IMAGE_LAYER, ""
        elif command.is_batch and local_file(layers[0]) is None:
            return Problem.NOT_A_LOCAL_FILE, layers[0].name()
        if region is None or region.isEmpty():
            return Problem.REGION_OUTSIDE_LAYER, ""
        for layer in layers:
            if not layer_extent_in(layer, self.project.crs(), self.project.transformContext()).intersects(region):
                return Problem.REGION_OUTSIDE_LAYER, layer.name()
        if self._client is None:
            return Problem.ENGINE_NOT_READY, ""
        return None

    def _start(self, turn_id: int, layers: list[QgsRasterLayer], region: QgsRectangle) -> None:
        self._set_busy(turn_id)
        images = RegionImages(layers, region, self.project.crs(), self.project.transformContext(), self.settings.max_side, self)
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
        task = BatchTask(self.tr("RS Assistant: {question}").format(question=turn.question), self._client, request,
                         lambda result, error: self._finish(turn_id, result, error))
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
        task = AnalyzeTask(self.tr("RS Assistant: {question}").format(question=turn.question), self._client, request,
                           lambda response, error: self._finish(turn_id, response, error))
        self._task = task
        QgsApplication.taskManager().addTask(task)

    def _finish(self, turn_id: int, response: AnalyzeResponse | BatchResult | None = None,
                error: ProtocolError | tuple[Problem, str] | None = None) -> None:
        if self._turn_id != turn_id:
            return
        self._task = None
        self._images = None
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

    def _answer(self, turn_id: int, response: AnalyzeResponse) -> None:
        turn = self.conversation.get(turn_id)
        layers = []
        if response.feature_list:
            writer = ResultLayerWriter(self.project, self.settings.output_folder)
            layers = writer.write(response, turn.command.title, turn.question)
        self._show_answer(turn_id, layers, response.text, model=response.model, request_id=response.request_id,
                          feature_count=len(response.feature_list))

    def _answer_search(self, turn_id: int, result: BatchResult) -> None:
        turn = self.conversation.get(turn_id)
        ranked = []
        for feature in result.ranked:
            props = feature.get("properties") or {}
            ranked.append((int(props.get("rank", len(ranked) + 1)), props.get("tile"), float(props.get("score", 0.0))))
        text = texts.search_answer(turn.command.argument, ranked)
        layers = []
        if result.ranked:
            writer = ResultLayerWriter(self.project, self.settings.output_folder)
            layers = writer.write_features(result.ranked, turn.command.title, turn.question, text, result.model or self._model, result.job_id)
        self._show_answer(turn_id, layers, text, model=result.model or self._model, request_id=result.job_id,
                          feature_count=len(result.ranked))

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
        return turn

    def _set_busy(self, turn_id: int | None) -> None:
        was = self.busy
        self._turn_id = turn_id
        if self.busy != was:
            self.busyChanged.emit(self.busy)
