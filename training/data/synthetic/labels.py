"""Rasterising a layout into exact labels: index map, class map, instance map and objects.

The index map holds, per pixel, which painted feature is on top (1-based, 0 for the bare ground).
Features hidden everywhere are dropped and the rest get compact instance ids 1..N in painter's
order; every box, polygon, pixel count and centroid is measured on the instance map itself.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from rasterio import features as rio_features
from scipy import ndimage
from shapely.geometry import MultiPolygon
from shapely.geometry.base import BaseGeometry

from training.data.synthetic.annotations import SceneObject
from training.data.synthetic.graph import Feature, Layout

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Labels:
    """A layout rasterised: ``index`` (int32, 1-based into ``painted``) plus the exact labels."""

    painted: tuple[Feature, ...]
    index: np.ndarray
    class_map: np.ndarray
    instance_map: np.ndarray
    objects: tuple[SceneObject, ...]


def burn(shapes: Sequence[tuple[BaseGeometry, float]], size: int, dtype: str, all_touched: bool = False) -> np.ndarray:
    """Rasterise (geometry, value) pairs in order, later ones on top, onto ``size`` x ``size`` pixels.

    A pixel belongs to a shape when its centre does (or, with ``all_touched``, when the shape
    touches it). Geometries go to GDAL as GeoJSON, which is much faster than shapely objects.
    """
    shapes = [(g, v) for g, v in shapes if not g.is_empty]
    if not shapes:
        return np.zeros((size, size), dtype=dtype)
    documents = [json.loads(text) for text in shapely.to_geojson(np.array([g for g, _ in shapes], dtype=object))]
    return rio_features.rasterize(
        zip(documents, (v for _, v in shapes)), out_shape=(size, size), fill=0, dtype=dtype, all_touched=all_touched
    )


def index_map(painted: tuple[Feature, ...], size: int) -> np.ndarray:
    """Which of ``painted`` (1-based, later ones on top) covers each pixel centre; 0 for none."""
    return burn([(f.geometry, i + 1) for i, f in enumerate(painted)], size, "int32")


def class_map(painted: tuple[Feature, ...], index: np.ndarray) -> np.ndarray:
    """The class map (uint8) of an index map."""
    lut = np.array([0] + [int(f.cls) for f in painted], dtype=np.uint8)
    return lut[index]


def rasterise(layout: Layout) -> Labels:
    """Labels of ``layout``."""
    painted = layout.painted()
    index = index_map(painted, layout.size)
    counts = np.bincount(index.ravel(), minlength=len(painted) + 1)
    visible = np.flatnonzero(counts[1:]) + 1
    if len(visible) > np.iinfo(np.uint16).max:
        raise ValueError(f"{len(visible)} visible objects do not fit a uint16 instance map")
    remap = np.zeros(len(painted) + 1, dtype=np.uint16)
    remap[visible] = np.arange(1, len(visible) + 1, dtype=np.uint16)
    instance = remap[index]
    objects = _measure(instance, [painted[i - 1] for i in visible], counts[visible], layout.gsd)
    return Labels(painted, index, class_map(painted, index), instance, objects)


def _measure(instance: np.ndarray, features: list[Feature], counts: np.ndarray, gsd: float) -> tuple[SceneObject, ...]:
    n = len(features)
    flat = instance.ravel()
    rows, cols = np.divmod(np.arange(flat.size, dtype=np.int64), instance.shape[1])
    sum_x = np.bincount(flat, weights=cols, minlength=n + 1)
    sum_y = np.bincount(flat, weights=rows, minlength=n + 1)
    slices = ndimage.find_objects(instance, max_label=n)
    outlines = _outlines(instance)
    objects = []
    for i, (feature, count, box) in enumerate(zip(features, counts, slices), start=1):
        sy, sx = box
        objects.append(
            SceneObject(
                id=i,
                cls=feature.cls,
                kind=feature.kind,
                style=feature.style,
                box=(int(sx.start), int(sy.start), int(sx.stop), int(sy.stop)),
                polygon=outlines[i],
                pixels=int(count),
                area_m2=area_m2(int(count), gsd),
                centroid=(round(float(sum_x[i] / count) + 0.5, 3), round(float(sum_y[i] / count) + 0.5, 3)),
                height_m=feature.height_m,
                key=feature.key,
            )
        )
    return tuple(objects)


def area_m2(pixels: int, gsd: float) -> float:
    """Ground area of ``pixels`` pixels of ``gsd`` metres, in square metres (rounded to 1e-4)."""
    return round(pixels * gsd * gsd, 4)


def _outlines(instance: np.ndarray) -> dict[int, BaseGeometry]:
    """Exact pixel outlines per instance id (pixel coordinates)."""
    found = list(rio_features.shapes(instance, mask=instance > 0, connectivity=4))
    polygons = shapely.from_geojson([json.dumps(geometry) for geometry, _ in found])
    parts: dict[int, list] = defaultdict(list)
    for polygon, (_, value) in zip(polygons, found):
        parts[int(value)].append(polygon)
    return {k: v[0] if len(v) == 1 else MultiPolygon(v) for k, v in parts.items()}
