"""Filling one block of a layout: land-use fillers and the objects they place.

A filler gets a :class:`Block` in its canonical frame (long axis along x, centred on the origin)
and appends features through a :class:`Builder`, which draws sizes in metres and converts them
to pixels, and drops any structure that leaves the block's free area (roads and rivers are cut
out of it). Fillers: houses with gardens, apartment blocks, shops with parking lots, industry
(warehouses, tank farms, truck parks), parks with ponds, crop fields, forest, meadows,
construction sites, lakes and farmsteads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Point, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.prepared import PreparedGeometry

from training.data.synthetic.classes import ObjectClass
from training.data.synthetic.graph import Z_LAND, Z_ROAD, Z_STRUCTURE, Z_TREE, Z_VEHICLE, Z_WATER, Feature
from training.data.synthetic.shapes import Disc, Rect, blob, largest_polygon, wavy_edges


@dataclass
class Builder:
    """Mutable state while a layout is built: the random stream and the features so far."""

    rng: np.random.Generator
    ppm: float
    season: str
    features: list[Feature] = field(default_factory=list)
    inside: PreparedGeometry | None = None
    """While a block is filled: its free area; structures that do not fit in it are dropped."""

    def m(self, metres: float) -> float:
        """``metres`` in pixels."""
        return metres * self.ppm

    def um(self, low: float, high: float) -> float:
        """A uniform draw in metres, returned in pixels."""
        return float(self.rng.uniform(low, high)) * self.ppm

    def pick(self, options: dict[str, float]) -> str:
        names = list(options)
        weights = np.array([options[n] for n in names], dtype=float)
        return names[int(self.rng.choice(len(names), p=weights / weights.sum()))]

    def add(self, cls: ObjectClass, kind: str, geometry: BaseGeometry, z: int, **look: object) -> Feature | None:
        """Append a feature; ``None`` (and nothing added) when a structure leaves the block's free area."""
        if self.inside is not None and z > Z_LAND:
            probe = geometry.centroid if cls == ObjectClass.TREE else geometry
            if not self.inside.contains(probe):
                return None
        feature = Feature(len(self.features) + 1, cls, kind, geometry, z, tone=float(self.rng.uniform()), **look)  # type: ignore[arg-type]
        self.features.append(feature)
        return feature


@dataclass(frozen=True)
class Block:
    """A block in its canonical frame: long axis along x, ``[-hl, hl] x [-hd, hd]`` pixels."""

    hl: float
    hd: float
    area: Polygon
    roads: tuple[bool, bool]
    """Whether a road runs along the block's y = -hd and y = +hd sides."""


# --------------------------------------------------------------------------------------------
# Palettes of words (the renderer maps them to colours)

ROOF_PITCHED = {"red": 0.36, "brown": 0.2, "dark grey": 0.26, "light grey": 0.1, "green": 0.04, "blue": 0.04}
ROOF_FLAT = {"light grey": 0.38, "dark grey": 0.26, "white": 0.24, "brown": 0.06, "green": 0.06}
ROOF_METAL = {"light grey": 0.32, "white": 0.2, "blue": 0.2, "dark grey": 0.16, "green": 0.07, "red": 0.05}
CAR_COLOURS = {"white": 0.28, "black": 0.18, "silver": 0.2, "grey": 0.14, "red": 0.1, "blue": 0.1}
TRUCK_COLOURS = {"white": 0.5, "grey": 0.25, "red": 0.1, "blue": 0.1, "yellow": 0.05}
CROPS = {
    "spring": {"young crop": 0.4, "ploughed": 0.3, "green": 0.3},
    "summer": {"wheat": 0.4, "maize": 0.25, "green": 0.2, "stubble": 0.15},
    "autumn": {"stubble": 0.35, "ploughed": 0.35, "maize": 0.15, "green": 0.15},
    "winter": {"ploughed": 0.45, "winter crop": 0.35, "stubble": 0.2},
}
ROW_SPACING_M = {
    "young crop": (0.7, 1.6),
    "ploughed": (0.8, 1.6),
    "green": (0.5, 1.2),
    "wheat": (0.3, 0.6),
    "maize": (0.75, 1.0),
    "stubble": (0.4, 1.2),
    "winter crop": (0.3, 0.8),
}


# --------------------------------------------------------------------------------------------
# Object builders (canonical block coordinates)


def _tree(b: Builder, x: float, y: float, r: float) -> None:
    style = b.pick({"deciduous": 0.8, "conifer": 0.2})
    crown = blob(b.rng, x, y, r, r * b.rng.uniform(0.85, 1.0), b.rng.uniform(0, math.pi), 0.1, 20)
    height = r / b.ppm * b.rng.uniform(2.2, 3.6)
    b.add(ObjectClass.TREE, "tree", crown, Z_TREE, style=style, height_m=height, discs=(Disc(x, y, r),))


def _scatter_trees(
    b: Builder, region: BaseGeometry, count: int, avoid: list[BaseGeometry], r_range: tuple[float, float] = (2.0, 4.5)
) -> None:
    """Up to ``count`` trees inside ``region``, apart from each other and off ``avoid``."""
    if count <= 0 or region.is_empty or b.m(r_range[1]) < 2.0:
        return
    x0, y0, x1, y1 = region.bounds
    n = 6 * count + 10
    xs, ys = b.rng.uniform(x0, x1, n), b.rng.uniform(y0, y1, n)
    radii = b.rng.uniform(max(r_range[0], 1.2 / b.ppm), r_range[1], n) * b.ppm
    ok = shapely.contains_xy(region, xs, ys)
    if avoid:
        blocked = shapely.union_all(avoid)
        ok &= shapely.distance(blocked, shapely.points(xs, ys)) > 0.6 * radii
    placed: list[tuple[float, float, float]] = []
    for x, y, r in zip(xs[ok], ys[ok], radii[ok]):
        if all((x - px) ** 2 + (y - py) ** 2 > (0.8 * (r + pr)) ** 2 for px, py, pr in placed):
            placed.append((float(x), float(y), float(r)))
            if len(placed) == count:
                break
    for x, y, r in placed:
        _tree(b, x, y, r)


def vehicle(b: Builder, x: float, y: float, angle: float, kind: str) -> Feature | None:
    if kind == "car":
        length, width, height, colours = b.rng.uniform(4.1, 4.9), b.rng.uniform(1.7, 1.9), 1.5, CAR_COLOURS
    else:
        length, width, height, colours = b.rng.uniform(8.0, 16.0), b.rng.uniform(2.4, 2.6), 3.6, TRUCK_COLOURS
    if b.m(length) < 4.0:
        return None
    rect = Rect(x, y, angle, b.m(length) / 2, b.m(width) / 2)
    return b.add(
        ObjectClass.VEHICLE, kind, rect.polygon(), Z_VEHICLE, style=b.pick(colours), height_m=height, rects=(rect,)
    )


def _building(b: Builder, rects: list[Rect], kind: str, roof: str, style: str, height: float) -> Feature | None:
    geometry = rects[0].polygon() if len(rects) == 1 else shapely.union_all([r.polygon() for r in rects])
    marks = _rooftop_units(b, rects[0]) if roof == "flat" else None
    return b.add(
        ObjectClass.BUILDING,
        kind,
        geometry,
        Z_STRUCTURE,
        style=style,
        height_m=height,
        rects=tuple(rects),
        roof=roof,
        marks=marks,
    )


def _rooftop_units(b: Builder, rect: Rect) -> BaseGeometry | None:
    """Small boxes on a flat roof (air handling units, skylights, stair housings)."""
    inner_l, inner_w = rect.half_len - b.m(2.0), rect.half_wid - b.m(2.0)
    if inner_l <= b.m(2) or inner_w <= b.m(2) or b.m(1.5) < 1.5:
        return None
    count = min(int(b.rng.poisson(rect.half_len * rect.half_wid * 4 / b.m(20) ** 2)), 12)
    units = [Rect(rect.cx, rect.cy, rect.angle, b.um(0.7, 2.0), b.um(0.7, 1.5)) for _ in range(count)]
    c, s = math.cos(rect.angle), math.sin(rect.angle)
    placed = []
    for unit in units:
        u, v = b.rng.uniform(-1, 1) * (inner_l - unit.half_len), b.rng.uniform(-1, 1) * (inner_w - unit.half_wid)
        placed.append(
            Rect(rect.cx + c * u - s * v, rect.cy + s * u + c * v, rect.angle, unit.half_len, unit.half_wid).polygon()
        )
    return MultiPolygon(placed) if placed else None


def _tank(b: Builder, x: float, y: float, r: float, kind: str) -> None:
    roof = "fixed" if kind == "silo" else b.pick({"floating": 0.55, "fixed": 0.45})
    height = b.rng.uniform(10, 16) if kind == "silo" else b.rng.uniform(8, 18)
    style = b.pick(
        {"white": 0.6, "light grey": 0.3, "green": 0.1} if kind == "storage tank" else {"light grey": 0.6, "white": 0.4}
    )
    b.add(
        ObjectClass.STORAGE_TANK,
        kind,
        Point(x, y).buffer(r, quad_segs=16),
        Z_STRUCTURE,
        style=style,
        height_m=height,
        discs=(Disc(x, y, r),),
        roof=roof,
    )


def _parking(b: Builder, x0: float, y0: float, x1: float, y1: float, trucks: bool = False) -> None:
    """A parking lot on the axis-aligned box, with stall lines and parked cars (or trucks)."""
    stall_w, stall_d, aisle = (b.m(4.0), b.m(18.0), b.m(12.0)) if trucks else (b.m(2.6), b.m(5.0), b.m(6.5))
    band = 2 * stall_d + aisle
    n_bands = int((y1 - y0 - b.m(1)) // band)
    n_stalls = int((x1 - x0 - b.m(2)) // stall_w)
    sx0 = x0 + ((x1 - x0) - n_stalls * stall_w) / 2
    by0 = y0 + b.m(0.5) + ((y1 - y0 - b.m(1)) - n_bands * band) / 2
    rows = [
        (by0 + i * band + offset, facing)
        for i in range(n_bands)
        for offset, facing in ((0.0, 1.0), (stall_d + aisle, -1.0))
    ]
    line_w = max(b.m(0.15), 0.5)
    lines = [
        box(
            sx0 + k * stall_w - line_w / 2, row_y + b.m(0.3), sx0 + k * stall_w + line_w / 2, row_y + stall_d - b.m(0.3)
        )
        for row_y, _ in rows
        for k in range(n_stalls + 1)
    ]
    marks = MultiPolygon(lines) if lines and b.ppm >= 1.2 else None
    lot = b.add(
        ObjectClass.PARKING_LOT,
        "parking lot",
        box(x0, y0, x1, y1),
        Z_ROAD,
        style=b.pick({"asphalt": 0.75, "concrete": 0.25}),
        marks=marks,
    )
    if lot is None:
        return
    occupancy = b.rng.uniform(0.2, 0.9)
    for row_y, facing in rows:
        for k in range(n_stalls):
            if b.rng.uniform() >= occupancy:
                continue
            cx = sx0 + (k + 0.5) * stall_w + b.rng.normal(0, b.m(0.1))
            angle = math.pi / 2 + b.rng.normal(0, 0.03)
            if trucks:
                vehicle(b, cx, row_y + stall_d / 2, angle + (0.0 if facing > 0 else math.pi), "truck")
            else:
                flip = math.pi if b.rng.uniform() < 0.5 else 0.0
                vehicle(b, cx, row_y + stall_d / 2 + facing * b.m(0.1), angle + flip, "car")


# --------------------------------------------------------------------------------------------
# Land-use fillers: each fills one block given in its canonical frame


def _fill_houses(b: Builder, block: Block) -> None:
    b.add(ObjectClass.GRASS, "lawn", block.area, Z_LAND)
    two_rows = 2 * block.hd >= b.m(34)
    rows = (-1.0, 1.0) if two_rows else ((-1.0,) if block.roads[0] or not block.roads[1] else (1.0,))
    lot_d = block.hd if two_rows else 2 * block.hd
    lot_w = b.um(14, 24)
    n = int(2 * block.hl // lot_w)
    start = -block.hl + (2 * block.hl - n * lot_w) / 2
    buildings: list[BaseGeometry] = []
    for side in rows:
        front = side * block.hd
        inward = -side
        for i in range(n):
            if b.rng.uniform() < 0.1:
                continue
            lx = start + (i + 0.5) * lot_w
            house = _house(b, lx, front, inward, lot_w, lot_d)
            if house is not None:
                buildings.append(house)
    trees = int(b.rng.poisson(1.3 * n * len(rows)))
    _scatter_trees(b, block.area.buffer(-b.m(1)), trees, buildings)


def _house(b: Builder, lx: float, front: float, inward: float, lot_w: float, lot_d: float) -> BaseGeometry | None:
    setback = b.um(3, 8)
    along = b.rng.uniform() < 0.7
    half_a = min(b.um(4, 8), lot_w / 2 - b.m(2))
    half_c = b.um(3.5, 5.5)
    half_x, half_y = (half_a, half_c) if along else (half_c, half_a)
    if half_x <= b.m(2.5) or setback + 2 * half_y + b.m(4) > lot_d:
        return None
    cx = lx + b.rng.uniform(-1, 1) * (lot_w / 2 - half_x - b.m(1.5))
    cy = front + inward * (setback + half_y)
    rects = [Rect(cx, cy, 0.0 if along else math.pi / 2, half_a, half_c)]
    if b.rng.uniform() < 0.3:
        wing_l, wing_w = b.um(3, 6), b.um(2.5, 3.8)
        side = 1.0 if b.rng.uniform() < 0.5 else -1.0
        wx = cx + side * (half_x - wing_w)
        wy = cy + inward * (half_y + wing_l - b.m(1.5))
        if abs(wy - front) + wing_l + b.m(3) < lot_d and abs(wx - lx) + wing_w < lot_w / 2 - b.m(1):
            rects.append(Rect(wx, wy, math.pi / 2, wing_l, wing_w))
    roof = b.pick({"gable": 0.55, "hip": 0.32, "flat": 0.13})
    style = b.pick(ROOF_FLAT if roof == "flat" else ROOF_PITCHED)
    house = _building(b, rects, "house", roof, style, float(b.rng.uniform(5, 9)))
    if house is None:
        return None
    if setback > b.m(5.5) and b.rng.uniform() < 0.35:
        vehicle(
            b,
            cx + b.rng.uniform(-0.6, 0.6) * half_x,
            front + inward * setback / 2,
            math.pi / 2 + (math.pi if b.rng.uniform() < 0.5 else 0.0),
            "car",
        )
    if b.season in ("spring", "summer") and b.rng.uniform() < 0.08 and b.m(3) >= 2:
        py = cy + inward * (half_y + b.m(5))
        pool = Rect(lx + b.rng.uniform(-1, 1) * b.m(2), py, 0.0, b.um(3, 5), b.um(1.8, 2.6))
        if abs(py - front) + b.m(5) < lot_d:
            b.add(ObjectClass.WATER, "pool", pool.polygon(), Z_WATER, rects=(pool,))
    return house.geometry


def _fill_apartments(b: Builder, block: Block) -> None:
    b.add(ObjectClass.GRASS, "lawn", block.area, Z_LAND)
    y_top = -block.hd + b.m(3)
    if 2 * block.hd > b.m(55):
        depth = b.um(15, 19)
        _parking(b, -block.hl + b.m(3), -block.hd + b.m(2), block.hl - b.m(3), -block.hd + b.m(2) + depth)
        y_top += depth + b.m(4)
    buildings: list[BaseGeometry] = []
    roof = b.pick({"flat": 0.7, "hip": 0.3})
    style = b.pick(ROOF_FLAT if roof == "flat" else ROOF_PITCHED)
    height = float(b.rng.uniform(10, 30))
    y = y_top
    while True:
        half_w = b.um(6, 8.5)
        if y + 2 * half_w > block.hd - b.m(4):
            break
        x = -block.hl + b.m(5)
        while True:
            half_l = b.um(14, 32)
            if x + 2 * half_l > block.hl - b.m(5):
                break
            rect = Rect(x + half_l, y + half_w, 0.0, half_l, half_w)
            apartments = _building(b, [rect], "apartment block", roof, style, height)
            if apartments is not None:
                buildings.append(apartments.geometry)
            x += 2 * half_l + b.um(10, 20)
        y += 2 * half_w + b.um(14, 24)
    _scatter_trees(b, block.area.buffer(-b.m(2)), int(block.area.area / b.m(14) ** 2 * 0.15), buildings)


def _fill_commercial(b: Builder, block: Block) -> None:
    if b.rng.uniform() < 0.5:
        b.add(ObjectClass.GRASS, "lawn", block.area, Z_LAND)
    length = 2 * block.hl * b.rng.uniform(0.35, 0.6)
    half_w = min(block.hd - b.m(4), b.um(15, 35))
    left = b.rng.uniform() < 0.5
    bx = -block.hl + b.m(4) + length / 2 if left else block.hl - b.m(4) - length / 2
    rect = Rect(bx, 0.0, 0.0, length / 2, half_w)
    building = _building(b, [rect], "commercial building", "flat", b.pick(ROOF_FLAT), float(b.rng.uniform(6, 12)))
    px0, px1 = (bx + length / 2 + b.m(6), block.hl - b.m(3)) if left else (-block.hl + b.m(3), bx - length / 2 - b.m(6))
    if px1 - px0 > b.m(20):
        _parking(b, px0, -block.hd + b.m(3), px1, block.hd - b.m(3))
    _scatter_trees(
        b,
        block.area.buffer(-b.m(1)).difference(block.area.buffer(-b.m(5))),
        int(block.hl / b.m(12)),
        [] if building is None else [building.geometry],
    )


def _fill_industrial(b: Builder, block: Block) -> None:
    if b.rng.uniform() < 0.6:
        b.add(ObjectClass.BARE_SOIL, "yard", block.area, Z_LAND, style=b.pick({"dusty": 0.6, "dark": 0.4}))
    split = b.rng.uniform(-0.3, 0.3) * block.hl
    parts = [(-block.hl + b.m(4), split - b.m(4)), (split + b.m(4), block.hl - b.m(4))]
    uses = [b.pick({"tanks": 0.5, "warehouse": 0.35, "parking": 0.15}) for _ in parts]
    for (x0, x1), use in zip(parts, uses):
        if x1 - x0 < b.m(15):
            continue
        y0, y1 = -block.hd + b.m(4), block.hd - b.m(4)
        if use == "tanks":
            r = b.um(6, 16)
            gap = b.um(4, 10)
            nx, ny = int((x1 - x0) // (2 * r + gap)), int((y1 - y0) // (2 * r + gap))
            ox = x0 + (x1 - x0 - nx * (2 * r + gap)) / 2 + r + gap / 2
            oy = y0 + (y1 - y0 - ny * (2 * r + gap)) / 2 + r + gap / 2
            for i in range(nx):
                for j in range(ny):
                    if b.rng.uniform() < 0.85:
                        _tank(
                            b,
                            ox + i * (2 * r + gap),
                            oy + j * (2 * r + gap),
                            r * b.rng.uniform(0.9, 1.0),
                            "storage tank",
                        )
        elif use == "warehouse":
            half_l, half_w = (x1 - x0) / 2 * b.rng.uniform(0.6, 0.95), (y1 - y0) / 2 * b.rng.uniform(0.4, 0.85)
            rect = Rect((x0 + x1) / 2, b.rng.uniform(-1, 1) * ((y1 - y0) / 2 - half_w), 0.0, half_l, half_w)
            _building(
                b,
                [rect],
                "warehouse",
                b.pick({"flat": 0.8, "gable": 0.2}),
                b.pick(ROOF_METAL),
                float(b.rng.uniform(7, 14)),
            )
        else:
            _parking(b, x0, y0, x1, y1, trucks=b.rng.uniform() < 0.6)


def _fill_park(b: Builder, block: Block) -> None:
    b.add(ObjectClass.GRASS, "park", block.area, Z_LAND)
    avoid: list[BaseGeometry] = []
    if b.rng.uniform() < 0.5:
        pond = _pond(b, block, 0.5)
        if pond is not None:
            avoid.append(pond)
    _scatter_trees(b, block.area.buffer(-b.m(2)), int(block.area.area / b.m(12) ** 2 * b.rng.uniform(0.1, 0.5)), avoid)


def _pond(b: Builder, block: Block, scale: float) -> BaseGeometry | None:
    rx = min(block.hl, block.hd * 1.6) * scale * b.rng.uniform(0.5, 1.0)
    ry = min(block.hd * scale * b.rng.uniform(0.5, 1.0), rx)
    cx = b.rng.uniform(-1, 1) * (block.hl - rx) * 0.6
    cy = b.rng.uniform(-1, 1) * (block.hd - ry) * 0.6
    shape = blob(b.rng, cx, cy, rx, ry, b.rng.uniform(-0.4, 0.4), 0.25).intersection(block.area.buffer(-b.m(4)))
    shape = largest_polygon(shape)
    if shape.area < b.m(6) ** 2:
        return None
    kind = "lake" if shape.area > b.m(80) ** 2 else "pond"
    b.add(ObjectClass.WATER, kind, shape, Z_WATER, style=b.pick({"clear": 0.6, "murky": 0.4}))
    return shape


def _fill_field(b: Builder, block: Block) -> None:
    n = int(b.rng.integers(1, 5))
    cuts = np.sort(b.rng.uniform(-block.hl, block.hl, n - 1))
    edges = [-block.hl, *cuts.tolist(), block.hl]
    for x0, x1 in zip(edges[:-1], edges[1:]):
        gap = b.um(1.0, 3.0)
        parcel = largest_polygon(box(x0 + gap, -block.hd + gap, x1 - gap, block.hd - gap).intersection(block.area))
        if parcel.area < b.m(10) ** 2:
            continue
        crop = b.pick(CROPS[b.season])
        spacing = b.um(*ROW_SPACING_M[crop])
        angle = (0.0 if b.rng.uniform() < 0.5 else math.pi / 2) + b.rng.normal(0, 0.02)
        b.add(ObjectClass.CROP, "field", parcel, Z_LAND, style=crop, rows=(angle, spacing))


def _fill_forest(b: Builder, block: Block) -> None:
    core = largest_polygon(block.area.buffer(-b.m(3)))
    if core.area < b.m(15) ** 2:
        return
    shape = wavy_edges(b.rng, core, b.m(4), b.m(45), detail=max(b.m(4), 2.0))
    style = b.pick({"deciduous": 0.5, "conifer": 0.25, "mixed": 0.25})
    b.add(ObjectClass.FOREST, "forest", shape, Z_LAND, style=style, height_m=float(b.rng.uniform(12, 25)))
    ring = block.area.buffer(-b.m(1)).difference(shape.buffer(b.m(4)))
    _scatter_trees(b, ring, int(b.rng.integers(0, 6)), [])


def _fill_meadow(b: Builder, block: Block) -> None:
    shape = wavy_edges(b.rng, largest_polygon(block.area.buffer(-b.m(2))), b.m(3), b.m(60))
    if shape.area < b.m(10) ** 2:
        return
    b.add(ObjectClass.GRASS, "meadow", shape, Z_LAND)
    avoid: list[BaseGeometry] = []
    if b.rng.uniform() < 0.25:
        patch = blob(b.rng, *_random_inside(b, block, 0.5), block.hd * 0.4, block.hd * 0.3, b.rng.uniform(0, 3), 0.3)
        patch = largest_polygon(patch.intersection(shape))
        if patch.area > b.m(6) ** 2:
            b.add(ObjectClass.BARE_SOIL, "bare soil", patch, Z_LAND, style=b.pick({"dusty": 0.5, "dark": 0.5}))
            avoid.append(patch)
    _scatter_trees(b, shape.buffer(-b.m(2)), int(b.rng.integers(0, 8)), avoid)


def _fill_bare(b: Builder, block: Block) -> None:
    shape = wavy_edges(b.rng, largest_polygon(block.area.buffer(-b.m(3))), b.m(3), b.m(40))
    if shape.area < b.m(10) ** 2:
        return
    b.add(ObjectClass.BARE_SOIL, "construction site", shape, Z_LAND, style=b.pick({"dusty": 0.6, "dark": 0.4}))
    for _ in range(int(b.rng.integers(0, 4))):
        x, y = _random_inside(b, block, 0.6)
        if shape.buffer(-b.m(8)).contains(Point(x, y)):
            vehicle(b, x, y, b.rng.uniform(0, math.pi), "truck")


def _fill_water(b: Builder, block: Block) -> None:
    b.add(ObjectClass.GRASS, "meadow", block.area, Z_LAND)
    lake = _pond(b, block, 0.85)
    _scatter_trees(b, block.area.buffer(-b.m(2)), int(b.rng.integers(0, 10)), [] if lake is None else [lake])


def _fill_farmstead(b: Builder, block: Block) -> None:
    width = min(2 * block.hl * 0.5, b.um(45, 75))
    x0 = -block.hl if b.rng.uniform() < 0.5 else block.hl - width
    yard_box = box(x0 + b.m(3), -block.hd + b.m(3), x0 + width - b.m(3), min(block.hd - b.m(3), -block.hd + b.m(70)))
    yard = largest_polygon(yard_box.intersection(block.area))
    if yard.area < b.m(30) ** 2:
        _fill_field(b, block)
        return
    rest = largest_polygon(block.area.difference(yard.buffer(b.m(4))))
    if rest.area > b.m(20) ** 2:
        _fill_field(b, Block(block.hl, block.hd, rest, block.roads))
    b.add(ObjectClass.BARE_SOIL, "yard", yard, Z_LAND, style=b.pick({"dusty": 0.6, "dark": 0.4}))
    yx0, yy0, yx1, yy1 = yard.bounds
    placed: list[BaseGeometry] = []
    specs = [
        ("barn", (10, 20), (5, 8), "gable"),
        ("house", (5, 8), (4, 5.5), "gable"),
        ("shed", (3, 6), (2.5, 4), "flat"),
    ]
    for kind, hl_range, hw_range, roof in specs:
        for _ in range(20):
            rect = Rect(
                b.rng.uniform(yx0, yx1),
                b.rng.uniform(yy0, yy1),
                b.rng.choice([0.0, math.pi / 2]),
                b.um(*hl_range),
                b.um(*hw_range),
            )
            poly = rect.polygon()
            if yard.buffer(-b.m(2)).contains(poly) and not any(poly.distance(p) < b.m(4) for p in placed):
                style = b.pick(ROOF_FLAT if roof == "flat" else ROOF_PITCHED)
                building = _building(b, [rect], kind, roof, style, float(b.rng.uniform(5, 10)))
                if building is not None:
                    placed.append(building.geometry)
                break
    for _ in range(int(b.rng.integers(0, 4))):
        r = b.um(2.5, 4.0)
        for _ in range(10):
            x, y = b.rng.uniform(yx0, yx1), b.rng.uniform(yy0, yy1)
            disc = Point(x, y).buffer(r)
            if yard.buffer(-b.m(1)).contains(disc) and not any(disc.distance(p) < b.m(2) for p in placed):
                _tank(b, x, y, r, "silo")
                placed.append(disc)
                break
    _scatter_trees(b, yard.buffer(b.m(8)).difference(yard), int(b.rng.integers(2, 9)), placed)


def _random_inside(b: Builder, block: Block, spread: float) -> tuple[float, float]:
    return float(b.rng.uniform(-1, 1) * block.hl * spread), float(b.rng.uniform(-1, 1) * block.hd * spread)


FILLERS: dict[str, Callable[[Builder, Block], None]] = {
    "houses": _fill_houses,
    "apartments": _fill_apartments,
    "commercial": _fill_commercial,
    "industrial": _fill_industrial,
    "park": _fill_park,
    "field": _fill_field,
    "forest": _fill_forest,
    "meadow": _fill_meadow,
    "bare": _fill_bare,
    "water": _fill_water,
    "farmstead": _fill_farmstead,
}
