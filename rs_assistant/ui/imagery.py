"""The images a question is asked about: each chosen raster over the region, ready to send.

A file-backed raster (GDAL provider, local file) is sent as its path plus the region's extent
and CRS: the engine reads the window itself. Any other raster (WMS, XYZ, virtual) is rendered
for the region by QGIS (QgsMapRendererParallelJob, off the UI thread) and sent as a PNG with
its extent. Every image also gets a small thumbnail for the transcript.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsRectangle,
)
from qgis.PyQt.QtCore import QBuffer, QByteArray, QIODevice, QObject, QSize, Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor, QImage

from rs_assistant.core.protocol import ImageRef, ProtocolError

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 160


def crs_id(crs: QgsCoordinateReferenceSystem) -> str:
    """What the protocol calls a CRS: the authority id, or WKT for a custom CRS."""
    return crs.authid() or crs.toWkt(QgsCoordinateReferenceSystem.WktVariant.WKT2_2019)


def local_file(layer: QgsRasterLayer) -> str | None:
    """The path of a raster the engine can read itself, or None (web and virtual layers)."""
    if layer.providerType() != "gdal":
        return None
    path = QgsProviderRegistry.instance().decodeUri("gdal", layer.source()).get("path") or ""
    return path if os.path.isfile(path) else None


def layer_extent_in(
    layer: QgsRasterLayer, crs: QgsCoordinateReferenceSystem, context: QgsCoordinateTransformContext
) -> QgsRectangle:
    if layer.crs() == crs:
        return layer.extent()
    return QgsCoordinateTransform(layer.crs(), crs, context).transformBoundingBox(layer.extent())


def pixel_size(
    layer: QgsRasterLayer,
    region: QgsRectangle,
    crs: QgsCoordinateReferenceSystem,
    context: QgsCoordinateTransformContext,
) -> tuple[int, int]:
    """How many of the layer's pixels the region spans (width, height)."""
    rect = (
        region if layer.crs() == crs else QgsCoordinateTransform(crs, layer.crs(), context).transformBoundingBox(region)
    )
    return (round(rect.width() / layer.rasterUnitsPerPixelX()), round(rect.height() / layer.rasterUnitsPerPixelY()))


def fitted_size(region: QgsRectangle, longest: int) -> QSize:
    scale = longest / max(region.width(), region.height())
    return QSize(max(1, round(region.width() * scale)), max(1, round(region.height() * scale)))


def png_bytes(image: QImage) -> bytes:
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(data)


@dataclass(frozen=True)
class PreparedImage:
    ref: ImageRef
    thumbnail: QImage
    layer_name: str


class RegionImages(QObject):
    """Prepares one image per layer for a region; emits ``ready(list[PreparedImage])`` or
    ``failed(str)`` once every render job has finished. Renders run in QGIS's worker threads."""

    ready = pyqtSignal(list)
    failed = pyqtSignal(str)

    def __init__(
        self,
        layers: list[QgsRasterLayer],
        region: QgsRectangle,
        crs: QgsCoordinateReferenceSystem,
        context: QgsCoordinateTransformContext,
        max_side: int,
        parent: QObject | None = None,
    ):
        super().__init__(parent)
        self._layers = layers
        self._region = QgsRectangle(region)
        self._crs = crs
        self._context = context
        self._max_side = max_side
        self._jobs: list[QgsMapRendererParallelJob] = []
        self._results: list[PreparedImage | None] = [None] * len(layers)
        self._pending = 0
        self._cancelled = False

    def start(self) -> None:
        """Starts one render per layer. What is needed of each layer (name, file) is read now: a layer
        removed from the project while its render runs is not touched again."""
        self._pending = len(self._layers)
        for index, layer in enumerate(self._layers):
            name, path = layer.name(), local_file(layer)
            side = THUMBNAIL_SIDE if path else self._max_side
            job = QgsMapRendererParallelJob(self._map_settings(layer, side))
            job.finished.connect(
                lambda index=index, name=name, path=path, job=job: self._on_rendered(index, name, path, job)
            )
            self._jobs.append(job)
            job.start()
        self._layers = []  # no reference to a layer outlives the start

    def cancel(self) -> None:
        """Drops the renders: their ends call nothing (this object may be deleted by then)."""
        self._cancelled = True
        for job in self._jobs:
            try:
                job.finished.disconnect()
            except (TypeError, RuntimeError):
                pass
            job.cancelWithoutBlocking()

    def _map_settings(self, layer: QgsRasterLayer, side: int) -> QgsMapSettings:
        settings = QgsMapSettings()
        settings.setLayers([layer])
        settings.setDestinationCrs(self._crs)
        settings.setTransformContext(self._context)
        settings.setOutputSize(fitted_size(self._region, side))
        settings.setExtent(self._region)
        settings.setBackgroundColor(QColor(0, 0, 0, 0))
        return settings

    def _on_rendered(self, index: int, name: str, path: str | None, job: QgsMapRendererParallelJob) -> None:
        if self._cancelled:
            return
        image = job.renderedImage()
        errors = "; ".join(e.message for e in job.errors())
        if image.isNull():
            self._cancelled = True
            self.failed.emit(f"{name}: {errors or 'nothing was rendered'}")
            return
        extent = job.mapSettings().visibleExtent()
        try:
            if path:
                ref = ImageRef(extent=rect_tuple(self._region), crs=crs_id(self._crs), source=path)
            else:
                ref = ImageRef.from_png(png_bytes(image), rect_tuple(extent), crs_id(self._crs))
        except ProtocolError as exc:  # e.g. a project without a CRS
            self._cancelled = True
            self.failed.emit(f"{name}: {exc.message}")
            return
        thumbnail = image.scaled(
            fitted_size(extent, THUMBNAIL_SIDE),
            Qt.AspectRatioMode.KeepAspectRatio,
            Qt.TransformationMode.SmoothTransformation,
        )
        self._results[index] = PreparedImage(ref, thumbnail, name)
        self._pending -= 1
        if self._pending == 0:
            self.ready.emit(list(self._results))


def rect_tuple(rect: QgsRectangle) -> tuple[float, float, float, float]:
    return (rect.xMinimum(), rect.yMinimum(), rect.xMaximum(), rect.yMaximum())
