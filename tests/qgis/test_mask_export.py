"""Layer-to-mask export and its reverse, in a real headless QGIS.

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/qgis/test_mask_export.py -q

The reference raster is EPSG:32633 with 10 m pixels, 37 x 23, at a non-zero origin; the polygons
are in EPSG:4326 and, once reprojected, cover known blocks of the reference's pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr, osr
from qgis import processing
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsGeometry,
    QgsProcessingException,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsReferencedRectangle,
    QgsVectorLayer,
    edit,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import QDialogButtonBox

from rs_assistant.processing.mask_export import (
    Compression,
    ExportCanceledError,
    GridSpec,
    MaskExportError,
    MaskOptions,
    OutputExistsError,
    PolygonizeOptions,
    atomic_output,
    fitting_data_type,
    layer_to_mask,
    mask_to_polygons,
    polygon_source,
)
from rs_assistant.processing.provider import RSAssistantProvider

UTM = QgsCoordinateReferenceSystem("EPSG:32633")
WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")
X0, Y0, PIXEL, WIDTH, HEIGHT = 412_345.0, 5_456_780.0, 10.0, 37, 23
GEOTRANSFORM = (X0, PIXEL, 0.0, Y0, 0.0, -PIXEL)
# class id -> (first column, first row, columns, rows) of the block its polygon covers exactly
BLOCKS = {1: (5, 3, 5, 4), 2: (20, 10, 5, 5), 7: (30, 18, 7, 5)}  # 7 touches the right and bottom edges


def block_rect(col: int, row: int, cols: int, rows: int) -> QgsRectangle:
    return QgsRectangle(X0 + col * PIXEL, Y0 - (row + rows) * PIXEL, X0 + (col + cols) * PIXEL, Y0 - row * PIXEL)


def expected(classes: dict[int, tuple[int, int, int, int]], background: int = 0, burn: int | None = None) -> np.ndarray:
    array = np.full((HEIGHT, WIDTH), background, dtype=np.int64)
    for value, (col, row, cols, rows) in classes.items():
        array[row : row + rows, col : col + cols] = value if burn is None else burn
    return array


def read(path: Path) -> tuple[gdal.Dataset, np.ndarray]:
    dataset = gdal.Open(str(path))
    return dataset, dataset.GetRasterBand(1).ReadAsArray()


def assert_reference_grid(dataset: gdal.Dataset) -> None:
    assert (dataset.RasterXSize, dataset.RasterYSize) == (WIDTH, HEIGHT)
    assert dataset.GetGeoTransform() == pytest.approx(GEOTRANSFORM, abs=0)
    reference = osr.SpatialReference()
    reference.ImportFromEPSG(32633)
    assert dataset.GetSpatialRef().IsSame(reference)


class CancelAt(QgsProcessingFeedback):
    """Cancels once progress reaches ``percent``: a failure in the middle of writing."""

    def __init__(self, percent: float):
        super().__init__()
        self.percent = percent
        self.progressChanged.connect(self._check)

    def _check(self, value: float) -> None:
        if value >= self.percent:
            self.cancel()


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def provider(qgis_processing):
    registry = QgsApplication.processingRegistry()
    provider = RSAssistantProvider()
    assert registry.addProvider(provider)
    yield provider
    registry.removeProvider(provider)


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    return folder


@pytest.fixture
def out(tmp_path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


@pytest.fixture
def reference_tif(inputs) -> Path:
    path = inputs / "reference.tif"
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), WIDTH, HEIGHT, 3, gdal.GDT_UInt16)
    dataset.SetGeoTransform(GEOTRANSFORM)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    dataset.SetProjection(srs.ExportToWkt())
    for band in range(1, 4):
        dataset.GetRasterBand(band).WriteArray(np.arange(WIDTH * HEIGHT, dtype=np.uint16).reshape(HEIGHT, WIDTH) * band)
    dataset = None
    return path


@pytest.fixture
def reference(qgis_new_project, reference_tif) -> QgsRasterLayer:
    layer = QgsRasterLayer(str(reference_tif), "reference")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    return layer


def memory_layer(uri: str, name: str) -> QgsVectorLayer:
    layer = QgsVectorLayer(uri, name, "memory")
    assert layer.isValid()
    return layer


@pytest.fixture
def polygons(qgis_new_project) -> QgsVectorLayer:
    """Three class polygons in EPSG:4326, and one far outside the grid."""
    layer = memory_layer("Polygon?crs=EPSG:4326&field=class:integer&field=ratio:double", "classes")
    to_wgs84 = QgsCoordinateTransform(UTM, WGS84, QgsProject.instance())
    features = []
    for value, block in [*BLOCKS.items(), (9, (500, 500, 3, 3))]:
        geometry = QgsGeometry.fromRect(block_rect(*block))
        geometry.transform(to_wgs84)
        feature = QgsFeature(layer.fields())
        feature.setGeometry(geometry)
        feature.setAttributes([value, value / 10])
        features.append(feature)
    assert layer.dataProvider().addFeatures(features)[0]
    layer.updateExtents()
    QgsProject.instance().addMapLayer(layer)
    return layer


def select_classes(layer: QgsVectorLayer, classes: set[int]) -> None:
    layer.selectByIds([f.id() for f in layer.getFeatures() if f["class"] in classes])


def run_mask(parameters: dict, feedback: QgsProcessingFeedback | None = None) -> dict:
    return processing.run("rs_assistant:layertomask", parameters, feedback=feedback)


# --- layer to mask: the grid and the burned pixels -----------------------------------------------
def test_processing_mask_matches_the_reference_grid_pixel_for_pixel(provider, polygons, reference, out):
    result = run_mask({"INPUT": polygons, "REFERENCE": reference, "OUTPUT": str(out / "mask.tif")})

    dataset, array = read(Path(result["OUTPUT"]))
    assert_reference_grid(dataset)
    assert dataset.GetRasterBand(1).DataType == gdal.GDT_Byte
    assert dataset.GetRasterBand(1).GetNoDataValue() is None
    assert dataset.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "DEFLATE"
    np.testing.assert_array_equal(array, expected(BLOCKS, burn=1))


def test_core_burns_class_ids_with_nodata_background_and_compression(polygons, reference_tif, out):
    options = MaskOptions(burn_field="class", nodata=255, compression=Compression.LZW)

    path = layer_to_mask(polygons, GridSpec.from_raster(reference_tif), out / "classes.tif", options)

    dataset, array = read(path)
    assert_reference_grid(dataset)
    band = dataset.GetRasterBand(1)
    assert (band.DataType, band.GetNoDataValue()) == (gdal.GDT_Byte, 255)
    assert dataset.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "LZW"
    np.testing.assert_array_equal(array, expected(BLOCKS, background=255))


def test_processing_burns_class_ids_and_the_grid_of_a_reference_path(provider, polygons, reference_tif, out):
    result = run_mask(
        {
            "INPUT": polygons,
            "BURN_FIELD": "class",
            "REFERENCE": str(reference_tif),
            "COMPRESSION": 2,
            "OUTPUT": str(out / "classes.tif"),
        }
    )

    dataset, array = read(Path(result["OUTPUT"]))
    assert_reference_grid(dataset)
    assert "COMPRESSION" not in dataset.GetMetadata("IMAGE_STRUCTURE")
    np.testing.assert_array_equal(array, expected(BLOCKS))


def test_selected_features_only(provider, polygons, reference, out):
    select_classes(polygons, {2})
    grid = GridSpec.from_raster(reference)

    core = layer_to_mask(polygon_source(polygons, selected_only=True), grid, out / "core.tif", MaskOptions("class"))
    algorithm = run_mask(
        {
            "INPUT": QgsProcessingFeatureSourceDefinition(polygons.id(), True),
            "BURN_FIELD": "class",
            "REFERENCE": reference,
            "OUTPUT": str(out / "alg.tif"),
        }
    )

    only_two = expected({2: BLOCKS[2]})
    np.testing.assert_array_equal(read(core)[1], only_two)
    np.testing.assert_array_equal(read(Path(algorithm["OUTPUT"]))[1], only_two)


def test_all_touched_burns_partly_covered_pixels(polygons, reference_tif, out):
    layer = memory_layer("Polygon?crs=EPSG:32633", "inner")
    feature = QgsFeature()
    inner = block_rect(5, 3, 5, 4)  # shrunk by 6 m: the centres of its outer ring of pixels fall outside
    feature.setGeometry(
        QgsGeometry.fromRect(
            QgsRectangle(inner.xMinimum() + 6, inner.yMinimum() + 6, inner.xMaximum() - 6, inner.yMaximum() - 6)
        )
    )
    layer.dataProvider().addFeatures([feature])
    grid = GridSpec.from_raster(reference_tif)

    centres = read(layer_to_mask(layer, grid, out / "centres.tif"))[1]
    touched = read(layer_to_mask(layer, grid, out / "touched.tif", MaskOptions(all_touched=True)))[1]

    np.testing.assert_array_equal(centres, expected({1: (6, 4, 3, 2)}))
    np.testing.assert_array_equal(touched, expected({1: BLOCKS[1]}))


def test_processing_extent_resolution_and_crs_make_the_grid(provider, polygons, out):
    extent = block_rect(0, 0, WIDTH, HEIGHT)  # the reference's extent, at twice the pixel size
    result = run_mask(
        {
            "INPUT": polygons,
            "EXTENT": QgsReferencedRectangle(extent, UTM),
            "RESOLUTION": 20.0,
            "TARGET_CRS": UTM,
            "OUTPUT": str(out / "coarse.tif"),
        }
    )

    dataset, array = read(Path(result["OUTPUT"]))
    assert (dataset.RasterXSize, dataset.RasterYSize) == (19, 12)  # 370 m / 20 and 230 m / 20, rounded up
    assert dataset.GetGeoTransform() == pytest.approx((X0, 20.0, 0.0, Y0, 0.0, -20.0), abs=0)
    assert QgsCoordinateReferenceSystem.fromWkt(dataset.GetProjection()) == UTM
    assert array[6, 11] == 1 and array[0, 0] == 0  # inside class 2's block; the corner stays background


def test_grid_from_extent_rounds_partial_pixels_up():
    grid = GridSpec.from_extent(QgsRectangle(0, 0, 95, 40), 10.0, UTM)
    assert (grid.width, grid.height, grid.geotransform) == (10, 4, (0.0, 10.0, 0.0, 40.0, 0.0, -10.0))


@pytest.mark.parametrize(
    ("values", "data_type"),
    [
        ({0, 1}, gdal.GDT_Byte),
        ({0, 255}, gdal.GDT_Byte),
        ({0, 300}, gdal.GDT_UInt16),
        ({-1, 5}, gdal.GDT_Int16),
        ({0, 70_000}, gdal.GDT_UInt32),
        ({-1, 70_000}, gdal.GDT_Int32),
    ],
)
def test_the_data_type_is_the_smallest_that_fits(values, data_type):
    assert fitting_data_type(values) == data_type


def test_class_ids_above_255_get_a_wider_type(polygons, reference_tif, out):
    with edit(polygons):
        for feature in polygons.getFeatures():
            polygons.changeAttributeValue(feature.id(), 0, feature["class"] * 100)

    path = layer_to_mask(polygons, GridSpec.from_raster(reference_tif), out / "wide.tif", MaskOptions("class"))

    dataset, array = read(path)
    assert dataset.GetRasterBand(1).DataType == gdal.GDT_UInt16
    np.testing.assert_array_equal(array, expected({v * 100: b for v, b in BLOCKS.items()}))


# --- atomic writes and overwriting ---------------------------------------------------------------
@pytest.mark.parametrize("percent", [10.0, 60.0])  # while reading the polygons; while burning
def test_a_cancel_mid_way_leaves_neither_the_file_nor_a_temporary(polygons, reference_tif, out, percent):
    with pytest.raises(ExportCanceledError):
        layer_to_mask(polygons, GridSpec.from_raster(reference_tif), out / "mask.tif", feedback=CancelAt(percent))
    assert list(out.iterdir()) == []


def test_a_canceled_algorithm_leaves_nothing(provider, polygons, reference, out):
    with pytest.raises(QgsProcessingException, match="Canceled"):
        run_mask({"INPUT": polygons, "REFERENCE": reference, "OUTPUT": str(out / "mask.tif")}, CancelAt(50.0))
    assert list(out.iterdir()) == []


def test_a_failure_while_writing_leaves_nothing(out):
    with pytest.raises(OSError, match="disk full"), atomic_output(out / "mask.tif", overwrite=False) as partial:
        partial.write_bytes(b"half a file")
        raise OSError("disk full")
    assert list(out.iterdir()) == []


def test_an_existing_file_is_replaced_only_when_allowed(polygons, reference_tif, out):
    target = out / "mask.tif"
    target.write_bytes(b"keep me")
    grid = GridSpec.from_raster(reference_tif)

    with pytest.raises(OutputExistsError, match="already exists"):
        layer_to_mask(polygons, grid, target)
    assert target.read_bytes() == b"keep me"
    with pytest.raises(OutputExistsError):
        mask_to_polygons(reference_tif, target)
    assert target.read_bytes() == b"keep me"

    layer_to_mask(polygons, grid, target, overwrite=True)
    np.testing.assert_array_equal(read(target)[1], expected(BLOCKS, burn=1))
    assert [p.name for p in out.iterdir()] == ["mask.tif"]


# --- mask to polygons ----------------------------------------------------------------------------
def polygon_areas(path: Path, field: str = "value") -> dict[int, list[float]]:
    layer = QgsVectorLayer(str(path), "polygons", "ogr")
    assert layer.isValid()
    areas: dict[int, list[float]] = {}
    for feature in layer.getFeatures():
        areas.setdefault(feature[field], []).append(round(feature.geometry().area(), 6))
    return {value: sorted(found) for value, found in areas.items()}


BLOCK_AREAS = {value: [cols * rows * PIXEL * PIXEL] for value, (_, _, cols, rows) in BLOCKS.items()}


def test_round_trip_layer_to_mask_to_polygons_with_the_core(polygons, reference_tif, out):
    mask = layer_to_mask(polygons, GridSpec.from_raster(reference_tif), out / "classes.tif", MaskOptions("class"))

    gpkg = mask_to_polygons(mask, out / "classes.gpkg")

    assert polygon_areas(gpkg) == BLOCK_AREAS
    layer = QgsVectorLayer(str(gpkg), "polygons", "ogr")
    assert layer.crs() == UTM
    assert sorted(p.name for p in out.iterdir()) == ["classes.gpkg", "classes.tif"]


def test_round_trip_through_processing_to_geopackage_and_shapefile(provider, polygons, reference, out):
    mask = run_mask(
        {
            "INPUT": polygons,
            "BURN_FIELD": "class",
            "NODATA": 200,
            "REFERENCE": reference,
            "OUTPUT": str(out / "classes.tif"),
        }
    )["OUTPUT"]
    for name in ("classes.gpkg", "classes.shp"):
        result = processing.run(
            "rs_assistant:masktopolygons",
            {"INPUT": mask, "FIELD_NAME": "class_id", "ZERO_BACKGROUND": False, "OUTPUT": str(out / name)},
        )
        assert polygon_areas(Path(result["OUTPUT"]), "class_id") == BLOCK_AREAS  # nodata 200 left out


def test_zero_and_nodata_as_background_are_options(inputs, out):
    mask = inputs / "mask.tif"
    array = np.zeros((4, 6), dtype=np.uint8)
    array[0, :] = 9  # nodata row
    array[2:4, 0:2] = 1
    dataset = gdal.GetDriverByName("GTiff").Create(str(mask), 6, 4, 1, gdal.GDT_Byte)
    dataset.SetGeoTransform((0, 1, 0, 4, 0, -1))
    dataset.SetProjection(UTM.toWkt())
    dataset.GetRasterBand(1).SetNoDataValue(9)
    dataset.GetRasterBand(1).WriteArray(array)
    dataset = None

    both = mask_to_polygons(mask, out / "both.gpkg")
    keep_zero = mask_to_polygons(mask, out / "zero.gpkg", PolygonizeOptions(zero_as_background=False))
    everything = mask_to_polygons(
        mask, out / "all.gpkg", PolygonizeOptions(nodata_as_background=False, zero_as_background=False)
    )

    assert polygon_areas(both) == {1: [4.0]}
    assert polygon_areas(keep_zero) == {0: [14.0], 1: [4.0]}
    assert polygon_areas(everything) == {0: [14.0], 1: [4.0], 9: [6.0]}


def test_eight_connectivity_joins_diagonal_pixels(inputs, out):
    mask = inputs / "diagonal.tif"
    dataset = gdal.GetDriverByName("GTiff").Create(str(mask), 3, 3, 1, gdal.GDT_Byte)
    dataset.SetGeoTransform((0, 1, 0, 3, 0, -1))
    dataset.SetProjection(UTM.toWkt())
    dataset.GetRasterBand(1).WriteArray(np.eye(3, dtype=np.uint8))
    dataset = None

    four = mask_to_polygons(mask, out / "four.gpkg")
    eight = mask_to_polygons(mask, out / "eight.gpkg", PolygonizeOptions(eight_connected=True))

    assert polygon_areas(four) == {1: [1.0, 1.0, 1.0]}
    assert polygon_areas(eight) == {1: [3.0]}


def test_a_canceled_polygonize_leaves_nothing(polygons, reference_tif, out):
    mask = layer_to_mask(polygons, GridSpec.from_raster(reference_tif), out / "mask.tif")
    with pytest.raises(ExportCanceledError):
        mask_to_polygons(mask, out / "polygons.gpkg", feedback=CancelAt(0.0))
    assert [p.name for p in out.iterdir()] == ["mask.tif"]


# --- bad input: a clear message and nothing written ----------------------------------------------
def test_core_bad_inputs(polygons, reference_tif, inputs, out):
    grid = GridSpec.from_raster(reference_tif)
    points = memory_layer("Point?crs=EPSG:4326", "points")
    cases = [
        (lambda: layer_to_mask(points, grid, out / "m.tif"), "not a polygon layer"),
        (lambda: polygon_source(polygons, selected_only=True), "no selected features"),
        (lambda: GridSpec.from_raster(inputs), "is not a raster"),
        (lambda: layer_to_mask(polygons, grid, out / "m.tif", MaskOptions("ratio")), "does not hold integers"),
        (lambda: layer_to_mask(polygons, grid, out / "m.tif", MaskOptions("missing")), "has no field"),
        (lambda: layer_to_mask(polygons, grid, out / "m.tif", MaskOptions("class", nodata=2)), "also a burn value"),
        (lambda: GridSpec.from_extent(QgsRectangle(0, 0, 0, 10), 10.0, UTM), "no area"),
        (lambda: GridSpec.from_extent(QgsRectangle(0, 0, 10, 10), 0.0, UTM), "greater than zero"),
        (lambda: GridSpec.from_extent(QgsRectangle(0, 0, 10, 10), -5.0, UTM), "greater than zero"),
        (lambda: GridSpec.from_extent(QgsRectangle(0, 0, 1e6, 1e6), 0.001, UTM), "coarser resolution"),
        (lambda: layer_to_mask(polygons, grid, out / "missing" / "m.tif"), "does not exist"),
        (lambda: mask_to_polygons(reference_tif, out / "p.unknown"), "No vector format"),
    ]
    for call, message in cases:
        with pytest.raises(MaskExportError, match=message):
            call()
    assert list(out.iterdir()) == []


def test_an_empty_layer_gives_a_clear_error(reference_tif, out):
    empty = memory_layer("Polygon?crs=EPSG:4326", "empty")
    with pytest.raises(MaskExportError, match="no features to burn"):
        layer_to_mask(empty, GridSpec.from_raster(reference_tif), out / "m.tif")
    assert list(out.iterdir()) == []


def test_a_float_raster_is_not_a_mask(inputs, out):
    path = inputs / "float.tif"
    gdal.GetDriverByName("GTiff").Create(str(path), 2, 2, 1, gdal.GDT_Float32)
    with pytest.raises(MaskExportError, match="must hold integers"):
        mask_to_polygons(path, out / "p.gpkg")
    assert list(out.iterdir()) == []


@pytest.fixture
def not_a_raster(inputs) -> Path:
    path = inputs / "notes.gpkg"
    datasource = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    datasource.CreateLayer("notes", geom_type=ogr.wkbPoint)
    datasource = None
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("points", "not a polygon layer|Incorrect parameter value"),
        ("empty selection", "no selected features"),
        ("reference not a raster", "not a raster|Could not load source layer for REFERENCE"),
        ("attribute not integer", "does not hold integers"),
        ("zero-area extent", "no area"),
        ("resolution zero", "greater than zero"),
        ("resolution negative", "greater than zero"),
        ("no grid", "reference raster, or an extent"),
        ("both grids", "not both"),
    ],
)
def test_algorithm_bad_inputs(provider, polygons, reference, not_a_raster, out, case, message):
    extent = QgsReferencedRectangle(block_rect(0, 0, 10, 10), UTM)
    parameters = {"INPUT": polygons, "REFERENCE": reference, "OUTPUT": str(out / "mask.tif")}
    if case == "points":
        points = memory_layer("Point?crs=EPSG:4326&field=class:integer", "points")
        QgsProject.instance().addMapLayer(points)
        parameters["INPUT"] = points
    elif case == "empty selection":
        polygons.removeSelection()
        parameters["INPUT"] = QgsProcessingFeatureSourceDefinition(polygons.id(), True)
    elif case == "reference not a raster":
        parameters["REFERENCE"] = str(not_a_raster)
    elif case == "attribute not integer":
        parameters["BURN_FIELD"] = "ratio"
    elif case == "both grids":
        parameters["EXTENT"] = extent
    else:
        del parameters["REFERENCE"]
        if case != "no grid":
            flat = "412345,412345,5456000,5456700 [EPSG:32633]"  # xmin == xmax
            parameters["EXTENT"] = flat if case == "zero-area extent" else extent
            parameters["RESOLUTION"] = {"resolution zero": 0.0, "resolution negative": -5.0}.get(case, 10.0)

    with pytest.raises(QgsProcessingException, match=message):
        run_mask(parameters)
    assert list(out.iterdir()) == []


def test_mask_to_polygons_algorithm_rejects_a_float_raster(provider, inputs, out):
    path = inputs / "float.tif"
    dataset = gdal.GetDriverByName("GTiff").Create(str(path), 2, 2, 1, gdal.GDT_Float32)
    dataset.SetGeoTransform((0, 1, 0, 2, 0, -1))
    dataset = None
    with pytest.raises(QgsProcessingException, match="must hold integers"):
        processing.run("rs_assistant:masktopolygons", {"INPUT": str(path), "OUTPUT": str(out / "p.gpkg")})
    assert list(out.iterdir()) == []


# --- the dialog ----------------------------------------------------------------------------------
class MessageBarRecorder:
    """Stands in for QGIS's message bar: keeps what the dialog pushes."""

    def __init__(self):
        self.messages: list[tuple[str, str, object]] = []

    def pushMessage(self, title, text, level, duration):  # noqa: N802 (QGIS's name)
        self.messages.append((title, text, level))


@pytest.fixture
def dialog(qtbot, qgis_iface, qgis_new_project):
    from rs_assistant.ui.mask_export_dialog import MaskExportDialog

    asked: list[Path] = []
    bar = MessageBarRecorder()
    widget = MaskExportDialog(
        qgis_iface.mainWindow(),
        qgis_iface.mapCanvas(),
        confirm_overwrite=lambda path: asked.append(path) or widget.answer,
        message_bar=bar,
    )
    widget.answer = True
    widget.asked = asked
    widget.bar = bar
    qtbot.addWidget(widget)
    widget.show()
    qtbot.waitExposed(widget)
    return widget


def click_ok_and_wait(qtbot, dialog) -> list:
    with qtbot.waitSignal(dialog.exportFinished, timeout=60_000) as blocker:
        qtbot.mouseClick(dialog.buttonBox.button(QDialogButtonBox.StandardButton.Ok), Qt.MouseButton.LeftButton)
    return blocker.args


def test_dialog_exports_a_class_mask_on_the_reference_grid(qtbot, dialog, polygons, reference, out):
    target = out / "dialog.tif"
    dialog.inputLayerCombo.setLayer(polygons)
    dialog.burnFieldCheck.setChecked(True)
    dialog.burnFieldCombo.setField("class")
    dialog.referenceRadio.setChecked(True)
    dialog.referenceLayerCombo.setLayer(reference)
    dialog.nodataCheck.setChecked(True)
    dialog.nodataSpin.setValue(255)
    dialog.compressionCombo.setCurrentText("LZW")
    dialog.maskFileWidget.setFilePath(str(target))

    assert click_ok_and_wait(qtbot, dialog) == [True, str(target)]

    dataset, array = read(target)
    assert_reference_grid(dataset)
    assert dataset.GetMetadata("IMAGE_STRUCTURE")["COMPRESSION"] == "LZW"
    np.testing.assert_array_equal(array, expected(BLOCKS, background=255))
    assert dialog.asked == []
    assert [layer.source() for layer in QgsProject.instance().mapLayersByName("dialog")] == [str(target)]
    # done: the dialog has closed and QGIS's message bar says what was written
    assert not dialog.isVisible() and not dialog.progressBar.isVisible()
    assert [(title, str(target) in text, level) for title, text, level in dialog.bar.messages] == [
        ("Export done", True, Qgis.MessageLevel.Success)
    ]


def test_dialog_before_a_run_shows_no_progress_a_readable_extent_and_a_pixel_size_with_its_unit(
    qtbot, dialog, qgis_iface, polygons, reference
):
    from qgis.PyQt.QtWidgets import QLineEdit

    assert not dialog.progressBar.isVisible()  # no "0%" before anything runs
    dialog.extentRadio.setChecked(True)
    dialog.crsWidget.setCrs(UTM)
    assert dialog.resolutionSpin.text() == "10.00 m"
    dialog.crsWidget.setCrs(WGS84)
    assert dialog.resolutionSpin.text() == "0.000100 °"  # about 10 m, not 10 degrees
    dialog.crsWidget.setCrs(UTM)
    assert dialog.resolutionSpin.text() == "10.00 m"

    dialog.extentWidget.setOutputExtentFromUser(block_rect(0, 0, 37, 23), UTM)
    assert not dialog.extentWidget.outputExtent().isEmpty()
    edits = [e for e in dialog.extentWidget.findChildren(QLineEdit) if e.isVisible()]
    assert len(edits) == 4  # north, south, east, west
    for edit in edits:  # noqa: F402
        assert edit.width() >= edit.fontMetrics().horizontalAdvance(edit.text()), (
            f"the extent is clipped: {edit.text()}"
        )


def test_a_mask_added_to_the_project_draws_zero_transparent(qtbot, dialog, polygons, reference, out):
    from qgis.core import QgsPalettedRasterRenderer

    target = out / "zeros_and_ones.tif"
    dialog.inputLayerCombo.setLayer(polygons)
    dialog.referenceLayerCombo.setLayer(reference)
    dialog.maskFileWidget.setFilePath(str(target))
    assert click_ok_and_wait(qtbot, dialog) == [True, str(target)]

    mask = QgsProject.instance().mapLayersByName("zeros_and_ones")[0]
    renderer = mask.renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)  # not a grey stretch that paints 0 black
    assert [int(c.value) for c in renderer.classes()] == [1]
    image = render(mask)
    col, row = 25, 15  # a 0 pixel, outside every block
    assert QColor.fromRgba(image.pixel(col, row)).alpha() == 0
    col, row = BLOCKS[1][0] + 1, BLOCKS[1][1] + 1
    assert QColor.fromRgba(image.pixel(col, row)).alpha() > 0


def test_processing_styles_the_mask_it_adds_to_the_project(provider, polygons, reference, out):
    from qgis.core import QgsPalettedRasterRenderer

    target = out / "classes.tif"
    processing.runAndLoadResults(
        "rs_assistant:layertomask",
        {"INPUT": polygons, "REFERENCE": reference, "BURN_FIELD": "class", "OUTPUT": str(target)},
    )
    loaded = [layer for layer in QgsProject.instance().mapLayers().values() if layer.source() == str(target)]
    assert len(loaded) == 1
    renderer = loaded[0].renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    assert [int(c.value) for c in renderer.classes()] == sorted(BLOCKS)


def render(layer: QgsRasterLayer):
    """The layer drawn at one screen pixel per raster pixel, as a QImage."""
    from qgis.core import QgsMapRendererSequentialJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize

    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(layer.extent())
    settings.setOutputSize(QSize(layer.width(), layer.height()))
    settings.setBackgroundColor(QColor(0, 0, 0, 0))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def test_dialog_asks_before_replacing_and_keeps_the_file_when_told_no(qtbot, dialog, polygons, reference, out):
    target = out / "mask.tif"
    target.write_bytes(b"keep me")
    dialog.inputLayerCombo.setLayer(polygons)
    dialog.referenceLayerCombo.setLayer(reference)
    dialog.maskFileWidget.setFilePath(str(target))
    dialog.answer = False

    qtbot.mouseClick(dialog.buttonBox.button(QDialogButtonBox.StandardButton.Ok), Qt.MouseButton.LeftButton)

    assert dialog.asked == [target] and not dialog.is_running()
    assert target.read_bytes() == b"keep me"
    assert "already exists" in dialog.messageLabel.text()


def test_dialog_shows_bad_input_in_place_and_writes_nothing(qtbot, dialog, polygons, reference, out):
    dialog.inputLayerCombo.setLayer(polygons)
    dialog.referenceLayerCombo.setLayer(reference)
    dialog.maskFileWidget.setFilePath("")
    dialog.start_export()
    assert dialog.messageLabel.text() == "Choose where to write the mask."

    polygons.removeSelection()
    dialog.selectedOnlyCheck.setChecked(True)
    dialog.maskFileWidget.setFilePath(str(out / "mask.tif"))
    assert click_ok_and_wait(qtbot, dialog)[0] is False
    assert "no selected features" in dialog.messageLabel.text()

    dialog.selectedOnlyCheck.setChecked(False)
    dialog.extentRadio.setChecked(True)
    dialog.extentWidget.setOutputExtentFromUser(block_rect(0, 0, 5, 5), UTM)
    dialog.crsWidget.setCrs(UTM)
    dialog.resolutionSpin.setValue(0.0)
    assert click_ok_and_wait(qtbot, dialog)[0] is False
    assert "greater than zero" in dialog.messageLabel.text()
    assert list(out.iterdir()) == []


def test_dialog_turns_a_mask_into_polygons(qtbot, dialog, polygons, reference_tif, out):
    mask = layer_to_mask(polygons, GridSpec.from_raster(reference_tif), out / "classes.tif", MaskOptions("class"))
    mask_layer = QgsRasterLayer(str(mask), "classes")
    QgsProject.instance().addMapLayer(mask_layer)
    dialog.tabs.setCurrentWidget(dialog.maskToPolygonsTab)
    dialog.maskLayerCombo.setLayer(mask_layer)
    dialog.eightConnectedCheck.setChecked(True)
    dialog.polygonsFileWidget.setFilePath(str(out / "classes"))  # no extension: a GeoPackage

    assert click_ok_and_wait(qtbot, dialog) == [True, str(out / "classes.gpkg")]
    assert polygon_areas(out / "classes.gpkg") == BLOCK_AREAS
