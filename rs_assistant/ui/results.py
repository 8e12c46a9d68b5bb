"""Answers with geometry become vector layers: one per feature kind, in the project CRS,
written to a GeoPackage (next to the project, or a chosen folder), styled per kind, placed in
the layer-tree group "RS Assistant". The answer's text goes into the layer's abstract.
Tile layers (``/search``) also carry each tile's ``rank`` (1 = best) and ``text``.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsFields,
    QgsJsonUtils,
    QgsLayerTreeGroup,
    QgsProject,
    QgsVectorFileWriter,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QDateTime

from rs_assistant.core.paths import resource
from rs_assistant.core.protocol import AnalyzeResponse, FeatureKind

log = logging.getLogger(__name__)

GROUP_NAME = "RS Assistant"
GEOPACKAGE = "rs_assistant_results.gpkg"
FIELDS = "&".join(f"field={name}" for name in (
    "label:string", "score:double", "kind:string", "prompt:string", "model:string", "request_id:string", "created:datetime"))
TILE_FIELDS = "&field=rank:integer&field=text:string"


class ResultWriteError(Exception):
    pass


def style_file(kind: FeatureKind) -> Path:
    return resource("styles", f"result_{kind.value}.qml")


def table_name(title: str) -> str:
    slug = re.sub(r"[^0-9a-z]+", "_", title.lower()).strip("_")[:40] or "result"
    return f"{slug}_{uuid.uuid4().hex[:8]}"


class ResultLayerWriter:
    def __init__(self, project: QgsProject, output_folder: str = ""):
        self._project = project
        self._output_folder = output_folder

    def geopackage(self) -> Path:
        """The chosen folder, else the project's folder, else the QGIS profile's."""
        if self._output_folder:
            folder = Path(self._output_folder)
        elif self._project.absolutePath():
            folder = Path(self._project.absolutePath())
        else:
            folder = Path(QgsApplication.qgisSettingsDirPath()) / "rs_assistant"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / GEOPACKAGE

    def write(self, response: AnalyzeResponse, title: str, prompt: str) -> list[QgsVectorLayer]:
        return self.write_features(response.feature_list, title, prompt, response.text, response.model, response.request_id)

    def write_features(self, features: list[dict], title: str, prompt: str, text: str, model: str,
                       request_id: str) -> list[QgsVectorLayer]:
        """GeoJSON features (in the project CRS) as one layer per kind; ``text`` becomes the abstract."""
        by_kind: dict[FeatureKind, list[dict]] = {}
        for feature in features:
            by_kind.setdefault(FeatureKind(feature["properties"]["kind"]), []).append(feature)
        created = QDateTime.currentDateTimeUtc()
        layers = []
        for kind, kind_features in by_kind.items():
            name = title if len(by_kind) == 1 else f"{title} ({kind.value})"
            memory = self._memory_layer(kind, kind_features, (model, request_id), prompt, created)
            layer = self._save(memory, name)
            message, styled = layer.loadNamedStyle(str(style_file(kind)))
            if not styled:
                log.warning("no style for %s results: %s", kind.value, message)
            metadata = layer.metadata()
            metadata.setAbstract(text)
            layer.setMetadata(metadata)
            layers.append(layer)
        group = self._group()
        for layer in layers:
            self._project.addMapLayer(layer, False)
            group.insertLayer(0, layer)
        return layers

    def _memory_layer(self, kind: FeatureKind, features: list[dict], origin: tuple[str, str], prompt: str,
                      created: QDateTime) -> QgsVectorLayer:
        geometry = "Point" if kind is FeatureKind.POINT else "MultiPolygon"
        tile = kind is FeatureKind.TILE
        layer = QgsVectorLayer(f"{geometry}?{FIELDS}{TILE_FIELDS if tile else ''}", "result", "memory")
        layer.setCrs(self._project.crs())  # the request asked the engine for the project CRS
        parsed = QgsJsonUtils.stringToFeatureList(json.dumps({"type": "FeatureCollection", "features": features}), QgsFields())
        out = []
        for source, geojson in zip(parsed, features):
            props = geojson["properties"]
            feature = QgsFeature(layer.fields())
            geom = source.geometry()
            if kind is not FeatureKind.POINT:
                geom.convertToMultiType()
            feature.setGeometry(geom)
            attributes = [str(props["label"]), float(props["score"]), kind.value, prompt, *origin, created]
            if tile:
                attributes += [props.get("rank"), props.get("text")]
            feature.setAttributes(attributes)
            out.append(feature)
        layer.dataProvider().addFeatures(out)
        return layer

    def _save(self, memory: QgsVectorLayer, name: str) -> QgsVectorLayer:
        path = self.geopackage()
        table = table_name(name)
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName = "GPKG"
        options.layerName = table
        options.actionOnExistingFile = (QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteLayer if path.exists()
                                        else QgsVectorFileWriter.ActionOnExistingFile.CreateOrOverwriteFile)
        error, message, *_ = QgsVectorFileWriter.writeAsVectorFormatV3(memory, str(path), self._project.transformContext(), options)
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
