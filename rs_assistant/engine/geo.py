"""Turns what a backend found, in pixels of its window, into GeoJSON features in the caller's CRS.

This is the one place where pixels become map coordinates: the window's affine transform, edges
densified before reprojection (so a box stays right in a curved projection), mask polygonisation,
and reprojection with cached pyproj transformers.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import affine
import numpy as np
import pyproj
import rasterio.features
import shapely
import shapely.affinity
import shapely.geometry
from shapely.geometry import MultiPolygon, Point, Polygon
from shapely.geometry.base import BaseGeometry

from rs_assistant.core.protocol import ErrorCode, FeatureKind, ProtocolError
from rs_assistant.engine.backends.base import MIN_PART_PIXELS, Detection
from rs_assistant.engine.crs import parse_crs
from rs_assistant.engine.imagery import Window

log = logging.getLogger(__name__)

#: Points per box edge before reprojection (a box becomes a 64-vertex ring).
BOX_EDGE_POINTS = 16
#: Longest mask-outline segment, in window pixels, before reprojection.
MASK_SEGMENT_PX = 4.0

#: Which of a detection's geometries to use, by kind, in order of preference.
_GEOMETRY_PREFERENCE: dict[FeatureKind, tuple[str, ...]] = {
    FeatureKind.BOX: ("box", "mask", "point"),
    FeatureKind.MASK: ("mask", "box", "point"),
    FeatureKind.CHANGE: ("mask", "box", "point"),
    FeatureKind.POINT: ("point", "box", "mask"),
}


@functools.lru_cache(maxsize=64)
def _transformer(src_crs: str, dst_crs: str) -> pyproj.Transformer | None:
    """A cached x/y-ordered transformer between two CRS strings, or None when they are the same CRS."""
    src, dst = parse_crs(src_crs), parse_crs(dst_crs)
    if src == dst:
        return None
    return pyproj.Transformer.from_crs(src, dst, always_xy=True)


def detections_to_features(
    detections: Sequence[Detection],
    window: Window,
    output_crs: str,
    properties: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """GeoJSON features in ``output_crs`` for detections given in pixels of ``window``.

    Boxes are clipped to the window; a detection whose geometry is empty (a box outside the
    window, a mask of specks only) is left out. A mask or change detection of several separate
    parts gives one feature per part (one polygon per object, each with its own area), in the
    order the mask is scanned (top row first), unless it is ``one_object`` (a box-prompted mask:
    SAM's, split by an occluding tree, is still one building). ``properties`` are added to every feature.
    """
    parse_crs(output_crs)
    transformer = _transformer(window.crs, output_crs)
    densify = transformer is not None
    features = []
    for det in detections:
        geom = _pixel_geometry(det, window, densify)
        if geom is None or geom.is_empty:
            log.debug("dropped %s detection %r: empty geometry in the window", det.kind.value, det.label)
            continue
        if transformer is not None:
            geom = _reproject(geom, transformer, output_crs)
        for part in [geom] if det.one_object else _objects(det.kind, geom):
            features.append(_feature(det, part, properties or {}))
    return features


def _objects(kind: FeatureKind, geom: BaseGeometry) -> list[BaseGeometry]:
    """The separate objects of an area detection (a MultiPolygon's parts); anything else whole."""
    if kind in (FeatureKind.MASK, FeatureKind.CHANGE) and isinstance(geom, MultiPolygon):
        return list(geom.geoms)
    return [geom]


def polygonize_mask(
    mask: np.ndarray, transform: affine.Affine, min_area_px: float = MIN_PART_PIXELS, simplify_px: float = 1.0
) -> Polygon | MultiPolygon:
    """The outline of a boolean mask in the transform's CRS: holes kept, specks dropped, simplified.

    Parts and holes smaller than ``min_area_px`` pixels are dropped; the outline is simplified
    with a tolerance of ``simplify_px`` pixels, preserving topology. An empty mask gives an empty Polygon.
    """
    return _apply_affine(_mask_outline_px(mask, min_area_px, simplify_px), transform)


# --- pixel geometries --------------------------------------------------------------------------


def _pixel_geometry(det: Detection, window: Window, densify: bool) -> BaseGeometry | None:
    """The detection's geometry in the window's CRS (densified when it will be reprojected)."""
    for name in _GEOMETRY_PREFERENCE[det.kind]:
        value = getattr(det, name)
        if value is None:
            continue
        if name == "box":
            return _box_polygon(value, window, densify)
        if name == "mask":
            return _mask_geometry(value, window, densify)
        return Point(window.transform * (float(value[0]), float(value[1])))
    return None


def _box_polygon(box: Sequence[float], window: Window, densify: bool) -> Polygon | None:
    """The box (pixels, clipped to the window) as a map polygon, BOX_EDGE_POINTS per edge when densified."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = np.clip(sorted((x0, x1)), 0, window.width)
    y0, y1 = np.clip(sorted((y0, y1)), 0, window.height)
    if x1 <= x0 or y1 <= y0:
        return None
    n = BOX_EDGE_POINTS if densify else 1
    t = np.arange(n) / n
    cols = np.concatenate([x0 + (x1 - x0) * t, np.full(n, x1), x1 - (x1 - x0) * t, np.full(n, x0)])
    rows = np.concatenate([np.full(n, y0), y0 + (y1 - y0) * t, np.full(n, y1), y1 - (y1 - y0) * t])
    xs, ys = window.transform * (cols, rows)
    return Polygon(np.column_stack([xs, ys]))


def _mask_geometry(mask: np.ndarray, window: Window, densify: bool) -> BaseGeometry:
    if mask.shape != (window.height, window.width):
        raise ValueError(f"mask shape {mask.shape} does not match the window ({window.height}, {window.width})")
    outline = _mask_outline_px(mask)
    if densify:
        outline = shapely.segmentize(outline, MASK_SEGMENT_PX)
    return _apply_affine(outline, window.transform)


def _mask_outline_px(
    mask: np.ndarray, min_area_px: float = MIN_PART_PIXELS, simplify_px: float = 1.0
) -> Polygon | MultiPolygon:
    """polygonize_mask in pixel coordinates (x = column, y = row, pixel edges on integers). Only the mask's
    extent is traced (one object of a window-sized mask is a few pixels of it). Rings are handled as shapely
    arrays, each simplified on its own (a mask full of holes, as a coarse model's, has thousands of them: 3.4x
    faster than one topology-preserving simplification of the whole polygon); an invalid result is repaired."""
    rows = np.flatnonzero(mask.any(axis=1))
    if not rows.size:
        return Polygon()
    cols = np.flatnonzero(mask.any(axis=0))
    row0, col0 = int(rows[0]), int(cols[0])
    pixels = np.ascontiguousarray(mask[row0 : rows[-1] + 1, col0 : cols[-1] + 1], dtype=np.uint8)
    offset = affine.Affine.translation(col0, row0)
    parts = []
    for shape, _ in rasterio.features.shapes(pixels, mask=pixels.astype(bool), connectivity=4, transform=offset):
        coords = [np.asarray(ring, dtype=float) for ring in shape["coordinates"]]
        rings = shapely.linearrings(
            np.concatenate(coords), indices=np.repeat(np.arange(len(coords)), [len(c) for c in coords])
        )
        areas = shapely.area(shapely.polygons(rings))
        if areas[0] < min_area_px:
            continue
        shell, holes = rings[0], rings[1:][areas[1:] >= min_area_px]
        if simplify_px > 0:
            shell = shapely.simplify(shell, simplify_px, preserve_topology=True)
            holes = shapely.simplify(holes, simplify_px, preserve_topology=True)
        parts.append(shapely.polygons(shell, holes=holes))
    if not parts:
        return Polygon()
    outline: BaseGeometry = MultiPolygon(parts)
    if not outline.is_valid:
        outline = shapely.make_valid(outline)
    return _polygonal(outline)


def _polygonal(geom: BaseGeometry) -> Polygon | MultiPolygon:
    """The polygonal parts of a geometry, as one Polygon when there is just one."""
    polys: list[Polygon] = []
    for part in shapely.get_parts(geom):
        if isinstance(part, MultiPolygon):
            polys.extend(part.geoms)
        elif isinstance(part, Polygon) and not part.is_empty:
            polys.append(part)
    if not polys:
        return Polygon()
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def _apply_affine(geom: BaseGeometry, transform: affine.Affine) -> Any:
    t = transform
    return shapely.affinity.affine_transform(geom, [t.a, t.b, t.d, t.e, t.c, t.f])


# --- reprojection and features -----------------------------------------------------------------


def _reproject(geom: BaseGeometry, transformer: pyproj.Transformer, output_crs: str) -> BaseGeometry:
    out = shapely.transform(geom, _xy_function(transformer))
    if not np.isfinite(shapely.get_coordinates(out)).all():
        raise ProtocolError(
            ErrorCode.BAD_CRS,
            f"output_crs {output_crs!r} cannot represent this region (coordinates fall outside its area of use)",
        )
    return out


def _xy_function(transformer: pyproj.Transformer) -> Callable[[np.ndarray], np.ndarray]:
    def apply(xy: np.ndarray) -> np.ndarray:
        xs, ys = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([xs, ys])

    return apply


def _feature(det: Detection, geom: BaseGeometry, extra: Mapping[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = {"kind": det.kind.value, "label": det.label, "score": float(det.score)}
    props.update(det.properties)
    props.update(extra)
    return {
        "type": "Feature",
        "geometry": json.loads(shapely.to_geojson(geom)),  # GEOS's writer: 2.8x mapping() on a mask with many holes
        "properties": {k: _plain(v) for k, v in props.items()},
    }


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as plain Python values, so that a feature serialises to JSON."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
