"""Bi-temporal pairs: the same place on two dates, with real changes and harmless differences.

Real changes edit the scene graph: buildings built or demolished, trees cut (single trees or a
clearing in a forest), land flooded, a new road. Each change is placed away from the others,
and the change map marks, on the before image's grid, every pixel whose class differs between
the two dates (value = :class:`ChangeKind`). Unchanged pairs exist too (an empty change map).

Harmless differences touch every pair: the second date has other light (sun moved a little,
exposure, white balance, haze), sometimes another season, fresh sensor noise, often the same kind
of sensor (else another) with a fresh colour response and JPEG quality, and is
misregistered by up to 1.5 pixels (the whole layout and its textures shift; its labels shift
with it, so the after scene's own labels stay exact).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import shapely
from shapely.geometry import Point, box
from shapely.geometry.base import BaseGeometry

from training.data.synthetic.annotations import Change, ChangeKind, ScenePair
from training.data.synthetic.blocks import ROOF_FLAT, ROOF_PITCHED
from training.data.synthetic.classes import ObjectClass
from training.data.synthetic.geo import draw_place
from training.data.synthetic.graph import Z_LAND, Z_ROAD, Z_STRUCTURE, Z_WATER, Feature, Layout
from training.data.synthetic.labels import area_m2, class_map, index_map, rasterise
from training.data.synthetic.language import COMPASS, number, region_index
from training.data.synthetic.layout import SEASONS, generate_layout
from training.data.synthetic.looks import draw_soil, next_look
from training.data.synthetic.render import SUN_ELEVATION, Conditions, draw_conditions
from training.data.synthetic.scene import PAIR_STREAM, build_scene, streams
from training.data.synthetic.shapes import Rect, blob, largest_polygon, wavy_edges, wiggly_line
from training.data.synthetic.textures import Textures

log = logging.getLogger(__name__)

C = ObjectClass
CHANGE_CHANCE = 0.7
"""Probability that a pair has real changes when the caller does not say."""
MAX_SHIFT = 1.5
"""Largest misregistration of the second date, in pixels along each axis."""
SOLID = (C.BUILDING, C.STORAGE_TANK, C.TREE, C.VEHICLE, C.ROAD, C.PARKING_LOT, C.WATER)
MIN_CHANGE_FRACTION = 0.001
"""Smallest change kept, as a fraction of the image (262 pixels in a 512 window, as referring targets):
at a coarse pixel size one felled tree or a road stub changes a few pixels, which the model's
224-pixel view of the window cannot see; such an edit is dropped and another kind is tried."""


@dataclass(frozen=True)
class _Edit:
    """A proposed change: the edited layout, what it is about and which keys it adds or removes."""

    layout: Layout
    subject: str
    added: frozenset[int] = frozenset()
    removed: frozenset[int] = frozenset()


def generate_pair(
    seed: int,
    size: int = 512,
    gsd: float | None = None,
    theme: str | None = None,
    changed: bool | None = None,
    looks: bool = True,
) -> ScenePair:
    """The before/after pair of ``seed``; ``changed`` forces or forbids real changes (drawn when None);
    ``looks=False`` renders both dates with the plain look of generator version 1 (see ``generate_scene``)."""
    rng = streams(seed, PAIR_STREAM)
    place = draw_place(rng.place, size, gsd)
    before = generate_layout(rng.layout, size, place.gsd, theme)
    if looks:
        before = replace(before, soil=draw_soil(rng.look, before.theme))
    r = rng.change
    wants_change = bool(r.uniform() < CHANGE_CHANCE) if changed is None else changed
    before_labels = rasterise(before)
    after, changes, change_map = (
        _apply_changes(before, before_labels.class_map, r)
        if wants_change
        else (before, (), np.zeros((size, size), dtype=np.uint8))
    )
    if changed and not changes:
        raise RuntimeError(f"pair {seed}: no change could be placed in this layout")
    if r.uniform() < 0.3:
        after = replace(after, season=SEASONS[(SEASONS.index(before.season) + 1) % len(SEASONS)])
    first = draw_conditions(rng.conditions, rng.look if looks else None)
    second = _second_date(first, r, rng.look if looks else None)
    dx, dy = (float(v) for v in np.round(r.uniform(-MAX_SHIFT, MAX_SHIFT, 2), 2))
    moved = after.moved(dx, dy)
    offset = (int(round(dx)), int(round(dy)))
    before_scene = build_scene(
        seed, before, before_labels, first, Textures(rng.texture_seed, size), place, rng.language
    )
    after_scene = build_scene(
        seed, moved, rasterise(moved), second, Textures(rng.texture_seed, size, offset=offset), place, rng.language
    )
    captions = change_captions(changes, r)
    log.debug("pair %d: %d changes, shift (%.2f, %.2f)", seed, len(changes), dx, dy)
    return ScenePair(seed, before_scene, after_scene, change_map, changes, captions, bool(changes))


def _second_date(first: Conditions, rng: np.random.Generator, look_rng: np.random.Generator | None) -> Conditions:
    """Other light and sensor noise, often the same kind of sensor, fresh haze and compression; the sun
    moves a little."""
    fresh = draw_conditions(rng)
    return replace(
        fresh,
        sun_azimuth=float((first.sun_azimuth + rng.normal(0, 12)) % 360),
        sun_elevation=float(np.clip(first.sun_elevation + rng.normal(0, 6), *SUN_ELEVATION)),
        look=first.look if look_rng is None else next_look(first.look, look_rng),
    )


def _apply_changes(
    before: Layout, before_classes: np.ndarray, rng: np.random.Generator
) -> tuple[Layout, tuple[Change, ...], np.ndarray]:
    """One to three changes of different kinds, each away from the others (a new road at least)."""
    wanted = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    order = [ChangeKind(int(k)) for k in rng.permutation([1, 2, 3, 4, 5])]
    size, gsd = before.size, before.gsd
    change_map = np.zeros((size, size), dtype=np.uint8)
    records: list[tuple[ChangeKind, _Edit]] = []
    current, classes = before, before_classes
    avoid: list[BaseGeometry] = []
    for kind in order + [ChangeKind.NEW_ROAD] * 3:  # new roads last, as the fallback that fits anywhere
        if len(records) == wanted:
            break
        if any(done == kind for done, _ in records):
            continue
        edit = EDITS[kind](current, rng, shapely.union_all(avoid) if avoid else Point())
        if edit is None:
            continue
        new_classes = class_map(edit.layout.painted(), index_map(edit.layout.painted(), size))
        diff = new_classes != classes
        if diff.sum() < MIN_CHANGE_FRACTION * size * size:
            continue
        change_map[diff] = kind
        records.append((kind, edit))
        ys, xs = np.nonzero(diff)
        avoid.append(box(xs.min(), ys.min(), xs.max() + 1, ys.max() + 1).buffer(3.0 / gsd))
        current, classes = edit.layout, new_classes
    visible_before, visible_after = _visible_keys(before), _visible_keys(current)
    changes = []
    for kind, edit in records:
        ys, xs = np.nonzero(change_map == kind)
        where = COMPASS[region_index(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5, size)]
        if kind == ChangeKind.BUILT:
            count = len(edit.added & visible_after)
        elif kind in (ChangeKind.DEMOLISHED, ChangeKind.TREES_CUT) and edit.subject != "forest":
            count = len(edit.removed & visible_before)
        else:
            count = 1
        changes.append(Change(kind, edit.subject, max(count, 1), where, len(xs), area_m2(len(xs), gsd)))
    return current, tuple(changes), change_map


def _visible_keys(layout: Layout) -> frozenset[int]:
    painted = layout.painted()
    counts = np.bincount(index_map(painted, layout.size).ravel(), minlength=len(painted) + 1)
    return frozenset(painted[i - 1].key for i in np.flatnonzero(counts[1:]) + 1)


# --------------------------------------------------------------------------------------------
# The edits


def _inside(layout: Layout, margin: float) -> BaseGeometry:
    return box(margin, margin, layout.size - margin, layout.size - margin)


def _solids(layout: Layout) -> shapely.STRtree:
    return shapely.STRtree([f.geometry for f in layout.features if f.cls in SOLID])


def _hits(tree: shapely.STRtree, geometry: BaseGeometry) -> bool:
    return len(tree.query(geometry, predicate="intersects")) > 0


def _build(layout: Layout, rng: np.random.Generator, avoid: BaseGeometry) -> _Edit | None:
    """One to four new buildings on open land (grass, bare soil, fields or bare ground)."""
    ppm = 1.0 / layout.gsd
    view = _inside(layout, 4 * ppm)
    hosts = [f for f in layout.features if f.cls in (C.GRASS, C.BARE_SOIL, C.CROP) and f.geometry.intersects(view)]
    solids = _solids(layout)
    hosts_area = shapely.union_all([f.geometry for f in hosts]) if hosts else view
    key = layout.next_key()
    new: list[Feature] = []
    placed: list[BaseGeometry] = []
    anchor: tuple[float, float] | None = None
    roof = str(rng.choice(["gable", "hip", "flat"], p=[0.45, 0.3, 0.25]))
    style = str(rng.choice(list(ROOF_FLAT if roof == "flat" else ROOF_PITCHED)))
    target = int(rng.integers(1, 5))
    for _ in range(60):
        if len(new) == target:
            break
        if anchor is None:
            x, y = rng.uniform(0, layout.size, 2)
        else:
            x, y = anchor[0] + rng.normal(0, 25 * ppm), anchor[1] + rng.normal(0, 25 * ppm)
        half_l, half_w = rng.uniform(4, 9) * ppm, rng.uniform(3.5, 5.5) * ppm
        if half_w < 2:
            half_l, half_w = half_l * 2, half_w * 2
        rect = Rect(float(x), float(y), float(rng.choice([0.0, math.pi / 2]) + rng.normal(0, 0.1)), half_l, half_w)
        shape = rect.polygon()
        if (
            not view.contains(shape)
            or not hosts_area.contains(shape)
            or _hits(solids, shape.buffer(2 * ppm))
            or shape.intersects(avoid)
            or any(shape.distance(p) < 3 * ppm for p in placed)
        ):
            continue
        new.append(
            Feature(
                key + len(new),
                C.BUILDING,
                "house" if half_l < 10 * ppm else "warehouse",
                shape,
                Z_STRUCTURE,
                style=style,
                height_m=float(rng.uniform(5, 10)),
                tone=float(rng.uniform()),
                rects=(rect,),
                roof=roof,
            )
        )
        placed.append(shape)
        anchor = anchor or (float(x), float(y))
    if not new:
        return None
    return _Edit(
        replace(layout, features=layout.features + tuple(new)), "building", added=frozenset(f.key for f in new)
    )


def _demolish(layout: Layout, rng: np.random.Generator, avoid: BaseGeometry) -> _Edit | None:
    """One to three neighbouring buildings torn down, leaving bare soil."""
    ppm = 1.0 / layout.gsd
    view = _inside(layout, 2 * ppm)
    buildings = [
        f
        for f in layout.features
        if f.cls == C.BUILDING and view.contains(f.geometry) and not f.geometry.intersects(avoid)
    ]
    if not buildings:
        return None
    first = buildings[int(rng.integers(len(buildings)))]
    near = [f for f in buildings if f.geometry.distance(first.geometry) < 30 * ppm and f is not first]
    chosen = [first] + near[: int(rng.integers(0, 3))]
    removed = frozenset(f.key for f in chosen)
    key = layout.next_key()
    rubble = tuple(
        Feature(
            key + i,
            C.BARE_SOIL,
            "construction site",
            f.geometry.buffer(1.5 * ppm, join_style="mitre"),
            Z_LAND,
            style=str(rng.choice(["dusty", "dark"])),
            tone=float(rng.uniform()),
        )
        for i, f in enumerate(chosen)
    )
    kept = tuple(f for f in layout.features if f.key not in removed)
    return _Edit(replace(layout, features=kept + rubble), "building", removed=removed)


def _cut_trees(layout: Layout, rng: np.random.Generator, avoid: BaseGeometry) -> _Edit | None:
    """A group of single trees cut down, or a clearing cut into a forest."""
    ppm = 1.0 / layout.gsd
    view = _inside(layout, 0)
    trees = [
        f
        for f in layout.features
        if f.cls == C.TREE and view.contains(f.geometry.centroid) and not f.geometry.intersects(avoid)
    ]
    forests = [f for f in layout.features if f.cls == C.FOREST and f.geometry.intersects(view)]
    if trees and (not forests or rng.uniform() < 0.6):
        first = trees[int(rng.integers(len(trees)))]
        near = [f for f in trees if f.geometry.distance(first.geometry) < 25 * ppm]
        chosen = near[: int(rng.integers(2, 9))]
        removed = frozenset(f.key for f in chosen)
        return _Edit(
            replace(layout, features=tuple(f for f in layout.features if f.key not in removed)), "tree", removed=removed
        )
    for forest in (forests[int(i)] for i in rng.permutation(len(forests))):
        x, y = _random_point(rng, forest.geometry.intersection(view))
        rx, ry = _within_view(layout, rng.uniform(12, 40) * ppm, rng.uniform(10, 30) * ppm)
        cut = blob(rng, x, y, rx, ry, rng.uniform(0, math.pi), 0.3)
        cut = largest_polygon(cut.intersection(forest.geometry).intersection(view))
        if cut.area < (6 * ppm) ** 2 or cut.intersects(avoid):
            continue
        rest = forest.geometry.difference(cut.buffer(0.5))
        key = layout.next_key()
        clearing = Feature(key, C.BARE_SOIL, "clearing", cut, Z_LAND, style="dark", tone=float(rng.uniform()))
        features = tuple(replace(f, geometry=rest) if f.key == forest.key else f for f in layout.features)
        return _Edit(replace(layout, features=features + (clearing,)), "forest", added=frozenset({key}))
    return None


def _within_view(layout: Layout, rx: float, ry: float) -> tuple[float, float]:
    """Blob radii (pixels) capped at a third of the view, so that at fine pixel sizes a clearing or a
    flood changes part of the image rather than all of it (no cap at the sizes of a 0.3 m 512 view)."""
    cap = 0.35 * layout.size
    return min(rx, cap), min(ry, cap)


def _random_point(rng: np.random.Generator, region: BaseGeometry) -> tuple[float, float]:
    x0, y0, x1, y1 = region.bounds
    for _ in range(50):
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        if region.contains(Point(x, y)):
            return float(x), float(y)
    point = region.representative_point()
    return point.x, point.y


def _flood(layout: Layout, rng: np.random.Generator, avoid: BaseGeometry) -> _Edit | None:
    """Water spreading over the land around a water body, or a flooded field or meadow."""
    ppm = 1.0 / layout.gsd
    view = _inside(layout, 0)
    waters = [f for f in layout.features if f.cls == C.WATER and f.kind != "pool" and f.geometry.intersects(view)]
    lows = [
        f
        for f in layout.features
        if f.cls in (C.CROP, C.GRASS) and f.geometry.intersection(view).area > (20 * ppm) ** 2
    ]
    if waters and rng.uniform() < 0.7:
        water = waters[int(rng.integers(len(waters)))]
        grown = water.geometry.buffer(rng.uniform(5, 20) * ppm)
        shape = wavy_edges(rng, largest_polygon(grown), 3 * ppm, 40 * ppm)
        shape = shape.intersection(view).difference(avoid)
        subject = "land"
    elif lows:
        low = lows[int(rng.integers(len(lows)))]
        x, y = _random_point(rng, low.geometry.intersection(view))
        rx, ry = _within_view(layout, rng.uniform(15, 50) * ppm, rng.uniform(10, 35) * ppm)
        area = blob(rng, x, y, rx, ry, rng.uniform(0, math.pi), 0.3)
        shape = area.intersection(low.geometry).intersection(view).difference(avoid)
        subject = "field" if low.cls == C.CROP else "meadow"
    else:
        return None
    shape = largest_polygon(shape)
    if shape.area < (5 * ppm) ** 2:
        return None
    flood = Feature(
        layout.next_key(), C.WATER, "flooded area", shape, Z_WATER, style="murky", tone=float(rng.uniform())
    )
    return _Edit(replace(layout, features=layout.features + (flood,)), subject, added=frozenset({flood.key}))


def _new_road(layout: Layout, rng: np.random.Generator, avoid: BaseGeometry) -> _Edit | None:
    """A new road from an existing road (or an image edge) outwards, clearing what lies in its way."""
    ppm = 1.0 / layout.gsd
    size = layout.size
    view = box(0, 0, size, size)
    roads = [f for f in layout.features if f.cls == C.ROAD and f.geometry.intersects(view)]
    paved = shapely.union_all([f.geometry for f in roads]) if roads else Point()
    width = min(rng.uniform(6, 9) * ppm, 0.2 * size)
    least = min((10 * ppm) ** 2, 0.02 * size * size)
    for attempt in range(30):
        if roads and attempt < 10:
            road = roads[int(rng.integers(len(roads)))]
            start = _random_point(rng, road.geometry.intersection(view))
        else:
            start = (float(rng.uniform(0, size)), 0.0) if rng.uniform() < 0.5 else (0.0, float(rng.uniform(0, size)))
        angle = rng.uniform(0, 2 * math.pi)
        length = rng.uniform(0.3, 0.8) * size
        end = (start[0] + length * math.cos(angle), start[1] + length * math.sin(angle))
        line = wiggly_line(rng, start, end, length * 0.05, points=24)
        shape = line.buffer(width / 2, cap_style="flat").intersection(view)
        bridge_ok = attempt >= 20
        if (
            shape.difference(paved).area < least
            or shape.intersects(avoid)
            or (_crosses_water(layout, shape) and not bridge_ok)
        ):
            continue
        in_the_way = (C.BUILDING, C.STORAGE_TANK, C.TREE, C.VEHICLE)
        hit = [f for f in layout.features if f.cls in in_the_way and f.geometry.intersects(shape)]
        solid = [f.geometry.intersection(view).area for f in hit if f.cls in (C.BUILDING, C.STORAGE_TANK)]
        if max(solid, default=0.0) > shape.area:  # a road through a building bigger than itself is a demolition
            continue  # (a 0.1 m view can lie inside one building)
        cleared = frozenset(f.key for f in hit)
        road = Feature(
            layout.next_key(),
            C.ROAD,
            "road",
            shape,
            Z_ROAD,
            style=str(rng.choice(["asphalt", "concrete"])),
            tone=float(rng.uniform()),
        )
        kept = tuple(f for f in layout.features if f.key not in cleared)
        return _Edit(replace(layout, features=kept + (road,)), "road", added=frozenset({road.key}), removed=cleared)
    return None


def _crosses_water(layout: Layout, shape: BaseGeometry) -> bool:
    return any(f.cls == C.WATER and f.geometry.intersects(shape) for f in layout.features)


EDITS: dict[ChangeKind, Callable[[Layout, np.random.Generator, BaseGeometry], _Edit | None]] = {
    ChangeKind.BUILT: _build,
    ChangeKind.DEMOLISHED: _demolish,
    ChangeKind.TREES_CUT: _cut_trees,
    ChangeKind.FLOODED: _flood,
    ChangeKind.NEW_ROAD: _new_road,
}


# --------------------------------------------------------------------------------------------
# Change captions

NO_CHANGE = (
    "No change.",
    "Nothing has changed between the two images.",
    "The two images show the same scene without any changes.",
    "No buildings, roads, trees or water have changed.",
    "The scene is unchanged; only the light differs.",
)


def _things(n: int, singular: str, plural: str) -> str:
    return f"{number(n)} {plural}" if n != 1 else f"one {singular}"


def _sentences(change: Change) -> tuple[str, ...]:
    """Five ways to say one change (lower case, no full stop)."""
    where = f"in the {change.region}"
    n = change.count
    were, have = ("were", "have") if n != 1 else ("was", "has")
    if change.kind in (ChangeKind.BUILT, ChangeKind.DEMOLISHED):
        things = _things(n, "building", "buildings")
        if change.kind == ChangeKind.BUILT:
            return (
                f"{things} {were} built {where}",
                f"{where}, {things} {have} been built",
                f"new construction {where}: {things} appeared",
                f"{things} {were} added {where}",
                f"the after image shows {things} {where} that {were} not there before",
            )
        return (
            f"{things} {were} demolished {where}",
            f"{where}, {things} {have} been torn down",
            f"{things} {where} {were} removed, leaving bare ground",
            f"{things} disappeared {where}",
            f"the before image shows {things} {where} that {were} demolished later",
        )
    if change.kind == ChangeKind.TREES_CUT and change.subject == "forest":
        return (
            f"part of the forest {where} was cleared",
            f"a clearing was cut into the forest {where}",
            f"trees were felled {where}, opening a clearing in the forest",
            f"the forest {where} lost a patch of trees",
            f"{where}, part of the forest has been cut down",
        )
    if change.kind == ChangeKind.TREES_CUT:
        things = _things(n, "tree", "trees")
        return (
            f"{things} {were} cut down {where}",
            f"{where}, {things} {have} been felled",
            f"{things} {where} {were} removed",
            f"{things} disappeared {where}",
            f"the trees {where} were thinned: {things} {were} cut",
        )
    if change.kind == ChangeKind.FLOODED:
        subject = {"land": "the land", "field": "a field", "meadow": "a meadow"}[change.subject]
        return (
            f"{subject} {where} was flooded",
            f"water now covers {subject} {where}",
            f"flooding {where}: {subject} is under water",
            f"{where}, {subject} has been flooded",
            f"the water spread over {subject} {where}",
        )
    return (
        f"a new road was built {where}",
        f"{where}, a new road has been built",
        f"a new road now runs through the {change.region}",
        f"a road was added {where}",
        f"the after image shows a new road {where}",
    )


def change_captions(changes: tuple[Change, ...], rng: np.random.Generator, count: int = 5) -> tuple[str, ...]:
    """``count`` distinct captions of the changes (or of no change)."""
    if not changes:
        return NO_CHANGE[:count]
    options = [_sentences(c) for c in changes]
    shifts = [int(rng.integers(len(o))) for o in options]
    captions = []
    for k in range(count):
        text = "; ".join(o[(k + shift) % len(o)] for o, shift in zip(options, shifts))
        captions.append(text[0].upper() + text[1:] + ".")
    return tuple(captions)
