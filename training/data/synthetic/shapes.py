"""Geometric primitives of the scene graph: oriented rectangles, discs, blobs and wiggly lines.

All coordinates are pixels of the scene (x to the right, y down; pixel (row, col) covers
``[col, col + 1) x [row, row + 1)``). Angles are radians from +x towards +y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import LineString, Polygon
from shapely.geometry.base import BaseGeometry


@dataclass(frozen=True)
class Frame:
    """A rigid map from a layout's local frame to scene pixels: rotate by ``angle``, then shift."""

    angle: float = 0.0
    dx: float = 0.0
    dy: float = 0.0

    def point(self, x: float, y: float) -> tuple[float, float]:
        c, s = math.cos(self.angle), math.sin(self.angle)
        return c * x - s * y + self.dx, s * x + c * y + self.dy

    def geometries(self, geoms: np.ndarray) -> np.ndarray:
        """Many geometries at once (an object array), in one vectorised call."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        matrix = np.array([[c, s], [-s, c]])
        return shapely.transform(geoms, lambda xy: xy @ matrix + (self.dx, self.dy))

    def inverse_geometry(self, geom: BaseGeometry) -> BaseGeometry:
        c, s = math.cos(self.angle), math.sin(self.angle)
        moved = affinity.translate(geom, -self.dx, -self.dy)
        return affinity.affine_transform(moved, [c, s, -s, c, 0.0, 0.0])


@dataclass(frozen=True)
class Rect:
    """An oriented rectangle: centre, long-axis ``angle``, half length and half width (pixels)."""

    cx: float
    cy: float
    angle: float
    half_len: float
    half_wid: float

    def corners(self) -> np.ndarray:
        """The four corners, shape (4, 2), counter-clockwise in the rectangle's own frame."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * (self.half_len, self.half_wid)
        return local @ np.array([[c, s], [-s, c]]) + (self.cx, self.cy)

    def polygon(self) -> Polygon:
        return Polygon(self.corners())

    def moved(self, frame: Frame) -> Rect:
        cx, cy = frame.point(self.cx, self.cy)
        return Rect(cx, cy, self.angle + frame.angle, self.half_len, self.half_wid)


@dataclass(frozen=True)
class Disc:
    """A circle: centre and radius (pixels)."""

    cx: float
    cy: float
    r: float

    def moved(self, frame: Frame) -> Disc:
        cx, cy = frame.point(self.cx, self.cy)
        return Disc(cx, cy, self.r)


def blob(
    rng: np.random.Generator,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    angle: float,
    roughness: float = 0.15,
    vertices: int = 40,
) -> Polygon:
    """A smooth irregular closed shape around an ellipse (ponds, lakes, yards, crowns).

    Large shapes get more than ``vertices`` corners, so that no edge is longer than about 4 pixels.
    """
    vertices = min(max(vertices, int(2 * math.pi * max(rx, ry) / 4)), 512)
    phi = np.linspace(0.0, 2.0 * math.pi, vertices, endpoint=False)
    radius = np.ones_like(phi)
    for k in range(2, 6):
        radius += roughness / k * rng.normal() * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    radius = np.clip(radius, 0.45, 1.6)
    x, y = rx * radius * np.cos(phi), ry * radius * np.sin(phi)
    c, s = math.cos(angle), math.sin(angle)
    return Polygon(np.column_stack([cx + c * x - s * y, cy + s * x + c * y]))


def wiggly_line(
    rng: np.random.Generator, start: tuple[float, float], end: tuple[float, float], amplitude: float, points: int = 48
) -> LineString:
    """A smooth meandering line from ``start`` to ``end`` (roads, rivers)."""
    t = np.linspace(0.0, 1.0, points)
    (x0, y0), (x1, y1) = start, end
    length = math.hypot(x1 - x0, y1 - y0)
    nx, ny = -(y1 - y0) / length, (x1 - x0) / length
    offset = np.zeros_like(t)
    for k in (1, 2, 3):
        offset += amplitude / k * rng.normal() * np.sin(k * math.pi * t + rng.uniform(0, 2 * math.pi))
    offset -= offset[0] + (offset[-1] - offset[0]) * t
    return LineString(np.column_stack([x0 + (x1 - x0) * t + nx * offset, y0 + (y1 - y0) * t + ny * offset]))


def wavy_edges(
    rng: np.random.Generator, polygon: Polygon, amplitude: float, wavelength: float, detail: float = 0.0
) -> Polygon:
    """``polygon`` with its outline displaced by smooth noise (ragged forest and field margins).

    ``detail`` (pixels, 0 for none) adds scallops of that size, like the crowns along a forest edge.
    """
    step = max(min(wavelength / 6.0, detail / 2.0 if detail else wavelength), 1.0)
    ring = shapely.segmentize(polygon.exterior, step)
    xy = np.asarray(ring.coords)[:-1]
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(xy, axis=0).T))])
    displacement = np.zeros(len(xy))
    for k in (1.0, 2.3, 4.1):
        displacement += amplitude / k * np.sin(2 * math.pi * k * arc / wavelength + rng.uniform(0, 2 * math.pi))
    if detail:
        knots = np.arange(0.0, arc[-1] + 2 * detail, detail)
        bumps = rng.uniform(-0.5, 0.5, len(knots)) * detail
        displacement += np.interp(arc, knots, bumps)
    tangent = np.roll(xy, -1, axis=0) - np.roll(xy, 1, axis=0)
    normal = np.column_stack([tangent[:, 1], -tangent[:, 0]])
    normal /= np.maximum(np.hypot(*normal.T), 1e-9)[:, None]
    shape = Polygon(xy + normal * displacement[:, None]).buffer(0)
    return largest_polygon(shape.intersection(polygon.buffer(amplitude)))


def largest_polygon(geom: BaseGeometry) -> Polygon:
    """The largest polygon of ``geom`` (an empty polygon when it has none)."""
    parts = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and not g.is_empty]
    return max(parts, key=lambda g: g.area) if parts else Polygon()
