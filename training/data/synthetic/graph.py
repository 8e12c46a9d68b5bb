"""The scene graph: features (objects to draw and label) in scene pixels, in painter's order.

A :class:`Layout` is a tuple of :class:`Feature` s. Painter's order: features are drawn by
``z`` (then by their order in the layout), so a later feature hides an earlier one; land cover
first, then water, roads and parking lots, buildings and tanks, vehicles, and single trees on top.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from shapely.geometry.base import BaseGeometry

from training.data.synthetic.classes import ObjectClass
from training.data.synthetic.shapes import Disc, Frame, Rect

Z_LAND, Z_WATER, Z_ROAD, Z_STRUCTURE, Z_VEHICLE, Z_TREE = range(6)


@dataclass(frozen=True)
class Feature:
    """One object of the scene graph, in scene pixels.

    ``geometry`` is the footprint that labels are rasterised from. The other fields describe how
    it looks and are only used by the classes that need them: ``rects`` (building wings, vehicle
    bodies), ``discs`` (tree crowns, tanks), ``roof`` (flat/gable/hip for buildings,
    fixed/floating for tanks), ``rows`` (crop row direction in radians and spacing in pixels) and
    ``marks`` (painted lines: road dashes, parking stalls). ``style`` is the word that text uses
    for the object's look (a roof or car colour, a crop, a road surface); ``tone`` in [0, 1] varies
    its shade.
    """

    key: int
    cls: ObjectClass
    kind: str
    geometry: BaseGeometry
    z: int
    style: str = ""
    height_m: float = 0.0
    tone: float = 0.5
    rects: tuple[Rect, ...] = ()
    discs: tuple[Disc, ...] = ()
    roof: str = ""
    rows: tuple[float, float] = (0.0, 0.0)
    marks: BaseGeometry | None = None


def move_all(features: list[Feature], frame: Frame) -> list[Feature]:
    """``features`` carried by ``frame`` (rotation and shift); geometries move in one vectorised call."""
    if not features:
        return []
    geometries = frame.geometries(np.array([f.geometry for f in features], dtype=object))
    marked = [i for i, f in enumerate(features) if f.marks is not None]
    marks: list[BaseGeometry | None] = [None] * len(features)
    if marked:
        for i, m in zip(marked, frame.geometries(np.array([features[i].marks for i in marked], dtype=object))):
            marks[i] = m
    return [
        replace(
            f,
            geometry=g,
            rects=tuple(r.moved(frame) for r in f.rects),
            discs=tuple(d.moved(frame) for d in f.discs),
            rows=(f.rows[0] + frame.angle, f.rows[1]),
            marks=m,
        )
        for f, g, m in zip(features, geometries, marks)
    ]


@dataclass(frozen=True)
class Layout:
    """A whole scene graph: ``size`` x ``size`` pixels of ``gsd`` metres, and its features.

    ``soil`` (loam, sandy, rocky) colours and textures bare soil, bare ground and dirt tracks.
    """

    size: int
    gsd: float
    theme: str
    season: str
    features: tuple[Feature, ...]
    soil: str = "loam"

    def moved(self, dx: float, dy: float) -> Layout:
        """The same layout shifted by (dx, dy) pixels (misregistration of a second date)."""
        return replace(self, features=tuple(move_all(list(self.features), Frame(0.0, dx, dy))))

    def painted(self) -> tuple[Feature, ...]:
        """Features in painter's order (by ``z``, then layout order)."""
        return tuple(sorted(self.features, key=lambda f: f.z))

    def next_key(self) -> int:
        """A key that no feature of this layout uses yet."""
        return max((f.key for f in self.features), default=0) + 1
