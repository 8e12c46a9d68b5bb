"""Polygon layers burned into GeoTIFF masks on a raster grid, and masks turned back into polygons.

The logic behind the export dialog and the Processing algorithms, with no user interface, so
that scripts can call it too:

    from rs_assistant.processing.mask_export import GridSpec, MaskOptions, layer_to_mask
    layer_to_mask(layer, GridSpec.from_raster("reference.tif"), "mask.tif", MaskOptions(burn_field="class"))

Every file is written under a temporary name in the target folder and renamed when complete, so
a failure or a cancel never leaves a half-written file; an existing file is replaced only when
the caller says so. Errors are ``MaskExportError`` with a translated message for the user.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from osgeo import gdal, ogr, osr
from qgis.core import (
    NULL,
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCoordinateTransformContext,
    QgsCsException,
    QgsFeature,
    QgsFeatureRequest,
    QgsFeatureSource,
    QgsFeedback,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsVectorLayerSelectedFeatureSource,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QCoreApplication, QMetaType, QVariant

log = logging.getLogger(__name__)

BURN_CONSTANT = 1
MAX_PIXELS = 2**32  # a larger grid from an extent is almost always a resolution in the wrong unit
_INTEGER_FIELD_TYPES = (QMetaType.Type.Int, QMetaType.Type.UInt, QMetaType.Type.LongLong, QMetaType.Type.ULongLong)
# Smallest first: the first type whose range holds every value (and the nodata value) is used.
_DATA_TYPES = (
    (gdal.GDT_Byte, 0, 255),
    (gdal.GDT_UInt16, 0, 2**16 - 1),
    (gdal.GDT_Int16, -(2**15), 2**15 - 1),
    (gdal.GDT_UInt32, 0, 2**32 - 1),
    (gdal.GDT_Int32, -(2**31), 2**31 - 1),
)
_MASK_DATA_TYPES = {data_type for data_type, _, _ in _DATA_TYPES}
_CRS_WKT = QgsCoordinateReferenceSystem.WktVariant.WKT_PREFERRED_GDAL
Progress = tuple[float, float]


def tr(text: str) -> str:
    return QCoreApplication.translate("MaskExport", text)


class MaskExportError(Exception):
    """An export that cannot be done; the message is translated and meant for the user."""


class OutputExistsError(MaskExportError):
    """The target file exists and the caller did not allow replacing it."""


class ExportCanceledError(MaskExportError):
    """The feedback object was canceled; nothing was written."""


class Compression(Enum):
    DEFLATE = "DEFLATE"
    LZW = "LZW"
    NONE = "NONE"


# --- the grid ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridSpec:
    """A raster grid: CRS, GDAL geotransform and size in pixels."""

    crs: QgsCoordinateReferenceSystem
    geotransform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    def __post_init__(self) -> None:
        if not self.crs.isValid():
            raise MaskExportError(tr("The grid has no valid CRS."))
        if len(self.geotransform) != 6:
            raise MaskExportError(tr("A geotransform has six numbers."))
        if self.width < 1 or self.height < 1:
            raise MaskExportError(tr("The grid has no pixels."))

    @classmethod
    def from_raster(cls, raster: QgsRasterLayer | str | os.PathLike) -> GridSpec:
        """The grid of a raster file, or of a raster layer that GDAL reads (its CRS as QGIS sees it)."""
        dataset = _open_raster(raster)
        crs = _raster_crs(raster, dataset)
        if not crs.isValid():
            raise MaskExportError(tr("The reference raster has no CRS."))
        return cls(crs, tuple(dataset.GetGeoTransform()), dataset.RasterXSize, dataset.RasterYSize)

    @classmethod
    def from_extent(cls, extent: QgsRectangle, resolution: float, crs: QgsCoordinateReferenceSystem) -> GridSpec:
        """A north-up grid from the extent's top-left corner; the last column and row may reach past it."""
        if not resolution > 0:
            raise MaskExportError(tr("The resolution must be greater than zero."))
        if extent.isNull() or not (extent.width() > 0 and extent.height() > 0):
            raise MaskExportError(tr("The extent has no area."))
        width = math.ceil(round(extent.width() / resolution, 9))
        height = math.ceil(round(extent.height() / resolution, 9))
        if width * height > MAX_PIXELS:
            raise MaskExportError(
                tr("The grid would be {0} x {1} pixels: choose a coarser resolution.").format(width, height)
            )
        geotransform = (extent.xMinimum(), resolution, 0.0, extent.yMaximum(), 0.0, -resolution)
        return cls(crs, geotransform, width, height)

    def extent(self) -> QgsRectangle:
        """The bounding box of the grid's four corners (the grid itself when north-up)."""
        x0, dx, rx, y0, ry, dy = self.geotransform
        corners = [(x0 + c * dx + r * rx, y0 + c * ry + r * dy) for c in (0, self.width) for r in (0, self.height)]
        xs, ys = zip(*corners)
        return QgsRectangle(min(xs), min(ys), max(xs), max(ys))


# --- layer to mask -------------------------------------------------------------------------------
@dataclass(frozen=True)
class MaskOptions:
    """How polygons are burned. Uncovered pixels get ``nodata`` when set, else 0."""

    burn_field: str | None = None  # an integer field holding class ids; None burns 1
    nodata: int | None = None
    compression: Compression = Compression.DEFLATE
    all_touched: bool = False

    @property
    def background(self) -> int:
        return 0 if self.nodata is None else self.nodata


def polygon_source(layer: QgsVectorLayer, selected_only: bool) -> QgsFeatureSource:
    """The layer itself, or only its selected features (an error when nothing is selected)."""
    if not selected_only:
        return layer
    if layer.selectedFeatureCount() == 0:
        raise MaskExportError(tr("“{0}” has no selected features.").format(layer.name()))
    return QgsVectorLayerSelectedFeatureSource(layer)


def layer_to_mask(
    source: QgsFeatureSource,
    grid: GridSpec,
    output: str | os.PathLike,
    options: MaskOptions = MaskOptions(),
    *,
    overwrite: bool = False,
    feedback: QgsFeedback | None = None,
    transform_context: QgsCoordinateTransformContext | None = None,
) -> Path:
    """Burns the source's polygons, reprojected to the grid's CRS, into a one-band GeoTIFF.

    Later features are burned over earlier ones. Features with no geometry or a NULL class id,
    and those that cannot be reprojected, are skipped with a warning.
    """
    output = Path(output)
    feedback = feedback or QgsFeedback()
    _check_output(output, overwrite)
    _check_polygons(source)
    field_index = _burn_field_index(source, options.burn_field)
    if source.featureCount() == 0:
        raise MaskExportError(tr("“{0}” has no features to burn.").format(source.sourceName()))
    burn_ds, values = _burn_layer(source, grid, field_index, transform_context, feedback, (0.0, 40.0))
    if options.nodata is not None and options.nodata in values:
        raise MaskExportError(tr("The nodata value {0} is also a burn value.").format(options.nodata))
    data_type = fitting_data_type(values | {options.background})
    with atomic_output(output, overwrite) as partial:
        _rasterize(partial, grid, burn_ds.GetLayer(0), data_type, options, feedback, (40.0, 100.0))
    log.info("Mask written to %s (%s)", output, gdal.GetDataTypeName(data_type))
    return output


def fitting_data_type(values: Iterable[int]) -> int:
    """The smallest GDAL integer type (Byte first) that holds every value."""
    low, high = min(values), max(values)
    for data_type, type_min, type_max in _DATA_TYPES:
        if type_min <= low and high <= type_max:
            return data_type
    raise MaskExportError(tr("Values from {0} to {1} do not fit a 32-bit integer raster.").format(low, high))


def _check_polygons(source: QgsFeatureSource) -> None:
    if QgsWkbTypes.geometryType(source.wkbType()) != QgsWkbTypes.GeometryType.PolygonGeometry:
        raise MaskExportError(tr("“{0}” is not a polygon layer.").format(source.sourceName()))


def _burn_field_index(source: QgsFeatureSource, name: str | None) -> int | None:
    if not name:
        return None
    index = source.fields().lookupField(name)
    if index < 0:
        raise MaskExportError(tr("“{0}” has no field “{1}”.").format(source.sourceName(), name))
    if source.fields().at(index).type() not in _INTEGER_FIELD_TYPES:
        raise MaskExportError(tr("The field “{0}” does not hold integers (class ids).").format(name))
    return index


def _burn_layer(
    source: QgsFeatureSource,
    grid: GridSpec,
    field_index: int | None,
    transform_context: QgsCoordinateTransformContext | None,
    feedback: QgsFeedback,
    progress: Progress,
) -> tuple[ogr.DataSource, set[int]]:
    """The features that may touch the grid, in the grid's CRS, as an OGR memory layer with a ``burn`` field."""
    context = transform_context or QgsCoordinateTransformContext()
    transform = QgsCoordinateTransform(source.sourceCrs(), grid.crs, context)
    request = QgsFeatureRequest()
    if field_index is None:
        request.setNoAttributes()
    else:
        request.setSubsetOfAttributes([field_index])
    try:
        request.setFilterRect(transform.transformBoundingBox(grid.extent(), Qgis.TransformDirection.Reverse))
    except QgsCsException:
        log.debug("Grid extent not transformable to %s: reading every feature", source.sourceCrs().authid())
    datasource = ogr.GetDriverByName("Memory").CreateDataSource("burn")
    layer = datasource.CreateLayer("burn", geom_type=ogr.wkbUnknown)  # no SRS: already in the grid's CRS
    layer.CreateField(ogr.FieldDefn("burn", ogr.OFTInteger64))
    values: set[int] = set()
    skipped = 0
    total = max(source.featureCount(), 1)
    for number, feature in enumerate(source.getFeatures(request)):
        _raise_if_canceled(feedback)
        value = BURN_CONSTANT if field_index is None else feature.attribute(field_index)
        geometry = _in_grid_crs(feature.geometry(), transform)
        if geometry is None or value is None or value == NULL:
            skipped += 1
            continue
        ogr_feature = ogr.Feature(layer.GetLayerDefn())
        ogr_feature.SetGeometry(ogr.CreateGeometryFromWkb(bytes(geometry.asWkb())))
        ogr_feature.SetField("burn", int(value))
        layer.CreateFeature(ogr_feature)
        values.add(int(value))
        _set_progress(feedback, progress, number / total)
    if skipped:
        _warn(feedback, tr("{0} features skipped: no geometry, no class id, or not transformable.").format(skipped))
    if not values:
        _warn(feedback, tr("No polygon overlaps the grid: the mask is empty."))
    return datasource, values


def _in_grid_crs(geometry: QgsGeometry, transform: QgsCoordinateTransform) -> QgsGeometry | None:
    if geometry.isNull() or geometry.isEmpty():
        return None
    geometry = QgsGeometry(geometry)
    if QgsWkbTypes.isCurvedType(geometry.wkbType()):
        geometry.convertToStraightSegment()
    try:
        geometry.transform(transform)
    except QgsCsException:
        return None
    return geometry


def _rasterize(
    path: Path,
    grid: GridSpec,
    layer: ogr.Layer,
    data_type: int,
    options: MaskOptions,
    feedback: QgsFeedback,
    progress: Progress,
) -> None:
    creation = [f"COMPRESS={options.compression.value}", "BIGTIFF=IF_SAFER"]
    with _gdal_errors():
        dataset = gdal.GetDriverByName("GTiff").Create(str(path), grid.width, grid.height, 1, data_type, creation)
        if dataset is None:
            raise MaskExportError(tr("Could not create {0}: {1}").format(path.name, gdal.GetLastErrorMsg()))
        dataset.SetGeoTransform(grid.geotransform)
        dataset.SetProjection(grid.crs.toWkt(_CRS_WKT))
        band = dataset.GetRasterBand(1)
        if options.nodata is not None:
            band.SetNoDataValue(options.nodata)
        band.Fill(options.background)
        touched = ["ALL_TOUCHED=TRUE"] if options.all_touched else []
        if options.burn_field:
            burn = {"options": [*touched, "ATTRIBUTE=burn"]}
        else:
            burn = {"options": touched, "burn_values": [BURN_CONSTANT]}
        error = gdal.RasterizeLayer(dataset, [1], layer, callback=_gdal_callback(feedback, progress), **burn)
        _raise_if_canceled(feedback)
        if error != gdal.CE_None:
            raise MaskExportError(tr("Burning the polygons failed: {0}").format(gdal.GetLastErrorMsg()))
        band = dataset = None  # closes and flushes the file
        if gdal.GetLastErrorType() >= gdal.CE_Failure:
            raise MaskExportError(tr("Writing {0} failed: {1}").format(path.name, gdal.GetLastErrorMsg()))


# --- mask to polygons ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PolygonizeOptions:
    """Which pixels are background (no polygon), the value attribute's name and connectivity."""

    field_name: str = "value"
    nodata_as_background: bool = True
    zero_as_background: bool = True
    eight_connected: bool = False

    def __post_init__(self) -> None:
        if not self.field_name.strip():
            raise MaskExportError(tr("The value field needs a name."))


@dataclass
class MaskPolygons:
    """Polygonised mask in an OGR memory layer (kept alive by ``datasource``), in the mask's CRS."""

    datasource: ogr.DataSource
    crs: QgsCoordinateReferenceSystem
    field_name: str

    @property
    def layer(self) -> ogr.Layer:
        return self.datasource.GetLayer(0)

    def fields(self) -> QgsFields:
        fields = QgsFields()
        fields.append(_integer_field(self.field_name))
        return fields

    def features(self) -> Iterator[QgsFeature]:
        fields = self.fields()
        self.layer.ResetReading()
        for ogr_feature in self.layer:
            feature = QgsFeature(fields)
            geometry = QgsGeometry()
            geometry.fromWkb(bytes(ogr_feature.GetGeometryRef().ExportToIsoWkb()))
            feature.setGeometry(geometry)
            feature.setAttributes([ogr_feature.GetField(0)])
            yield feature


def _integer_field(name: str) -> QgsField:
    try:
        return QgsField(name, QMetaType.Type.Int)  # Qt6 builds, and QGIS 3.38 on
    except TypeError:
        return QgsField(name, QVariant.Type.Int)  # older Qt5 builds take a QVariant type


def polygonize_mask(
    raster: QgsRasterLayer | str | os.PathLike,
    options: PolygonizeOptions = PolygonizeOptions(),
    feedback: QgsFeedback | None = None,
    progress: Progress = (0.0, 100.0),
) -> MaskPolygons:
    """One polygon per connected group of equal pixels of band 1, background pixels left out."""
    feedback = feedback or QgsFeedback()
    dataset = _open_raster(raster)
    band = dataset.GetRasterBand(1)
    if band.DataType not in _MASK_DATA_TYPES:
        raise MaskExportError(
            tr("The mask must hold integers; band 1 holds {0} values.").format(gdal.GetDataTypeName(band.DataType))
        )
    crs = _raster_crs(raster, dataset)
    datasource = ogr.GetDriverByName("Memory").CreateDataSource("polygons")
    srs = osr.SpatialReference(crs.toWkt(_CRS_WKT)) if crs.isValid() else None
    layer = datasource.CreateLayer("polygons", srs=srs, geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn(options.field_name, ogr.OFTInteger))
    use_nodata = options.nodata_as_background and band.GetMaskFlags() != gdal.GMF_ALL_VALID
    with _gdal_errors():
        valid = _nonzero_mask(band, use_nodata, feedback) if options.zero_as_background else None
        if valid is not None:
            valid_band = valid.GetRasterBand(1)
        else:
            valid_band = band.GetMaskBand() if use_nodata else None
        connectedness = ["8CONNECTED=8"] if options.eight_connected else []
        error = gdal.Polygonize(band, valid_band, layer, 0, connectedness, callback=_gdal_callback(feedback, progress))
        _raise_if_canceled(feedback)
        if error != gdal.CE_None:
            raise MaskExportError(tr("Polygonising the mask failed: {0}").format(gdal.GetLastErrorMsg()))
    return MaskPolygons(datasource, crs, options.field_name)


def mask_to_polygons(
    raster: QgsRasterLayer | str | os.PathLike,
    output: str | os.PathLike,
    options: PolygonizeOptions = PolygonizeOptions(),
    *,
    layer_name: str | None = None,
    overwrite: bool = False,
    feedback: QgsFeedback | None = None,
) -> Path:
    """Polygonises the mask into a vector file whose format follows its extension (GeoPackage, shapefile...)."""
    output = Path(output)
    feedback = feedback or QgsFeedback()
    _check_output(output, overwrite)
    driver = _vector_driver(output)
    polygons = polygonize_mask(raster, options, feedback, (0.0, 80.0))
    with atomic_output(output, overwrite) as partial, _gdal_errors():
        target = driver.CreateDataSource(str(partial))
        if target is None:
            raise MaskExportError(tr("Could not create {0}: {1}").format(output.name, gdal.GetLastErrorMsg()))
        copied = target.CopyLayer(polygons.layer, layer_name or output.stem)
        _raise_if_canceled(feedback)
        target = None  # closes and flushes the file
        if copied is None or gdal.GetLastErrorType() >= gdal.CE_Failure:
            raise MaskExportError(tr("Writing {0} failed: {1}").format(output.name, gdal.GetLastErrorMsg()))
    feedback.setProgress(100.0)
    log.info("%d polygons written to %s", polygons.layer.GetFeatureCount(), output)
    return output


def _vector_driver(output: Path) -> ogr.Driver:
    name = QgsVectorFileWriter.driverForExtension(output.suffix.lstrip("."))
    driver = ogr.GetDriverByName(name) if name else None
    if driver is None or not driver.TestCapability(ogr.ODrCCreateDataSource):
        raise MaskExportError(tr("No vector format writes “{0}” files.").format(output.suffix))
    return driver


def _nonzero_mask(band: gdal.Band, use_nodata: bool, feedback: QgsFeedback) -> gdal.Dataset:
    """A Byte MEM raster, 1 where a pixel is neither 0 nor (with ``use_nodata``) nodata; read in strips."""
    mask = gdal.GetDriverByName("MEM").Create("", band.XSize, band.YSize, 1, gdal.GDT_Byte)
    rows = max(1, (1 << 22) // band.XSize)
    for top in range(0, band.YSize, rows):
        _raise_if_canceled(feedback)
        height = min(rows, band.YSize - top)
        valid = band.ReadAsArray(0, top, band.XSize, height) != 0
        if use_nodata:
            valid &= band.GetMaskBand().ReadAsArray(0, top, band.XSize, height) != 0
        mask.GetRasterBand(1).WriteArray(valid.astype("uint8"), 0, top)
    return mask


# --- shared helpers ------------------------------------------------------------------------------
@contextmanager
def atomic_output(target: Path, overwrite: bool) -> Iterator[Path]:
    """Yields a path in a hidden folder beside ``target``; on success its files are renamed into place.

    The folder and whatever was written in it are removed in every case, so an error or a cancel
    leaves neither the target nor a temporary file. The name inside the folder is the target's,
    so drivers see the right extension and write their side files (a shapefile's .dbf...) too.
    """
    _check_output(target, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        yield staging / target.name
        _check_output(target, overwrite)  # it may have appeared while we were writing
        for written in sorted(staging.iterdir()):
            os.replace(written, target.parent / written.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_output(target: Path, overwrite: bool) -> None:
    if not target.parent.is_dir():
        raise MaskExportError(tr("The folder {0} does not exist.").format(target.parent))
    if target.exists() and not overwrite:
        raise OutputExistsError(tr("{0} already exists: choose another name or allow replacing it.").format(target))


def _open_raster(raster: QgsRasterLayer | str | os.PathLike) -> gdal.Dataset:
    if isinstance(raster, QgsRasterLayer):
        if raster.providerType() != "gdal":
            raise MaskExportError(tr("“{0}” is not a raster file GDAL can read.").format(raster.name()))
        raster = raster.source()
    with _gdal_errors():
        dataset = gdal.Open(str(raster))
    if dataset is None or dataset.RasterCount < 1:
        raise MaskExportError(tr("{0} is not a raster.").format(raster))
    return dataset


def _raster_crs(raster: QgsRasterLayer | str | os.PathLike, dataset: gdal.Dataset) -> QgsCoordinateReferenceSystem:
    """A layer's CRS as QGIS sees it (the user may have set it), else the file's."""
    if isinstance(raster, QgsRasterLayer):
        return raster.crs()
    return QgsCoordinateReferenceSystem.fromWkt(dataset.GetProjection())


@contextmanager
def _gdal_errors() -> Iterator[None]:
    """GDAL errors kept quiet (read back with ``gdal.GetLastErrorMsg``), without touching global exception state."""
    gdal.ErrorReset()
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        yield
    finally:
        gdal.PopErrorHandler()


def _gdal_callback(feedback: QgsFeedback, progress: Progress) -> Callable[[float, str, object], int]:
    def callback(complete: float, _message: str, _data: object) -> int:
        _set_progress(feedback, progress, complete)
        return 0 if feedback.isCanceled() else 1

    return callback


def _set_progress(feedback: QgsFeedback, progress: Progress, fraction: float) -> None:
    start, end = progress
    feedback.setProgress(start + (end - start) * min(max(fraction, 0.0), 1.0))


def _raise_if_canceled(feedback: QgsFeedback) -> None:
    if feedback.isCanceled():
        raise ExportCanceledError(tr("Canceled: nothing was written."))


def _warn(feedback: QgsFeedback, message: str) -> None:
    log.warning(message)
    if isinstance(feedback, QgsProcessingFeedback):  # shown in the algorithm's log
        feedback.pushWarning(message)
