"""What the "Large areas" algorithms share: parameters, the engine's batch job, resume, the output.

Each algorithm (``alg_describe_tiles``, ``alg_find_objects``, ``alg_segment_layer``,
``alg_change_over_area``, ``alg_search_layer``) names its task and its extra parameters; this
base turns the parameters into a :class:`BatchRequest`, runs it on the engine
(``engine_connection.ENGINE``) and writes the features to the output sink as the engine streams
them: each ``tile`` event's final features, then the ``merged`` seam objects (or, for a search,
the ``ranked`` tiles).

- Output CRS: the (first) input raster's CRS. The extent may be given in any CRS; the engine
  reads it in that CRS (``extent_crs``).
- Fields: ``label``, ``score``, ``kind`` (box, mask, change, tile), ``tile`` (the grid tile the
  feature came from), ``text`` (the tile's caption) and ``rank`` (search: 1 = best match).
- Progress: tiles done (skipped tiles of a resumed run count as done). Cancel closes the
  connection; the engine stops the job.
- Model: a name the engine knows; ``auto`` (the default) lets the engine pick the model its
  models file names for the task. The Processing dialog offers the models file's names in an
  editable list (:mod:`rs_assistant.processing.model_widget`); scripts pass any name.
- Resume: a journal beside a file output (see :mod:`rs_assistant.core.journal`) records
  the finished tiles. When a run stops early (cancel, an engine error, an engine that died) the
  features written so far stay in the output, valid, and running the algorithm again with the
  same parameters (RESUME on, the default) keeps them and does only the remaining tiles. A
  temporary (memory) output cannot be resumed: RESUME is an advanced parameter that says so.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from osgeo import ogr
from qgis.core import (
    NULL,
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsMapLayer,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QCoreApplication, QVariant

from rs_assistant.core.journal import Journal
from rs_assistant.core.models_file import AUTO_MODEL
from rs_assistant.core.protocol import BatchEvent, BatchRequest, ErrorCode, FeatureKind, Options, ProtocolError, Task
from rs_assistant.processing.engine_connection import ENGINE, EngineUnavailable
from rs_assistant.ui import texts
from rs_assistant.ui.imagery import crs_id, local_file

log = logging.getLogger(__name__)

GROUP = "largeareas"
CANCEL_POLL_S = 0.1
FIELD_TYPES = (
    ("label", QVariant.String),
    ("score", QVariant.Double),
    ("kind", QVariant.String),
    ("tile", QVariant.Int),
    ("text", QVariant.String),
    ("rank", QVariant.Int),
)


def tr(text: str) -> str:
    return QCoreApplication.translate("BatchAlgorithm", text)


def output_fields() -> QgsFields:
    fields = QgsFields()
    for name, kind in FIELD_TYPES:
        fields.append(QgsField(name, kind))
    return fields


def error_message(error: ProtocolError) -> str:
    """A translated sentence for an engine error, with the engine's own words after it."""
    own = {
        ErrorCode.EXTENT_OUTSIDE: tr("The extent lies outside the raster."),
        ErrorCode.REGION_TOO_LARGE: tr("The tile size is larger than the engine allows."),
        ErrorCode.BAD_IMAGE_COUNT: tr("The job needs a different number of rasters."),
        ErrorCode.BAD_CRS: tr("The CRS of the extent or of the raster is not known to the engine."),
        ErrorCode.BAD_REQUEST: tr("The engine refused the parameters."),
        ErrorCode.INTERNAL: tr("The engine failed while running the job."),
    }
    text = own.get(error.code) or texts.error_text(error.code)
    return f"{text} ({error.message})" if error.message else text


def _geometry(geojson: Any) -> QgsGeometry | None:
    """A GeoJSON polygon as a multipolygon, or None for anything else (points, empty, broken)."""
    if not isinstance(geojson, dict):
        return None
    ogr_geometry = ogr.CreateGeometryFromJson(json.dumps(geojson))
    if ogr_geometry is None or ogr_geometry.IsEmpty():
        return None
    geometry = QgsGeometry()
    geometry.fromWkb(bytes(ogr_geometry.ExportToIsoWkb()))
    if geometry.isNull() or QgsWkbTypes.geometryType(geometry.wkbType()) != QgsWkbTypes.GeometryType.PolygonGeometry:
        return None
    geometry.convertToMultiType()
    return geometry


def _value(value: Any, kind=str) -> Any:
    if value is None:
        return NULL
    try:
        return kind(value)
    except (TypeError, ValueError):
        return NULL


class OutputWriter:
    """Owns the output sink; ``close()`` releases it, which finishes the file (before any error is raised)."""

    def __init__(self, sink: QgsFeatureSink):
        self._sink = sink
        self.fields = output_fields()
        self.written = 0
        self.skipped = 0

    def add_features(self, features: list[QgsFeature]) -> None:
        if features and not self._sink.addFeatures(features, QgsFeatureSink.Flag.FastInsert):
            raise QgsProcessingException(
                tr("Could not write to the output: {error}").format(error=self._sink.lastError())
            )
        self.written += len(features)

    def add_geojson(self, features: list[dict], tile_text: str = "") -> int:
        """Writes the engine's features; returns how many were written (points and broken ones are skipped)."""
        out = []
        for geojson in features or ():
            geometry = _geometry(geojson.get("geometry")) if isinstance(geojson, dict) else None
            if geometry is None:
                self.skipped += 1
                continue
            props = geojson.get("properties") or {}
            kind = str(props.get("kind", ""))
            text = props.get("text")
            if text is None and kind == FeatureKind.TILE.value:
                text = tile_text
            feature = QgsFeature(self.fields)
            feature.setGeometry(geometry)
            feature.setAttributes(
                [
                    _value(props.get("label")),
                    _value(props.get("score"), float),
                    kind,
                    _value(props.get("tile"), int),
                    _value(text),
                    _value(props.get("rank"), int),
                ]
            )
            out.append(feature)
        self.add_features(out)
        self.flush()
        return len(out)

    def flush(self) -> None:
        flush = getattr(self._sink, "flushBuffer", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        if self._sink is not None:
            self.flush()
            self._sink = None  # the last reference: the writer closes and commits the file


class _CancelWatch:
    """Polls the feedback in a thread and cancels the engine call when the person cancels."""

    def __init__(self, feedback: QgsProcessingFeedback, client):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(feedback, client), name="rs-batch-cancel", daemon=True)

    def _run(self, feedback: QgsProcessingFeedback, client) -> None:
        while not self._stop.wait(CANCEL_POLL_S):
            if feedback.isCanceled():
                client.cancel()
                return

    def __enter__(self) -> _CancelWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(1.0)


class BatchAlgorithm(QgsProcessingAlgorithm):
    """Base of the tiled whole-layer algorithms. Subclasses set the class attributes and texts."""

    TASK: Task = Task.CAPTION
    RASTERS: tuple[str, ...] = ("INPUT",)
    PROMPT_REQUIRED = False  # subclasses with a prompt say whether it may be empty
    HAS_PROMPT = False
    HAS_THRESHOLD = False
    HAS_TOP_K = False

    INPUT = "INPUT"
    EXTENT = "EXTENT"
    PROMPT = "PROMPT"
    MODEL = "MODEL"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    SCORE_THRESHOLD = "SCORE_THRESHOLD"
    TOP_K = "TOP_K"
    RESUME = "RESUME"
    OUTPUT = "OUTPUT"

    # --- what subclasses describe --------------------------------------------------------------
    def raster_description(self, name: str) -> str:
        return tr("Raster layer (a local file)")

    def prompt_description(self) -> str:
        return tr("What to look for")

    def output_description(self) -> str:
        return tr("Output")

    def group(self) -> str:
        return tr("Large areas")

    def groupId(self) -> str:  # noqa: N802 (QGIS's name)
        return GROUP

    def createInstance(self) -> BatchAlgorithm:  # noqa: N802
        return type(self)()

    # --- parameters ----------------------------------------------------------------------------
    def initAlgorithm(self, config: dict | None = None) -> None:  # noqa: N802
        for name in self.RASTERS:
            self.addParameter(QgsProcessingParameterRasterLayer(name, self.raster_description(name)))
        self.addParameter(
            QgsProcessingParameterExtent(self.EXTENT, tr("Extent (empty: the whole raster)"), optional=True)
        )
        if self.HAS_PROMPT:
            self.addParameter(
                QgsProcessingParameterString(self.PROMPT, self.prompt_description(), optional=not self.PROMPT_REQUIRED)
            )
        model = QgsProcessingParameterString(self.MODEL, tr("Model"), defaultValue=AUTO_MODEL)
        model.setHelp(
            tr(
                "The engine's model that runs the job: “auto” lets the engine choose the model set for "
                "this task (Manage models…), “default” is the built-in model, or a model's name."
            )
        )
        model.setMetadata({"widget_wrapper": {"class": "rs_assistant.processing.model_widget.ModelWidgetWrapper"}})
        self.addParameter(model)
        self.addParameter(
            QgsProcessingParameterNumber(
                self.TILE_SIZE, tr("Tile size (pixels)"), QgsProcessingParameterNumber.Type.Integer, 512, minValue=1
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.OVERLAP,
                tr("Overlap between tiles (pixels)"),
                QgsProcessingParameterNumber.Type.Integer,
                64,
                minValue=0,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.BATCH_SIZE,
                tr("Tiles per model batch (0: the model's own)"),
                QgsProcessingParameterNumber.Type.Integer,
                0,
                minValue=0,
                maxValue=BatchRequest.MAX_BATCH_SIZE,
            )
        )
        if self.HAS_THRESHOLD:
            self.addParameter(
                QgsProcessingParameterNumber(
                    self.SCORE_THRESHOLD,
                    tr("Score threshold"),
                    QgsProcessingParameterNumber.Type.Double,
                    0.3,
                    minValue=0.0,
                    maxValue=1.0,
                )
            )
        if self.HAS_TOP_K:
            self.addParameter(
                QgsProcessingParameterNumber(
                    self.TOP_K,
                    tr("Number of best tiles to return"),
                    QgsProcessingParameterNumber.Type.Integer,
                    10,
                    minValue=1,
                )
            )
        resume = QgsProcessingParameterBoolean(
            self.RESUME,
            tr("Resume an interrupted run into the same output file (file outputs only)"),
            defaultValue=True,
        )
        resume.setHelp(
            tr(
                "A run that stopped early keeps its features in the output file; run again with the same "
                "parameters to do only the remaining tiles. A temporary layer cannot be resumed."
            )
        )
        resume.setFlags(resume.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        self.addParameter(resume)
        self.addParameter(
            QgsProcessingParameterFeatureSink(
                self.OUTPUT, self.output_description(), QgsProcessing.SourceType.TypeVectorPolygon
            )
        )

    def checkParameterValues(self, parameters: dict[str, Any], context: QgsProcessingContext) -> tuple[bool, str]:  # noqa: N802
        for name in self.RASTERS:
            problem = self._raster_problem(parameters.get(name), context)
            if problem:
                return False, problem
        return super().checkParameterValues(parameters, context)

    def _raster_problem(self, value: Any, context: QgsProcessingContext) -> str:
        layer = value if isinstance(value, QgsMapLayer) else None
        if layer is None and isinstance(value, str) and value:
            layer = QgsProcessingUtils.mapLayerFromString(value, context)
            if layer is None and os.path.isfile(value):
                return ""  # a raster file path: checked by the raster parameter itself
        if layer is None:
            return ""  # missing or unknown: the parameter's own check says so
        if not isinstance(layer, QgsRasterLayer):
            return tr("“{name}” is not a raster layer: choose a raster layer.").format(name=layer.name())
        if local_file(layer) is None:
            return tr(
                "“{name}” is not a raster file on this computer (a web, virtual or in-memory layer); the "
                "engine reads rasters itself. Save it as a GeoTIFF first and use that."
            ).format(name=layer.name())
        return ""

    # --- running -------------------------------------------------------------------------------
    def _request(
        self, parameters: dict[str, Any], context: QgsProcessingContext
    ) -> tuple[BatchRequest, QgsCoordinateReferenceSystem]:
        rasters = []
        for name in self.RASTERS:
            layer = self.parameterAsRasterLayer(parameters, name, context)
            if layer is None:
                raise QgsProcessingException(self.invalidRasterError(parameters, name))
            problem = self._raster_problem(layer, context)
            if problem:
                raise QgsProcessingException(problem)
            rasters.append(layer)
        crs = rasters[0].crs()
        extent = extent_crs = None
        if parameters.get(self.EXTENT) not in (None, ""):
            extent_crs_value = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
            if not extent_crs_value.isValid():
                extent_crs_value = crs
            rect = self.parameterAsExtent(parameters, self.EXTENT, context, extent_crs_value)
            extent = (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
            extent_crs = crs_id(extent_crs_value)
        options = {}
        if self.HAS_THRESHOLD:
            options["score_threshold"] = self.parameterAsDouble(parameters, self.SCORE_THRESHOLD, context)
        if self.HAS_TOP_K:
            options["top_k"] = self.parameterAsInt(parameters, self.TOP_K, context)
        try:
            request = BatchRequest(
                task=self.TASK,
                sources=tuple(local_file(layer) for layer in rasters),
                output_crs=crs_id(crs),
                model=self.parameterAsString(parameters, self.MODEL, context).strip() or AUTO_MODEL,
                prompt=self.parameterAsString(parameters, self.PROMPT, context).strip() if self.HAS_PROMPT else "",
                extent=extent,
                extent_crs=extent_crs,
                tile_size=self.parameterAsInt(parameters, self.TILE_SIZE, context),
                overlap=self.parameterAsInt(parameters, self.OVERLAP, context),
                batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
                options=Options(**options),
            )
        except ProtocolError as error:
            raise QgsProcessingException(error_message(error)) from None
        return request, crs

    def processAlgorithm(  # noqa: N802
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        request, crs = self._request(parameters, context)
        destination = self._destination(parameters, context)
        output_file = _output_file(destination)
        journal, kept = None, []
        if output_file is not None:
            journal_path = Journal.path_for(output_file)
            if self.parameterAsBoolean(parameters, self.RESUME, context):
                journal = Journal.open(journal_path, request.to_dict())
                if journal is not None:
                    kept = _kept_features(destination, journal)
                    feedback.pushInfo(
                        tr("Resuming: {tiles} tile(s) and {features} feature(s) kept from the earlier run.").format(
                            tiles=len(journal.tiles), features=len(kept)
                        )
                    )
            if journal is None:
                journal_path.unlink(missing_ok=True)
        sink, destination = self.parameterAsSink(
            parameters, self.OUTPUT, context, output_fields(), QgsWkbTypes.Type.MultiPolygon, crs
        )
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        writer = OutputWriter(sink)
        del sink  # the writer holds the only reference, so that close() finishes the file
        job = _Job(request, writer, journal, feedback)
        try:
            writer.add_features(kept)
            if output_file is not None and journal is None:
                journal = job.journal = Journal.create(Journal.path_for(output_file), request.to_dict())
            failure = job.run()
        finally:
            writer.close()
        if failure is not None:
            raise QgsProcessingException(failure)
        if journal is not None:
            journal.remove()
        if writer.skipped:
            feedback.pushWarning(
                tr("{count} feature(s) that were not polygons were left out.").format(count=writer.skipped)
            )
        return {self.OUTPUT: destination, "TILES": job.tiles, "FEATURES": writer.written}

    def _destination(self, parameters: dict[str, Any], context: QgsProcessingContext) -> str:
        """Where the output goes, without the side effect of ``parameterAsOutputLayer`` on a temporary one.

        For a temporary output that call asks Processing to load a layer named ``memory:<description>``
        on completion, a layer that never exists (``parameterAsSink`` registers the real one), and
        QGIS then logs "The following layers were not correctly generated".
        """
        destination = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if destination.startswith("memory:") and context.willLoadLayerOnCompletion(destination):
            layers = context.layersToLoadOnCompletion()
            del layers[destination]
            context.setLayersToLoadOnCompletion(layers)
        return destination


class _Job:
    """One run of a batch request against the engine; returns a failure message or None."""

    def __init__(
        self, request: BatchRequest, writer: OutputWriter, journal: Journal | None, feedback: QgsProcessingFeedback
    ):
        self.request = request
        self.writer = writer
        self.journal = journal
        self.feedback = feedback
        self.tiles = 0
        self.done = 0
        self.skipped_tiles = 0
        self.client = None

    def run(self) -> str | None:
        request = self.request
        if self.journal is not None:
            request = replace(request, skip_tiles=self.journal.skip_tiles(), pending=self.journal.pending())
        self.skipped_tiles = len(request.skip_tiles)
        try:
            client = self.client = ENGINE.client(self.feedback)
        except EngineUnavailable as error:
            return str(error)
        except ProtocolError as error:
            return self._stopped(error)
        try:
            with _CancelWatch(self.feedback, client):
                client.batch(request, self._on_event)
        except ProtocolError as error:
            return self._stopped(error)
        self.feedback.setProgress(100.0)
        return None

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == BatchEvent.START.value:
            self.tiles = int(event.get("tiles") or 0)
            self.feedback.pushInfo(
                tr("{tiles} tile(s) in the grid, {todo} to do.").format(
                    tiles=self.tiles, todo=event.get("todo", self.tiles)
                )
            )
        elif kind == BatchEvent.TILE.value:
            written = 0
            if self.request.task is not Task.RETRIEVE:  # a search writes only its ranked tiles
                written = self.writer.add_geojson(event.get("features") or [], str(event.get("text") or ""))
            if self.journal is not None:
                self.journal.record_tile(int(event["tile"]), written, list(event.get("pending") or []))
            self.done = int(event.get("done", self.done + 1))
            if event.get("notice"):  # e.g. a batch size too large for the GPU, reduced
                self.feedback.pushWarning(str(event["notice"]))
            if self.tiles:
                self.feedback.setProgress(min(99.0, 100.0 * (self.skipped_tiles + self.done) / self.tiles))
        elif kind in (BatchEvent.MERGED.value, BatchEvent.RANKED.value):
            self.writer.add_geojson(event.get("features") or [])
        if self.feedback.isCanceled():
            self.client.cancel()  # at once, not at the watcher's next look

    def _stopped(self, error: ProtocolError) -> str:
        done = self.skipped_tiles + self.done
        if error.code is ErrorCode.CANCELLED:
            head = tr("Cancelled after {done} of {tiles} tile(s).").format(done=done, tiles=self.tiles or "?")
        elif error.code is ErrorCode.ENGINE_UNREACHABLE and self.tiles:
            head = tr("The engine stopped answering after {done} of {tiles} tile(s) ({detail}).").format(
                done=done, tiles=self.tiles, detail=error.message
            )
        else:
            head = error_message(error)
        if self.journal is None:
            return head
        return (
            head
            + " "
            + tr(
                "The {count} feature(s) written so far are kept; run the algorithm again with the "
                "same parameters to resume."
            ).format(count=self.writer.written)
        )


def _output_file(destination: str) -> Path | None:
    """The file behind a file-based output (a journal can sit beside it); None for memory and database outputs."""
    if not destination or destination.startswith(
        ("memory:", "TEMPORARY_OUTPUT", "postgres:", "postgis:", "mssql:", "oracle:")
    ):
        return None
    path = QgsProviderRegistry.instance().decodeUri("ogr", destination).get("path") or destination
    if path.startswith("ogr:"):
        return None
    return Path(path) if os.path.isabs(path) else None


def _kept_features(destination: str, journal: Journal) -> list[QgsFeature]:
    """The features of an earlier run whose tiles the journal records as written in full.

    Tiles whose features are not all in the file are forgotten (the journal drops them), so the
    resumed run does them again; features of no recorded tile (a half-written merge) are dropped.
    """
    layer = QgsVectorLayer(destination, "earlier run", "ogr")
    if not layer.isValid() or layer.fields().lookupField("tile") < 0:
        journal.keep_only(set())
        return []
    features = list(layer.getFeatures())
    counts = Counter(f["tile"] for f in features if f["tile"] not in (None, NULL))
    intact = journal.keep_intact(counts)
    fields = output_fields()
    kept = []
    for source in features:
        if source["tile"] in intact:
            feature = QgsFeature(fields)
            feature.setGeometry(source.geometry())
            feature.setAttributes([source[name] for name, _ in FIELD_TYPES])
            kept.append(feature)
    return kept
