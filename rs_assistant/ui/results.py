"""Answers with geometry become vector layers: one per feature kind, in the project CRS, written to
the project's own GeoPackage, styled per kind, placed in the layer-tree group "RS Assistant".

Each feature carries what an analyst needs to trust it and nothing internal (FIELDS): its class
(``label``), ``score`` (2 decimals), ``kind``, ``area_m2`` (on the ground: ellipsoidal, whatever the
CRS; null for points and lines), ``length_m`` (lines), and where it came from: ``model``,
``prompt`` (as typed, without a slash command), ``source`` (the raster layer's name), ``created``,
``extent`` ("xmin,ymin,xmax,ymax" of the region asked about, in ``crs``), ``crs`` and ``turn`` (the
transcript's turn number). Each layer also carries the custom property ``rs_assistant/turn``, and
the answer's text as its abstract. Tile layers (``/search``) also carry ``rank`` (1 = best), ``similarity`` (%) and
``place``.

Where: one GeoPackage per project (``<project name>_rs_assistant.gpkg``; ``rs_assistant_results.gpkg``
for a project never saved), in a folder the person chose once for the project (remembered in the
project, scope ``RSAssistant``), or the settings' output folder when one is set. A folder that holds
the files of the rasters asked about is refused: results never go among the data.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsDistanceArea,
    QgsEditorWidgetSetup,
    QgsFeature,
    QgsFields,
    QgsGeometry,
    QgsJsonUtils,
    QgsLayerTreeGroup,
    QgsProject,
    QgsRasterLayer,
    QgsUnitTypes,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QCoreApplication, QDateTime, Qt
from qgis.PyQt.QtWidgets import QFileDialog, QMessageBox, QWidget

from rs_assistant.core.conversation import FeatureRef
from rs_assistant.core.paths import resource
from rs_assistant.core.protocol import FeatureKind
from rs_assistant.ui.imagery import local_file

log = logging.getLogger(__name__)

GROUP_NAME = "RS Assistant"
GEOPACKAGE = "rs_assistant_results.gpkg"  # the GeoPackage of a project that was never saved
SCOPE = "RSAssistant"  # the project entries of the plugin
GEOPACKAGE_KEY = "results_geopackage"  # the project's GeoPackage, once chosen
TURN_PROPERTY = "rs_assistant/turn"  # a result layer's custom property: the turn that made it
RESULTS_SUBFOLDER = "rs_assistant_results"  # proposed when the project's own folder holds the data
SCORE_DECIMALS = 2
MEASURE_DECIMALS = 1
DEFAULT_ELLIPSOID = "EPSG:7030"  # WGS 84, when neither the project nor the CRS names one
FIELDS = "&".join(
    f"field={spec}"
    for spec in (
        "label:string",
        f"score:double(6,{SCORE_DECIMALS})",
        "kind:string",
        f"area_m2:double(20,{MEASURE_DECIMALS})",
        f"length_m:double(20,{MEASURE_DECIMALS})",
        "model:string",
        "prompt:string",
        "source:string",
        "created:datetime",
        "extent:string",
        "crs:string",
        "turn:integer",
    )
)
TILE_FIELDS = "&field=rank:integer&field=similarity:integer&field=place:string"  # /search: 1 = best, %, "north-west"


def _show_seconds(layer: QgsVectorLayer, field: str) -> None:
    """The attribute table shows ``field`` (a datetime) to the second ("2026-12-07 06:31:05", not ".000")."""
    index = layer.fields().indexOf(field)
    if index >= 0:
        shown = "yyyy-MM-dd HH:mm:ss"
        layer.setEditorWidgetSetup(
            index,
            QgsEditorWidgetSetup(
                "DateTime",
                {"display_format": shown, "field_format": shown, "calendar_popup": False, "allow_null": True},
            ),
        )


class ResultWriteError(Exception):
    pass


def _now() -> QDateTime:
    """Now in UTC, to the second (what a person reads in the attribute table)."""
    return QDateTime.fromSecsSinceEpoch(QDateTime.currentSecsSinceEpoch(), Qt.TimeSpec.UTC)


def tr(text: str) -> str:
    return QCoreApplication.translate("ResultLayerWriter", text)


@dataclass(frozen=True)
class Provenance:
    """Where an answer's features came from: written into every feature and the layer's metadata."""

    turn: int
    model: str
    prompt: str  # as the person typed it, without a slash command
    source: str  # the raster layer(s) asked about, by name
    extent: tuple[float, float, float, float] | None  # the region asked about, in ``crs``
    crs: QgsCoordinateReferenceSystem
    text: str = ""  # the answer's text: the layers' abstract

    def __post_init__(self) -> None:
        if not isinstance(self.turn, int) or self.turn < 1:
            raise ValueError(f"turn must be a transcript turn number (1 or more), got {self.turn!r}")
        if self.extent is not None and len(self.extent) != 4:
            raise ValueError(f"extent must be (xmin, ymin, xmax, ymax), got {self.extent!r}")

    @property
    def extent_text(self) -> str:
        """ "xmin,ymin,xmax,ymax" to the precision the CRS warrants (6 decimals in degrees, 2 in metres)."""
        if self.extent is None:
            return ""
        decimals = 6 if self.crs.isGeographic() else 2
        return ",".join(f"{v:.{decimals}f}" for v in self.extent)


def style_file(kind: FeatureKind) -> Path:
    return resource("styles", f"result_{kind.value}.qml")


def table_name(title: str) -> str:
    slug = re.sub(r"[^0-9a-z]+", "_", title.lower()).strip("_")[:40] or "result"
    return f"{slug}_{uuid.uuid4().hex[:8]}"


def layer_turn(layer) -> int | None:
    """The turn that made a result layer (its ``rs_assistant/turn`` property), or None for any other layer."""
    try:
        value = int(layer.customProperty(TURN_PROPERTY, 0) or 0)
    except (TypeError, ValueError):
        return None
    return value or None


def written_features(layer: QgsVectorLayer, fids: Iterable[int] | None = None) -> list[FeatureRef]:
    """The features of a result layer (those of ``fids``, else all) as the transcript lists them."""
    request = layer.getFeatures(list(fids)) if fids is not None else layer.getFeatures()
    names = layer.fields().names()
    out = []
    for feature in request:

        def value(name: str):
            raw = feature[name] if name in names else None  # noqa: B023
            return None if raw is None or (hasattr(raw, "isNull") and raw.isNull()) else raw

        area, length = value("area_m2"), value("length_m")
        out.append(
            FeatureRef(
                layer.id(),
                feature.id(),
                str(value("label") or ""),
                str(value("kind") or ""),
                float(value("score") or 0.0),
                None if area is None else float(area),
                None if length is None else float(length),
            )
        )
    return out


# --- where the GeoPackage goes ---------------------------------------------------------------------


def default_folder(project: QgsProject) -> Path:
    """Beside the project file; the QGIS profile's rs_assistant folder for a project never saved."""
    if project.absolutePath():
        return Path(project.absolutePath())
    return Path(QgsApplication.qgisSettingsDirPath()) / "rs_assistant"


def geopackage_name(project: QgsProject) -> str:
    stem = project.baseName() if project.fileName() else ""
    slug = re.sub(r"[^0-9A-Za-z_-]+", "_", stem).strip("_")
    return f"{slug}_rs_assistant.gpkg" if slug else GEOPACKAGE


def data_files_in(folder: Path, rasters: Sequence[QgsRasterLayer | None]) -> list[str]:
    """The names of the rasters whose files lie in ``folder`` (a folder results must not go to)."""
    try:
        folder = folder.resolve()
    except OSError:
        return []
    held = []
    for layer in rasters:
        path = local_file(layer) if layer is not None else None
        if path and Path(path).resolve().parent == folder and layer.name() not in held:
            held.append(layer.name())
    return held


def refusal(folder: Path, rasters: Sequence[QgsRasterLayer | None]) -> str:
    """Why results may not go to ``folder`` ("" when they may)."""
    held = data_files_in(folder, rasters)
    if not held:
        return ""
    return tr(
        "{folder} holds the data of {layers}. Choose another folder, so that results never mix with "
        "the data (a new folder beside it will do)."
    ).format(folder=str(folder), layers=", ".join(held))


def proposed_folder(project: QgsProject, rasters: Sequence[QgsRasterLayer | None]) -> Path:
    """The folder the question proposes: beside the project, or a subfolder of it when the project lives among its
    data."""
    folder = default_folder(project)
    return folder / RESULTS_SUBFOLDER if data_files_in(folder, rasters) else folder


#: ``ask(proposed folder, refusal(folder) -> reason or "") -> chosen folder, or None when the person declined``
FolderQuestion = Callable[[Path, Callable[[Path], str]], "Path | None"]


def ask_for_folder(parent: QWidget | None) -> FolderQuestion:
    """The question asked once per project: a folder dialog opened on the proposed folder, asked again
    (after saying why) while the folder chosen holds the data."""

    def ask(proposed: Path, why_not: Callable[[Path], str]) -> Path | None:
        made = not proposed.exists()  # a proposed folder the dialog can select; removed again if left unused
        try:
            proposed.mkdir(parents=True, exist_ok=True)
        except OSError:
            made, proposed = False, proposed.parent
        chosen: Path | None = None
        try:
            chosen = _ask_until_allowed(parent, proposed, why_not)
        finally:
            if made and chosen != proposed:
                try:
                    proposed.rmdir()
                except OSError:
                    pass
        return chosen

    return ask


def _ask_until_allowed(parent: QWidget | None, proposed: Path, why_not: Callable[[Path], str]) -> Path | None:
    start = proposed
    while True:
        dialog = QFileDialog(parent, tr("RS Assistant: where should this project's results go?"), str(start.parent))
        dialog.setObjectName("rsAssistantResultsFolderDialog")
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
        dialog.setOption(QFileDialog.Option.DontUseNativeDialog, True)  # the same dialog on every platform
        dialog.setLabelText(QFileDialog.DialogLabel.Accept, tr("Use this folder"))
        dialog.selectFile(start.name)
        if not dialog.exec() or not dialog.selectedFiles():
            return None
        chosen = Path(dialog.selectedFiles()[0])
        reason = why_not(chosen)
        if not reason:
            return chosen
        QMessageBox.warning(parent, tr("RS Assistant"), reason)
        start = chosen


def results_geopackage(
    project: QgsProject, rasters: Sequence[QgsRasterLayer | None], settings_folder: str, ask: FolderQuestion | None
) -> Path:
    """The project's GeoPackage: the one remembered in the project, else in the settings' folder, else in
    the folder ``ask`` gets from the person (then remembered). ResultWriteError when none may be used."""
    why_not = lambda folder: refusal(folder, rasters)  # noqa: E731
    stored, _ok = project.readEntry(SCOPE, GEOPACKAGE_KEY, "")
    if stored:
        path = Path(project.readPath(stored))
        if not why_not(path.parent):
            return path
        log.info("the project's results folder %s holds the data asked about: asking again", path.parent)
    if settings_folder and not why_not(Path(settings_folder)):
        folder = Path(settings_folder)
    else:
        folder = ask(proposed_folder(project, rasters), why_not) if ask is not None else None
        if folder is None:
            raise ResultWriteError(
                tr(
                    "no folder was chosen for this project's results, so the features were not "
                    "saved; ask again to choose one"
                )
            )
    path = folder / geopackage_name(project)
    project.writeEntry(SCOPE, GEOPACKAGE_KEY, project.writePath(str(path)))
    return path


# --- measures --------------------------------------------------------------------------------------


def ground_measurer(project: QgsProject, crs: QgsCoordinateReferenceSystem) -> QgsDistanceArea:
    """Measures on the ellipsoid (the project's, else the CRS's, else WGS 84), in m² and m, whatever ``crs`` is."""
    measurer = QgsDistanceArea()
    measurer.setSourceCrs(crs, project.transformContext())
    ellipsoid = project.ellipsoid()
    if not ellipsoid or ellipsoid.upper() == "NONE":
        ellipsoid = crs.ellipsoidAcronym() or DEFAULT_ELLIPSOID
    if not measurer.setEllipsoid(ellipsoid):
        measurer.setEllipsoid(DEFAULT_ELLIPSOID)
    return measurer


def measures(measurer: QgsDistanceArea, geometry: QgsGeometry) -> tuple[float | None, float | None]:
    """(area in m², length in m) of a geometry: area for polygons, length for lines, None otherwise."""
    kind = geometry.type()
    if kind == QgsWkbTypes.GeometryType.PolygonGeometry:
        area = measurer.convertAreaMeasurement(measurer.measureArea(geometry), QgsUnitTypes.AreaUnit.AreaSquareMeters)
        return round(area, MEASURE_DECIMALS), None
    if kind == QgsWkbTypes.GeometryType.LineGeometry:
        length = measurer.convertLengthMeasurement(
            measurer.measureLength(geometry), QgsUnitTypes.DistanceUnit.DistanceMeters
        )
        return None, round(length, MEASURE_DECIMALS)
    return None, None


# --- the layers ------------------------------------------------------------------------------------


def _objects(kind: FeatureKind, geometry: QgsGeometry) -> list[QgsGeometry]:
    """One geometry per object: a mask or change MultiPolygon (from an engine that does not split them) gives its
    parts."""
    if kind in (FeatureKind.MASK, FeatureKind.CHANGE) and geometry.isMultipart():
        return [part for part in geometry.asGeometryCollection() if not part.isEmpty()]
    return [geometry]


class ResultLayerWriter:
    def __init__(
        self,
        project: QgsProject,
        output_folder: str = "",
        rasters: Sequence[QgsRasterLayer | None] = (),
        ask: FolderQuestion | None = None,
    ):
        self._project = project
        self._output_folder = output_folder
        self._rasters = list(rasters)
        self._ask = ask

    def geopackage(self) -> Path:
        """The project's GeoPackage (asking for its folder the first time); its folder is made if missing."""
        path = results_geopackage(self._project, self._rasters, self._output_folder, self._ask)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ResultWriteError(f"{path.parent}: {exc.strerror or exc}") from None
        return path

    def write_features(self, features: list[dict], title: str, provenance: Provenance) -> list[QgsVectorLayer]:
        """GeoJSON features (in the project CRS) as one layer per kind, in the group "RS Assistant"."""
        by_kind: dict[FeatureKind, list[dict]] = {}
        for feature in features:
            by_kind.setdefault(FeatureKind(feature["properties"]["kind"]), []).append(feature)
        created = _now()
        layers = []
        for kind, kind_features in by_kind.items():
            name = title if len(by_kind) == 1 else f"{title} ({kind.value})"
            memory = QgsVectorLayer(
                f"{self._geometry(kind)}?{FIELDS}{TILE_FIELDS if kind is FeatureKind.TILE else ''}", "result", "memory"
            )
            memory.setCrs(self._project.crs())  # the request asked the engine for the project CRS
            memory.dataProvider().addFeatures(self._features(memory, kind, kind_features, provenance, created))
            layer = self._save(memory, name)
            message, styled = layer.loadNamedStyle(str(style_file(kind)))
            if not styled:
                log.warning("no style for %s results: %s", kind.value, message)
            _show_seconds(layer, "created")
            metadata = layer.metadata()
            metadata.setAbstract(provenance.text)
            layer.setMetadata(metadata)
            layer.setCustomProperty(TURN_PROPERTY, provenance.turn)
            layers.append(layer)
        group = self._group()
        for layer in layers:
            self._project.addMapLayer(layer, False)
            group.insertLayer(0, layer)
        return layers

    def append_features(self, layer: QgsVectorLayer, features: list[dict], provenance: Provenance) -> list[int]:
        """Adds GeoJSON features (of the layer's kind, in the project CRS) to a result layer; returns their ids."""
        kind = FeatureKind(features[0]["properties"]["kind"])
        new = self._features(layer, kind, features, provenance, _now())
        ok, added = layer.dataProvider().addFeatures(new)
        if not ok:
            raise ResultWriteError(f"{layer.source()}: {layer.dataProvider().lastError() or 'cannot add features'}")
        layer.updateExtents()
        layer.triggerRepaint()
        return [f.id() for f in added]

    @staticmethod
    def _geometry(kind: FeatureKind) -> str:
        return "Point" if kind is FeatureKind.POINT else "MultiPolygon"

    def _features(
        self, layer: QgsVectorLayer, kind: FeatureKind, features: list[dict], provenance: Provenance, created: QDateTime
    ) -> list[QgsFeature]:
        parsed = QgsJsonUtils.stringToFeatureList(
            json.dumps({"type": "FeatureCollection", "features": features}), QgsFields()
        )
        measurer = ground_measurer(self._project, layer.crs())
        origin = {
            "model": provenance.model,
            "prompt": provenance.prompt,
            "source": provenance.source,
            "created": created,
            "extent": provenance.extent_text,
            "crs": provenance.crs.authid() or provenance.crs.description(),
            "turn": provenance.turn,
        }
        names = set(layer.fields().names())
        out = []
        for source, geojson in zip(parsed, features):
            props = geojson["properties"]
            for geom in _objects(kind, source.geometry()):
                feature = QgsFeature(layer.fields())
                if kind is not FeatureKind.POINT:
                    geom.convertToMultiType()
                feature.setGeometry(geom)
                area, length = measures(measurer, geom)
                values = {
                    "label": str(props["label"]),
                    "score": round(float(props["score"]), SCORE_DECIMALS),
                    "kind": kind.value,
                    "area_m2": area,
                    "length_m": length,
                    **origin,
                }
                if kind is FeatureKind.TILE:
                    values.update(rank=props.get("rank"), similarity=props.get("similarity"), place=props.get("place"))
                for name, value in values.items():  # by name: a GeoPackage layer has its fid first
                    if name in names:
                        feature.setAttribute(name, value)
                out.append(feature)
        return out

    def _save(self, memory: QgsVectorLayer, name: str) -> QgsVectorLayer:
        path = self.geopackage()
        table = table_name(name)
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName = "GPKG"
        options.layerName = table
        options.actionOnExistingFile = (
            QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer
            if path.exists()
            else QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteFile
        )
        error, message, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(
            memory, str(path), self._project.transformContext(), options
        )
        if error != QgsVectorFileWriter.WriterError.NoError:
            raise ResultWriteError(f"{path}: {message}")
        layer = QgsVectorLayer(f"{path}|layername={table}", name, "ogr")
        if not layer.isValid():
            raise ResultWriteError(f"{path}: cannot open layer {table}")
        log.info("wrote %d feature(s) to %s|%s", layer.featureCount(), path, table)
        return layer

    def _group(self) -> QgsLayerTreeGroup:
        root = self._project.layerTreeRoot()
        return root.findGroup(GROUP_NAME) or root.insertGroup(0, GROUP_NAME)
