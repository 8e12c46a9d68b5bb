"""Pixels to map geometry: boxes, masks and points checked against coordinates computed by hand with pyproj."""

from __future__ import annotations

import json

import numpy as np
import pyproj
import pytest
import shapely
from affine import Affine
from shapely.geometry import MultiPolygon, Point, Polygon, shape

from rs_assistant.core.protocol import ErrorCode, FeatureKind, ProtocolError
from rs_assistant.engine import geo
from rs_assistant.engine.backends.base import Detection
from rs_assistant.engine.crs import parse_crs
from rs_assistant.engine.geo import detections_to_features, polygonize_mask
from rs_assistant.engine.imagery import Window
from tests.engine import rasters

# A 64 x 64 window on the UTM 33N grid: pixel (col, row) -> (500000 + 10 col, 4650000 - 10 row).
UTM_WINDOW = Window(array=np.zeros((64, 64, 3), np.uint8), transform=rasters.utm_transform(), crs=rasters.UTM)


def utm(col: float, row: float) -> tuple[float, float]:
    """The hand-computed UTM coordinates of a pixel corner of UTM_WINDOW."""
    return (500_000.0 + 10.0 * col, 4_650_000.0 - 10.0 * row)


def to(crs: str, x: float, y: float) -> tuple[float, float]:
    """UTM -> ``crs`` with a transformer of the test's own."""
    return pyproj.Transformer.from_crs(rasters.UTM, crs, always_xy=True).transform(x, y)


def only_geometry(features: list[dict]) -> Polygon | MultiPolygon | Point:
    assert len(features) == 1
    return shape(features[0]["geometry"])


def assert_vertices_include(geom: Polygon, points: list[tuple[float, float]], tol: float) -> None:
    vertices = shapely.get_coordinates(geom)
    for point in points:
        assert np.hypot(*(vertices - point).T).min() < tol, f"{point} is not a vertex of {geom.wkt[:200]}"


def box_detection(box, **kwargs) -> Detection:
    return Detection(kind=FeatureKind.BOX, label="tank", score=0.9, box=box, **kwargs)


def mask_with_hole() -> np.ndarray:
    """Rows 10-29 x cols 20-49 set, a 5 x 5 hole at rows 15-19 x cols 30-34, a 1-pixel hole and a 1-pixel speck."""
    mask = np.zeros((64, 64), bool)
    mask[10:30, 20:50] = True
    mask[15:20, 30:35] = False
    mask[25, 45] = False  # too small a hole: filled
    mask[5, 55] = True  # too small a part: dropped
    return mask


# --- CRS parsing -------------------------------------------------------------------------------


def test_parse_crs_accepts_codes_and_caches():
    assert parse_crs("EPSG:3857").to_epsg() == 3857
    assert parse_crs("EPSG:3857") is parse_crs("EPSG:3857")
    assert parse_crs("+proj=utm +zone=33 +datum=WGS84").is_projected


@pytest.mark.parametrize("bad", ["EPSG:999999", "not a crs", "", None])
def test_parse_crs_rejects_unknown(bad):
    with pytest.raises(ProtocolError) as info:
        parse_crs(bad)
    assert info.value.code is ErrorCode.BAD_CRS and repr(bad) in info.value.message


# --- boxes -------------------------------------------------------------------------------------


def test_box_in_the_window_crs_is_the_hand_computed_rectangle():
    geom = only_geometry(detections_to_features([box_detection((10, 20, 30, 50))], UTM_WINDOW, rasters.UTM))
    expected = Polygon([utm(10, 20), utm(30, 20), utm(30, 50), utm(10, 50)])
    assert geom.equals(expected) and len(geom.exterior.coords) == 5


@pytest.mark.parametrize("crs, tol", [(rasters.WGS84, 1e-9), (rasters.MERCATOR, 1e-4)])
def test_box_reprojected_has_the_hand_computed_corners(crs, tol):
    geom = only_geometry(detections_to_features([box_detection((10, 20, 30, 50))], UTM_WINDOW, crs))
    corners = [to(crs, *utm(c, r)) for c, r in [(10, 20), (30, 20), (30, 50), (10, 50)]]
    assert_vertices_include(geom, corners, tol)
    assert len(geom.exterior.coords) == 4 * geo.BOX_EDGE_POINTS + 1
    x0, y0, x1, y1 = geom.bounds
    assert (x0, y0, x1, y1) == pytest.approx(
        (
            min(p[0] for p in corners),
            min(p[1] for p in corners),
            max(p[0] for p in corners),
            max(p[1] for p in corners),
        ),
        abs=tol,
    )


def test_box_edges_follow_the_curve_of_the_projection():
    # 100 km pixels: a box of 1 x 1 pixels whose straight UTM edges are curves in lon/lat.
    window = Window(
        array=np.zeros((2, 2, 3), np.uint8), transform=rasters.utm_transform(res=100_000.0), crs=rasters.UTM
    )
    geom = only_geometry(detections_to_features([box_detection((0.5, 0.5, 1.5, 1.5))], window, rasters.WGS84))
    (left, top), (right, _) = window.transform * (0.5, 0.5), window.transform * (1.5, 0.5)
    middle = Point(to(rasters.WGS84, (left + right) / 2, top))
    chord = shapely.LineString([to(rasters.WGS84, left, top), to(rasters.WGS84, right, top)])
    assert geom.exterior.distance(middle) < 1e-9
    assert chord.distance(middle) > 1e-4  # without densification the edge would be this far off


def test_boxes_are_ordered_clipped_or_dropped():
    features = detections_to_features(
        [box_detection((30, 50, 10, 20)), box_detection((-10, -10, 5, 5)), box_detection((70, 70, 80, 80))],
        UTM_WINDOW,
        rasters.UTM,
    )
    assert len(features) == 2
    assert shape(features[0]["geometry"]).equals(Polygon([utm(10, 20), utm(30, 20), utm(30, 50), utm(10, 50)]))
    assert shape(features[1]["geometry"]).bounds == (*utm(0, 5), *utm(5, 0))


def test_rotated_window_transform_is_applied_to_boxes_and_masks():
    transform = Affine(10, 2, 1000, 3, -10, 5000)
    window = Window(array=np.zeros((8, 8, 3), np.uint8), transform=transform, crs=rasters.UTM)
    mask = np.zeros((8, 8), bool)
    mask[2:6, 1:7] = True
    features = detections_to_features(
        [box_detection((1, 2, 7, 6)), Detection(kind=FeatureKind.MASK, label="m", score=1.0, mask=mask)],
        window,
        rasters.UTM,
    )
    expected = Polygon([transform * (1, 2), transform * (7, 2), transform * (7, 6), transform * (1, 6)])
    for feature in features:
        assert shape(feature["geometry"]).normalize().equals_exact(expected.normalize(), 1e-9)


# --- masks -------------------------------------------------------------------------------------


def test_mask_polygon_keeps_holes_and_drops_specks_in_the_window_crs():
    geom = polygonize_mask(mask_with_hole(), rasters.utm_transform())
    assert isinstance(geom, Polygon) and len(geom.interiors) == 1
    expected = Polygon(
        [utm(20, 10), utm(50, 10), utm(50, 30), utm(20, 30)], [[utm(30, 15), utm(35, 15), utm(35, 20), utm(30, 20)]]
    )
    assert geom.normalize().equals_exact(expected.normalize(), 1e-6)


@pytest.mark.parametrize("crs, tol", [(rasters.WGS84, 1e-9), (rasters.MERCATOR, 1e-4)])
def test_mask_feature_reprojected_has_the_hand_computed_corners(crs, tol):
    detection = Detection(kind=FeatureKind.MASK, label="building", score=0.8, mask=mask_with_hole())
    geom = only_geometry(detections_to_features([detection], UTM_WINDOW, crs))
    assert isinstance(geom, Polygon) and geom.is_valid and len(geom.interiors) == 1
    outer = [to(crs, *utm(c, r)) for c, r in [(20, 10), (50, 10), (50, 30), (20, 30)]]
    hole = [to(crs, *utm(c, r)) for c, r in [(30, 15), (35, 15), (35, 20), (30, 20)]]
    assert_vertices_include(Polygon(geom.exterior), outer, tol)
    assert_vertices_include(Polygon(geom.interiors[0]), hole, tol)
    assert Polygon(geom.interiors[0]).area == pytest.approx(Polygon(hole).area, rel=1e-6)


def test_mask_outline_is_simplified_at_about_a_pixel():
    rows, cols = np.indices((64, 64))
    disk = (rows - 32) ** 2 + (cols - 32) ** 2 < 20**2
    geom = polygonize_mask(disk, Affine.identity())
    staircase = polygonize_mask(disk, Affine.identity(), simplify_px=0)
    assert geom.is_valid and len(geom.exterior.coords) < len(staircase.exterior.coords) / 2
    assert geom.area == pytest.approx(disk.sum(), rel=0.03)
    assert geom.hausdorff_distance(staircase) <= 1.0 + 1e-9


def test_random_blobs_polygonise_to_a_valid_multipolygon():
    rng = np.random.default_rng(7)
    noise = rng.random((128, 128))
    smooth = sum(np.roll(np.roll(noise, dy, 0), dx, 1) for dy in range(-2, 3) for dx in range(-2, 3)) / 25
    mask = smooth > 0.55
    geom = polygonize_mask(mask, rasters.utm_transform(), min_area_px=4)
    with_specks = polygonize_mask(mask, rasters.utm_transform(), min_area_px=1)
    assert isinstance(geom, MultiPolygon) and geom.is_valid and with_specks.is_valid
    assert len(geom.geoms) < len(with_specks.geoms)
    assert min(p.area for p in geom.geoms) > 100  # more than a pixel even after simplification
    assert geom.area == pytest.approx(mask.sum() * 100, rel=0.1)


def test_empty_mask_gives_no_feature():
    assert polygonize_mask(np.zeros((8, 8), bool), Affine.identity()).is_empty
    speck = np.zeros((64, 64), bool)
    speck[3, 3] = True
    assert (
        detections_to_features(
            [Detection(kind=FeatureKind.MASK, label="x", score=1, mask=speck)], UTM_WINDOW, rasters.UTM
        )
        == []
    )


def test_mask_of_the_wrong_size_is_an_engine_error():
    with pytest.raises(ValueError, match="does not match"):
        detections_to_features(
            [Detection(kind=FeatureKind.MASK, label="x", score=1, mask=np.ones((8, 8), bool))], UTM_WINDOW, rasters.UTM
        )


@pytest.mark.parametrize("kind", [FeatureKind.MASK, FeatureKind.CHANGE])
def test_a_mask_of_separate_objects_gives_one_feature_per_object(kind):
    """/segment buildings: three roofs are three polygons, each with its own area, not one multipolygon."""
    mask = np.zeros((64, 64), bool)
    mask[2:12, 2:12] = True  # 100 px
    mask[2:6, 40:60] = True  # 80 px
    mask[30:50, 20:30] = True  # 200 px, with a hole that stays a hole
    mask[38:42, 24:26] = False
    detection = Detection(kind=kind, label="building", score=0.8, mask=mask)
    features = detections_to_features([detection], UTM_WINDOW, rasters.MERCATOR, {"source": "a"})
    geoms = [shape(f["geometry"]) for f in features]
    assert [g.geom_type for g in geoms] == ["Polygon"] * 3
    assert [f["properties"] for f in features] == [
        {"kind": kind.value, "label": "building", "score": 0.8, "source": "a"}
    ] * 3
    in_utm = detections_to_features([detection], UTM_WINDOW, rasters.UTM)
    assert sorted(round(shape(f["geometry"]).area) for f in in_utm) == [8000, 10000, 19200]  # 10 m pixels
    assert len(shape(in_utm[2]["geometry"]).interiors) == 1


def test_a_box_prompted_mask_in_pieces_stays_one_object():
    """SAM's mask for one building's box, cut in two by a tree's shadow, is still one building."""
    mask = np.zeros((64, 64), bool)
    mask[10:20, 10:20] = True
    mask[10:20, 24:34] = True
    detection = Detection(
        kind=FeatureKind.MASK, label="building", score=0.9, box=(10, 10, 34, 20), mask=mask, one_object=True
    )
    [feature] = detections_to_features([detection], UTM_WINDOW, rasters.UTM)
    assert shape(feature["geometry"]).geom_type == "MultiPolygon" and round(shape(feature["geometry"]).area) == 20000


def test_boxes_stay_whole():
    features = detections_to_features(
        [box_detection((1, 1, 10, 10)), box_detection((30, 30, 40, 40))], UTM_WINDOW, rasters.UTM
    )
    assert [shape(f["geometry"]).geom_type for f in features] == ["Polygon", "Polygon"]


def test_a_mask_detection_with_a_box_uses_the_mask():
    mask = np.zeros((64, 64), bool)
    mask[0:10, 0:10] = True
    detection = Detection(kind=FeatureKind.MASK, label="x", score=1, box=(0, 0, 40, 40), mask=mask)
    geom = only_geometry(detections_to_features([detection], UTM_WINDOW, rasters.UTM))
    assert geom.area == pytest.approx(100 * 100)


# --- points, properties, errors ----------------------------------------------------------------


def test_point_and_feature_properties():
    detection = Detection(
        kind=FeatureKind.POINT, label="car", score=np.float32(0.75), point=(5.5, 7.5), properties={"rank": np.int64(2)}
    )
    features = detections_to_features(
        [detection], UTM_WINDOW, rasters.MERCATOR, properties={"task": "ground", "rank": 1}
    )
    geom = only_geometry(features)
    assert geom.coords[0] == pytest.approx(to(rasters.MERCATOR, *utm(5.5, 7.5)), abs=1e-6)
    assert features[0]["type"] == "Feature"
    assert features[0]["properties"] == {"kind": "point", "label": "car", "score": 0.75, "rank": 1, "task": "ground"}
    json.dumps(features)


def test_unknown_output_crs():
    with pytest.raises(ProtocolError) as info:
        detections_to_features([box_detection((0, 0, 1, 1))], UTM_WINDOW, "EPSG:999999")
    assert info.value.code is ErrorCode.BAD_CRS


def test_region_the_output_crs_cannot_represent():
    far_side = Window(
        array=np.zeros((10, 10, 3), np.uint8), transform=Affine(0.01, 0, 170, 0, -0.01, 10), crs=rasters.WGS84
    )
    orthographic = "+proj=ortho +lat_0=0 +lon_0=0 +datum=WGS84"  # sees one hemisphere only
    with pytest.raises(ProtocolError) as info:
        detections_to_features([box_detection((0, 0, 5, 5))], far_side, orthographic)
    assert info.value.code is ErrorCode.BAD_CRS and orthographic in info.value.message
