"""Objects that cross tile seams: each tile keeps what lies in its core, and pieces that reach a seam wait to be merged.

Masks and change polygons are clipped to the tile's core; a part touching a core side that has a
neighbour is *pending*, and at the end pending parts of one label are unioned and split into
connected polygons, so an object cut by seams comes out as one polygon of the right area. Boxes
are kept whole; a box that a neighbouring tile's window also sees is pending, and at the end
duplicates (IoU or intersection-over-smaller) merge keeping the best score, while boxes cut by a
window edge join into the bounding box of their pieces. Everything happens in the grid's CRS and
in a fixed order, so the result does not depend on the order tiles finish (local or distributed).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyproj
import shapely
import shapely.geometry
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from rs_assistant.core.protocol import ErrorCode, FeatureKind, ProtocolError
from rs_assistant.engine.crs import parse_crs
from rs_assistant.engine.tiling import Bounds, Tile, TileGrid

#: Pending pieces carry their exact geometry in the grid's CRS under this property (the merge reads it back).
GRID_GEOMETRY = "grid_geometry"
#: Two boxes of one label are the same object above these overlaps.
DUPLICATE_IOU = 0.5
DUPLICATE_IOS = 0.7
#: Pieces of a box cut by a window edge join when they overlap this much across the cut.
CUT_OVERLAP = 0.5
#: Longest segment, in grid pixels, before a geometry is reprojected.
SEGMENT_PX = 4.0
#: Kinds merged by union (areas); boxes and points are merged as boxes.
AREA_KINDS = frozenset({FeatureKind.MASK, FeatureKind.CHANGE})


@dataclass
class Piece:
    """A feature in the grid's CRS: final, or pending until the job's seams are merged."""

    kind: FeatureKind
    label: str
    score: float
    tile: int
    geometry: BaseGeometry
    properties: dict[str, Any] = field(default_factory=dict)  # anything else the model gave

    def sort_key(self) -> tuple:
        return (self.kind.value, self.label, self.tile, tuple(round(v, 9) for v in self.geometry.bounds), -self.score)


def split_tile(features: Iterable[Mapping[str, Any]], tile: Tile, grid: TileGrid) -> tuple[list[Piece], list[Piece]]:
    """A tile's features (GeoJSON in the grid's CRS, as geo.detections_to_features writes them) -> (final, pending)."""
    final: list[Piece] = []
    pending: list[Piece] = []
    eps = grid.pixel_size * 1e-6
    for feature in features:
        piece = _piece(feature, tile.id)
        if piece.kind in AREA_KINDS:
            core = grid.bounds(tile.core)
            for part in _polygons(piece.geometry.intersection(shapely.geometry.box(*core))):
                clipped = Piece(piece.kind, piece.label, piece.score, tile.id, part, dict(piece.properties))
                (pending if _touches(part.bounds, core, tile.neighbours, eps) else final).append(clipped)
        else:
            inside = grid.bounds(tile.interior)
            (pending if _touches(piece.geometry.bounds, inside, tile.neighbours, eps) else final).append(piece)
    return final, pending


def merge(pieces: Iterable[Piece], grid: TileGrid) -> list[Piece]:
    """The pending pieces of a whole job merged across seams; the same list whatever order they came in."""
    groups: dict[tuple[str, str], list[Piece]] = {}
    for piece in sorted(pieces, key=Piece.sort_key):
        groups.setdefault((piece.kind.value, piece.label), []).append(piece)
    merged: list[Piece] = []
    for (kind, _), group in sorted(groups.items()):
        merged.extend(_merge_areas(group) if FeatureKind(kind) in AREA_KINDS else _merge_boxes(group, grid))
    return merged


# --- GeoJSON in and out -------------------------------------------------------------------------


class Reprojector:
    """Geometries from the grid's CRS to the output CRS (densified first, so straight edges follow the projection)."""

    def __init__(self, grid: TileGrid, output_crs: str):
        self.output_crs = output_crs
        self.segment = grid.pixel_size * SEGMENT_PX
        self.transformer = _transformer(grid.crs, output_crs)

    def __call__(self, geom: BaseGeometry) -> BaseGeometry:
        if self.transformer is None:
            return geom
        transformer = self.transformer

        def apply(xy: np.ndarray) -> np.ndarray:
            xs, ys = transformer.transform(xy[:, 0], xy[:, 1])
            return np.column_stack([xs, ys])

        out = shapely.transform(shapely.segmentize(geom, self.segment), apply)
        if not np.isfinite(shapely.get_coordinates(out)).all():
            raise ProtocolError(
                ErrorCode.BAD_CRS,
                f"output_crs {self.output_crs!r} cannot represent this region (coordinates fall outside its area of "
                f"use)",
            )
        return out


def to_feature(piece: Piece, reproject: Reprojector, pending: bool = False) -> dict[str, Any]:
    """A GeoJSON feature in the output CRS; a pending one also carries its exact grid geometry (GRID_GEOMETRY)."""
    props: dict[str, Any] = {
        "kind": piece.kind.value,
        "label": piece.label,
        "score": float(piece.score),
        "tile": piece.tile,
    }
    props.update(piece.properties)
    if pending:
        props[GRID_GEOMETRY] = shapely.geometry.mapping(piece.geometry)
    return {"type": "Feature", "geometry": shapely.geometry.mapping(reproject(piece.geometry)), "properties": props}


def from_pending(feature: Mapping[str, Any], grid: TileGrid) -> Piece:
    """A pending feature that an earlier run of the job streamed (to resume it); BAD_REQUEST if it is not one."""
    props = feature.get("properties") or {}
    raw = props.get(GRID_GEOMETRY)
    tile = props.get("tile")
    if not isinstance(raw, Mapping) or not isinstance(tile, int) or not 0 <= tile < grid.count:
        raise ProtocolError(
            ErrorCode.INVALID_VALUE,
            f"a pending feature needs properties '{GRID_GEOMETRY}' and 'tile' (one of the grid's {grid.count} tiles), "
            f"found tile {tile!r}; pass back the pending pieces exactly as this job streamed them",
        )
    try:
        kind = FeatureKind(props.get("kind"))
        geometry = shapely.geometry.shape(raw)
        score = float(props.get("score", 0.0))
    except (ValueError, TypeError, AttributeError, shapely.errors.GEOSException) as exc:
        raise ProtocolError(ErrorCode.INVALID_VALUE, f"a pending feature of tile {tile} is malformed: {exc}") from None
    extra = {k: v for k, v in props.items() if k not in ("kind", "label", "score", "tile", GRID_GEOMETRY)}
    return Piece(kind, str(props.get("label", "")), score, tile, geometry, extra)


# --- areas --------------------------------------------------------------------------------------


def _merge_areas(group: Sequence[Piece]) -> list[Piece]:
    """Union of one label's pieces, split into connected polygons; each scored by the best piece inside it."""
    union = shapely.union_all([p.geometry for p in group])
    tree = shapely.STRtree([p.geometry for p in group])
    out = []
    for part in sorted(_polygons(union), key=lambda g: (g.bounds, g.area)):
        inside = [group[i] for i in sorted(tree.query(part, predicate="intersects"))]
        inside = [p for p in inside if p.geometry.intersection(part).area > 0] or inside
        best = max(inside, key=lambda p: (p.score, -p.tile))
        tiles = sorted({p.tile for p in inside})
        props = {**best.properties, "tiles": ",".join(map(str, tiles))}
        out.append(Piece(best.kind, best.label, best.score, tiles[0], part, props))
    return out


def _polygons(geom: BaseGeometry) -> list[Polygon]:
    """The polygons (with area) of any geometry, e.g. a clip that also left lines or points."""
    out: list[Polygon] = []
    for part in shapely.get_parts(geom):
        if isinstance(part, Polygon):
            if part.area > 0:
                out.append(part)
        elif part.geom_type in ("MultiPolygon", "GeometryCollection"):
            out.extend(_polygons(part))
    return out


def _touches(bounds: Bounds, box: Bounds, neighbours: tuple[bool, bool, bool, bool], eps: float) -> bool:
    """Whether ``bounds`` reaches (or passes) a side of ``box`` that has a neighbouring tile."""
    xmin, ymin, xmax, ymax = bounds
    bx0, by0, bx1, by1 = box
    west, north, east, south = neighbours
    return (
        (west and xmin <= bx0 + eps)
        or (east and xmax >= bx1 - eps)
        or (north and ymax >= by1 - eps)
        or (south and ymin <= by0 + eps)
    )


# --- boxes --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Box:
    piece: Piece
    bounds: Bounds
    cut: tuple[bool, bool, bool, bool]  # the box reaches its window's west/north/east/south edge, with a tile beyond


def _merge_boxes(group: Sequence[Piece], grid: TileGrid) -> list[Piece]:
    """Duplicates and cut pieces of one label joined (union-find over overlapping boxes)."""
    eps = grid.pixel_size * 1e-6
    boxes = [_box(p, grid, eps) for p in group]
    tree = shapely.STRtree([shapely.geometry.box(*b.bounds) for b in boxes])
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, box in enumerate(boxes):
        for j in sorted(tree.query(shapely.geometry.box(*box.bounds), predicate="intersects")):
            if j > i and _same_object(box, boxes[j], eps):
                parent[root(j)] = root(i)
    clusters: dict[int, list[_Box]] = {}
    for i, box in enumerate(boxes):
        clusters.setdefault(root(i), []).append(box)
    return [_joined(members) for _, members in sorted(clusters.items())]


def _box(piece: Piece, grid: TileGrid, eps: float) -> _Box:
    tile = grid.tile(piece.tile)
    bounds = piece.geometry.bounds
    window = grid.bounds(tile.window)
    west, north, east, south = tile.neighbours
    cut = (
        west and bounds[0] <= window[0] + eps,
        north and bounds[3] >= window[3] - eps,
        east and bounds[2] >= window[2] - eps,
        south and bounds[1] <= window[1] + eps,
    )
    return _Box(piece, bounds, cut)


def _same_object(a: _Box, b: _Box, eps: float) -> bool:
    ox = min(a.bounds[2], b.bounds[2]) - max(a.bounds[0], b.bounds[0])
    oy = min(a.bounds[3], b.bounds[3]) - max(a.bounds[1], b.bounds[1])
    if ox < -eps or oy < -eps:
        return False
    inter = max(ox, 0.0) * max(oy, 0.0)
    area_a, area_b = _area(a.bounds), _area(b.bounds)
    if inter > 0 and (
        inter / (area_a + area_b - inter) >= DUPLICATE_IOU or inter / min(area_a, area_b) >= DUPLICATE_IOS
    ):
        return True
    width, height = min(_width(a), _width(b)), min(_height(a), _height(b))
    across_x = (a.cut[2] and b.cut[0]) or (a.cut[0] and b.cut[2])
    across_y = (a.cut[1] and b.cut[3]) or (a.cut[3] and b.cut[1])
    return bool(
        (across_x and height > 0 and oy / height >= CUT_OVERLAP)
        or (across_y and width > 0 and ox / width >= CUT_OVERLAP)
    )


def _joined(members: Sequence[_Box]) -> Piece:
    """One box for a cluster: the best-scoring one, or the bounding box of all when some were cut by a window edge."""
    best = max(members, key=lambda b: (b.piece.score, -b.piece.tile)).piece
    tiles = sorted({b.piece.tile for b in members})
    geometry = best.geometry
    if len(members) > 1 and any(any(b.cut) for b in members):
        xs0, ys0, xs1, ys1 = zip(*(b.bounds for b in members))
        geometry = shapely.geometry.box(min(xs0), min(ys0), max(xs1), max(ys1))
    return Piece(
        best.kind, best.label, best.score, best.tile, geometry, {**best.properties, "tiles": ",".join(map(str, tiles))}
    )


def _area(bounds: Bounds) -> float:
    return max(bounds[2] - bounds[0], 0.0) * max(bounds[3] - bounds[1], 0.0)


def _width(box: _Box) -> float:
    return box.bounds[2] - box.bounds[0]


def _height(box: _Box) -> float:
    return box.bounds[3] - box.bounds[1]


# --- helpers ------------------------------------------------------------------------------------


def _piece(feature: Mapping[str, Any], tile: int) -> Piece:
    props = dict(feature.get("properties") or {})
    kind = FeatureKind(props.pop("kind"))
    label = str(props.pop("label", ""))
    score = float(props.pop("score", 0.0))
    props.pop("image", None)
    return Piece(kind, label, score, tile, shapely.geometry.shape(feature["geometry"]), props)


@functools.lru_cache(maxsize=64)
def _transformer(src: str, dst: str) -> pyproj.Transformer | None:
    source, target = parse_crs(src), parse_crs(dst)
    if source == target:
        return None
    return pyproj.Transformer.from_crs(source, target, always_xy=True)


__all__ = ["GRID_GEOMETRY", "Piece", "Reprojector", "from_pending", "merge", "split_tile", "to_feature"]
