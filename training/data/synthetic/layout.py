"""Laying out a scene: themes, the road network, rivers and the grid of blocks.

:func:`generate_layout` builds a scene in a local frame (a grid of blocks, rotated against north
in most scenes): a road on every grid line for towns, a few meandering roads and tracks in the
country, sometimes a river, then one land-use filler per block chosen by the scene's theme
(``blocks.py``), and vehicles on the roads. Sizes are drawn in metres and converted with the
scene's ground sampling distance, so a 0.1 m scene shows part of a garden or a street, a 0.3 m
scene a few houses and a 2 m scene a quarter of a town.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np
import shapely
from shapely import ops
from shapely.geometry import LineString, Point, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.prepared import prep

from training.data.synthetic.blocks import FILLERS, Block, Builder, vehicle
from training.data.synthetic.classes import ObjectClass
from training.data.synthetic.graph import Z_ROAD, Z_WATER, Feature, Layout, move_all
from training.data.synthetic.shapes import Frame, largest_polygon, wiggly_line

log = logging.getLogger(__name__)

THEMES = ("urban", "suburban", "industrial", "rural", "natural")
THEME_WEIGHTS = (0.17, 0.25, 0.15, 0.26, 0.17)
SEASONS = ("spring", "summer", "autumn", "winter")

GSD_RANGE = (0.1, 2.0)
"""Ground sampling distances (metres per pixel) that scenes are drawn with (log-uniform)."""
GSD_BANDS: tuple[tuple[float, float], ...] = ((0.1, 0.3), (0.3, 0.7), (0.7, 2.0))
"""The pixel-size bands that evaluations report figures in (metres; a band holds ``low <= gsd < high``,
the last one its upper end too)."""


def gsd_band(gsd: float) -> str:
    """The name of the :data:`GSD_BANDS` band that ``gsd`` falls in ("0.1-0.3 m", "0.3-0.7 m", "0.7-2 m",
    as ``training.eval.rsa`` names them); pixel sizes outside the drawn range go to the nearest band."""
    for low, high in GSD_BANDS:
        if gsd < high:
            return f"{low:g}-{high:g} m"
    low, high = GSD_BANDS[-1]
    return f"{low:g}-{high:g} m"


LAND_USE: dict[str, dict[str, float]] = {
    "urban": {"apartments": 0.35, "commercial": 0.22, "houses": 0.15, "park": 0.15, "bare": 0.06, "industrial": 0.07},
    "suburban": {
        "houses": 0.6,
        "park": 0.1,
        "apartments": 0.08,
        "commercial": 0.08,
        "meadow": 0.07,
        "water": 0.04,
        "bare": 0.03,
    },
    "industrial": {"industrial": 0.55, "commercial": 0.15, "bare": 0.12, "meadow": 0.1, "park": 0.03, "houses": 0.05},
    "rural": {"field": 0.58, "forest": 0.1, "meadow": 0.1, "farmstead": 0.12, "water": 0.06, "bare": 0.04},
    "natural": {"forest": 0.45, "meadow": 0.25, "water": 0.15, "field": 0.1, "bare": 0.05},
}

BLOCK_M: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    # (along-x block length range, along-y block depth range) in metres
    "urban": ((80, 170), (60, 120)),
    "suburban": ((120, 260), (40, 80)),
    "industrial": ((110, 240), (80, 180)),
    "rural": ((120, 380), (100, 300)),
    "natural": ((150, 420), (150, 420)),
}
GRID_ROADS = ("urban", "suburban", "industrial")
FINE_GSD = 0.3
"""Below this pixel size a view spans tens of metres, less than a block: the block grid is shifted so
that a block edge (a street in towns) crosses it, in one or both directions."""
RIVER_CHANCE = {"urban": 0.08, "suburban": 0.12, "industrial": 0.1, "rural": 0.2, "natural": 0.3}


# --------------------------------------------------------------------------------------------
# Roads, rivers and blocks (local frame)


@dataclass(frozen=True)
class _Road:
    line: LineString
    width: float
    kind: str
    style: str
    grid: bool


def _cuts(b: Builder, extent: float, metres: tuple[float, float]) -> list[float]:
    cuts = [-extent + b.rng.uniform(0, 1) * b.m(metres[1]) - b.m(metres[1])]
    while cuts[-1] < extent:
        cuts.append(cuts[-1] + b.um(*metres))
    return cuts


def _through_view(b: Builder, cuts: list[float], extent: float, size: int, metres: tuple[float, float]) -> list[float]:
    """``cuts`` shifted so that the one nearest the view's centre lies in its middle half, and
    extended to cover ``[-extent, extent]`` again."""
    nearest = min(cuts, key=abs)
    shift = float(b.rng.uniform(-0.25, 0.25)) * size - nearest
    moved = [c + shift for c in cuts]
    while moved[0] > -extent:
        moved.insert(0, moved[0] - b.um(*metres))
    while moved[-1] < extent:
        moved.append(moved[-1] + b.um(*metres))
    while len(moved) > 2 and moved[1] <= -extent:
        moved.pop(0)
    while len(moved) > 2 and moved[-2] >= extent:
        moved.pop()
    return moved


def _roads(b: Builder, theme: str, extent: float, xs: list[float], ys: list[float]) -> list[_Road]:
    roads: list[_Road] = []
    if theme in GRID_ROADS:
        widths = {"urban": (8, 15), "suburban": (6, 9), "industrial": (8, 13)}[theme]
        for x in xs:
            roads.append(_Road(LineString([(x, -extent), (x, extent)]), b.um(*widths), "road", "asphalt", True))
        for y in ys:
            roads.append(_Road(LineString([(-extent, y), (extent, y)]), b.um(*widths), "road", "asphalt", True))
        return roads
    count = {"rural": int(b.rng.integers(1, 3)), "natural": int(b.rng.integers(0, 2))}[theme]
    for _ in range(count):
        line = wiggly_line(b.rng, *_crossing(b, extent), extent * b.rng.uniform(0.05, 0.25))
        style = b.pick({"asphalt": 0.7, "concrete": 0.1, "dirt": 0.2})
        roads.append(_Road(line, b.um(5, 8), "road" if style != "dirt" else "track", style, False))
    if theme == "rural" and len(xs) > 2 and b.rng.uniform() < 0.5:
        x = xs[int(b.rng.integers(1, len(xs) - 1))]
        roads.append(_Road(LineString([(x, -extent), (x, extent)]), b.um(3, 4.5), "track", "dirt", True))
    return roads


def _road_feature(b: Builder, road: _Road) -> Feature:
    shape = road.line.buffer(road.width / 2, cap_style="flat")
    marks = None
    if road.style != "dirt" and road.width >= b.m(6) and b.ppm >= 1.4:
        dash, period = b.m(3), b.m(b.rng.choice([9.0, 12.0]))
        starts = np.arange(b.rng.uniform(0, period), road.line.length - dash, period)
        dashes = [ops.substring(road.line, s, s + dash) for s in starts]
        if dashes:
            marks = shapely.union_all(shapely.buffer(dashes, max(b.m(0.08), 0.3), cap_style="flat"))
    return b.add(ObjectClass.ROAD, road.kind, shape, Z_ROAD, style=road.style, marks=marks)


def _road_vehicles(b: Builder, road: _Road, junctions: shapely.STRtree, view: BaseGeometry, per_km: float) -> None:
    """Vehicles driving on ``road`` inside ``view``, in their lane, away from junctions."""
    if road.style == "dirt" or per_km <= 0:
        return
    length_m = road.line.length / b.ppm
    count = int(b.rng.poisson(per_km * length_m / 1000))
    for d in np.sort(b.rng.uniform(0, road.line.length, count)):
        p, q = road.line.interpolate(d), road.line.interpolate(min(d + 1.0, road.line.length))
        if p.distance(q) < 1e-6 or not view.contains(p):
            continue
        tx, ty = (q.x - p.x) / p.distance(q), (q.y - p.y) / p.distance(q)
        lane = 1.0 if b.rng.uniform() < 0.5 else -1.0
        x, y = p.x - ty * lane * road.width / 4, p.y + tx * lane * road.width / 4
        if len(junctions.query(Point(x, y), predicate="intersects")) > 1:
            continue
        kind = "truck" if b.rng.uniform() < 0.12 else "car"
        angle = math.atan2(ty, tx) + (math.pi if lane < 0 else 0.0)
        vehicle(b, x, y, angle, kind)


def generate_layout(
    rng: np.random.Generator, size: int, gsd: float, theme: str | None = None, season: str | None = None
) -> Layout:
    """Draw a scene graph of ``size`` x ``size`` pixels at ``gsd`` metres per pixel."""
    theme = theme or str(rng.choice(THEMES, p=THEME_WEIGHTS))
    season = season or str(rng.choice(SEASONS))
    b = Builder(rng, 1.0 / gsd, season)
    grid_angle = 0.0 if rng.uniform() < 0.35 else float(rng.uniform(-math.pi / 4, math.pi / 4))
    frame = Frame(grid_angle, size / 2, size / 2)
    extent = size * 0.75 + b.m(40)
    image_local = frame.inverse_geometry(box(0, 0, size, size)).buffer(b.m(25))
    along, depth = BLOCK_M[theme]
    xs, ys = _cuts(b, extent, along), _cuts(b, extent, depth)
    if gsd < FINE_GSD:
        xs = _through_view(b, xs, extent, size, along)
        if b.rng.uniform() < 0.5:
            ys = _through_view(b, ys, extent, size, depth)
    roads = _roads(b, theme, extent, xs[1:-1], ys[1:-1])
    river = _river(b, theme, extent)
    loose = [r.line.buffer(r.width / 2 + b.m(2.5)) for r in roads if not r.grid]
    if river is not None:
        loose.append(river.buffer(b.m(6)))
    tree = shapely.STRtree(loose)
    grid_x = {r.line.coords[0][0]: r.width / 2 for r in roads if r.grid and r.line.coords[0][0] == r.line.coords[1][0]}
    grid_y = {r.line.coords[0][1]: r.width / 2 for r in roads if r.grid and r.line.coords[0][1] == r.line.coords[1][1]}
    verge = b.m(2.5)
    for x0, x1 in zip(xs[:-1], xs[1:]):
        for y0, y1 in zip(ys[:-1], ys[1:]):
            rect = box(
                x0 + grid_x.get(x0, -verge) + verge,
                y0 + grid_y.get(y0, -verge) + verge,
                x1 - grid_x.get(x1, -verge) - verge,
                y1 - grid_y.get(y1, -verge) - verge,
            )
            if rect.is_empty or not rect.intersects(image_local):
                continue
            area: BaseGeometry = rect
            for index in tree.query(rect):
                area = area.difference(loose[index])
            sides = (y0 in grid_y, y1 in grid_y, x1 in grid_x, x0 in grid_x)
            _fill_block(b, theme, rect, largest_polygon(area), sides)
    per_km = {"urban": 25.0, "suburban": 8.0, "industrial": 10.0, "rural": 3.0, "natural": 1.5}[theme]
    junctions = shapely.STRtree([r.line.buffer(r.width / 2 + b.m(10)) for r in roads])
    view_local = prep(image_local)
    for road in roads:
        if road.line.intersects(image_local):
            _road_feature(b, road)
            _road_vehicles(b, road, junctions, view_local, per_km)
    if river is not None:
        b.add(ObjectClass.WATER, "river", river, Z_WATER, style=b.pick({"clear": 0.5, "murky": 0.5}))
    view = box(0, 0, size, size).buffer(b.m(30))
    moved = move_all(b.features, frame)
    inside = shapely.intersects(np.array([f.geometry for f in moved], dtype=object), view) if moved else []
    kept = [f for f, ok in zip(moved, inside) if ok]
    features = tuple(replace(f, key=i + 1) for i, f in enumerate(kept))
    log.debug("layout %s/%s at %.2f m: %d features", theme, season, gsd, len(features))
    return Layout(size, gsd, theme, season, features)


def _crossing(b: Builder, extent: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """Two points on a circle of radius ``extent`` roughly opposite each other (a line across)."""
    a = b.rng.uniform(0, 2 * math.pi)
    c = a + math.pi + b.rng.normal(0, 0.5)
    return (extent * math.cos(a), extent * math.sin(a)), (extent * math.cos(c), extent * math.sin(c))


def _river(b: Builder, theme: str, extent: float) -> Polygon | None:
    if b.rng.uniform() >= RIVER_CHANCE[theme]:
        return None
    line = wiggly_line(b.rng, *_crossing(b, extent), extent * b.rng.uniform(0.05, 0.3))
    return line.buffer(b.um(8, 40) / 2, cap_style="flat")


def _fill_block(b: Builder, theme: str, rect: Polygon, area: Polygon, roads: tuple[bool, bool, bool, bool]) -> None:
    """Fill one block: move it to its canonical frame (long axis along x), fill, move back."""
    if area.area < b.m(12) ** 2:
        return
    x0, y0, x1, y1 = rect.bounds
    turn = (x1 - x0) < (y1 - y0)
    frame = Frame(math.pi / 2 if turn else 0.0, (x0 + x1) / 2, (y0 + y1) / 2)
    hl, hd = ((y1 - y0) / 2, (x1 - x0) / 2) if turn else ((x1 - x0) / 2, (y1 - y0) / 2)
    local = frame.inverse_geometry(area)
    first = len(b.features)
    use = b.pick(LAND_USE[theme])
    b.inside = prep(local)
    FILLERS[use](b, Block(hl, hd, local, roads[2:] if turn else roads[:2]))
    b.inside = None
    b.features[first:] = move_all(b.features[first:], frame)
