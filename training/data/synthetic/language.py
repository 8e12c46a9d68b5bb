"""Text from the scene graph: captions, referring expressions and question/answer pairs.

Every statement is computed from the labelled objects, so it is exact: counts are the numbers
of visible objects, "the largest building" has the most pixels, "left of the road" means the
whole target lies left of every road pixel in the target's rows. Images are north-up, so "top"
and "north" (and so on) mean the same.

Nouns: a noun names either a kind (``house``, ``pond``, ``car``) or, when no object has a kind
of that name, a class (``building``, ``water body``, ``vehicle``); :func:`candidates` resolves
a noun to its objects and every count and superlative in the text uses that resolution.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from training.data.synthetic.annotations import QAPair, ReferringExpression, SceneObject
from training.data.synthetic.classes import CLASSES, ObjectClass, info

log = logging.getLogger(__name__)

C = ObjectClass
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
REGIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
COMPASS = ("north-west", "north", "north-east", "west", "centre", "east", "south-west", "south", "south-east")
KIND_PLURALS = {
    "house": "houses",
    "apartment block": "apartment blocks",
    "commercial building": "commercial buildings",
    "warehouse": "warehouses",
    "barn": "barns",
    "shed": "sheds",
    "car": "cars",
    "truck": "trucks",
    "storage tank": "storage tanks",
    "silo": "silos",
    "tree": "trees",
    "forest": "forests",
    "field": "fields",
    "pond": "ponds",
    "lake": "lakes",
    "river": "rivers",
    "pool": "swimming pools",
    "flooded area": "flooded areas",
    "road": "roads",
    "track": "tracks",
    "parking lot": "parking lots",
}
COUNTED = (C.BUILDING, C.STORAGE_TANK, C.WATER, C.ROAD, C.PARKING_LOT, C.VEHICLE, C.CROP, C.FOREST, C.TREE)
"""Classes whose objects are counted and referred to (grass and bare soil are land cover only)."""
SINGULAR = {
    **{p: s for s, p in KIND_PLURALS.items()},
    **{c.plural: c.singular for c in CLASSES[1:]},
    **{s: s for s in KIND_PLURALS},
    **{c.singular: c.singular for c in CLASSES[1:]},
}
"""Every noun the text uses (singular or plural) mapped to its singular."""
COVER_NAMES = {
    C.BACKGROUND: "open ground",
    C.BUILDING: "buildings",
    C.ROAD: "roads",
    C.PARKING_LOT: "paved surfaces",
    C.VEHICLE: "paved surfaces",
    C.STORAGE_TANK: "buildings",
    C.TREE: "trees",
    C.FOREST: "forest",
    C.GRASS: "grass",
    C.CROP: "crop fields",
    C.WATER: "water",
    C.BARE_SOIL: "bare soil",
}
STYLE_PHRASES: dict[ObjectClass, Callable[[str, str], str]] = {
    C.BUILDING: lambda style, noun: f"{noun} with the {style} roof",
    C.VEHICLE: lambda style, noun: f"{style} {noun}",
    C.STORAGE_TANK: lambda style, noun: f"{style} {noun}",
    C.CROP: lambda style, noun: (
        f"{style} {noun}" if style in ("wheat", "maize", "ploughed", "stubble", "green") else f"{noun} of {style}s"
    ),
    C.ROAD: lambda style, noun: f"{style} {noun}",
    C.FOREST: lambda style, noun: f"{style} {noun}",
    C.PARKING_LOT: lambda style, noun: f"{style} {noun}",
}
LONG = (C.ROAD,)
"""Classes too elongated for "in the top left"."""
MIN_TARGET_PIXELS = 24
MIN_TARGET_FRACTION = 0.001
"""Referring expressions only target objects with at least this many visible pixels, and at least this
fraction of the image (262 pixels, about 16 x 16, in a 512 window): a model that sees the window at 224
pixels cannot single out a smaller one (a 5 x 5 shed, a sliver of a building at the border) by its box."""
LANDMARKS = (C.ROAD, C.WATER, C.PARKING_LOT, C.BUILDING, C.STORAGE_TANK, C.FOREST)
"""Classes that relations are anchored on ("the pond left of the road")."""
VERBS = {C.BUILDING: "stands", C.STORAGE_TANK: "stands", C.TREE: "stands", C.VEHICLE: "is"}
RELATIONS = {
    "left": ("left of", "west of"),
    "right": ("right of", "east of"),
    "above": ("above", "north of"),
    "below": ("below", "south of"),
}


@dataclass(frozen=True)
class Description:
    """The text of one scene."""

    captions: tuple[str, ...]
    referring: tuple[ReferringExpression, ...]
    qa: tuple[QAPair, ...]


# --------------------------------------------------------------------------------------------
# Words


def number(n: int) -> str:
    """``n`` in words up to twelve, in digits above."""
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def parse_number(word: str) -> int | None:
    """The inverse of :func:`number` (``None`` for other words)."""
    if word.isdigit():
        return int(word)
    return NUMBER_WORDS.index(word) if word in NUMBER_WORDS else None


def article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def plural(noun: str) -> str:
    return KIND_PLURALS.get(noun) or next(c.plural for c in CLASSES if c.singular == noun)


def counted(n: int, noun: str, rng: np.random.Generator | None = None) -> str:
    """ "three houses", "one road" or "a road"."""
    if n == 1:
        return article(noun) if rng is not None and rng.uniform() < 0.5 else f"one {noun}"
    return f"{number(n)} {plural(noun)}"


def region_index(x: float, y: float, size: int) -> int:
    """Which ninth of the image (row-major 3 x 3 grid) holds the point (x, y)."""
    return min(int(3 * y / size), 2) * 3 + min(int(3 * x / size), 2)


def region(x: float, y: float, size: int, compass: bool = False) -> str:
    """ "top left" (or "north-west" with ``compass``) for a point in the image."""
    return (COMPASS if compass else REGIONS)[region_index(x, y, size)]


def cell_bounds(cell: int, size: int) -> tuple[float, float, float, float]:
    """The pixel bounds (x0, y0, x1, y1) of one ninth of the image."""
    row, col = divmod(cell, 3)
    return col * size / 3, row * size / 3, (col + 1) * size / 3, (row + 1) * size / 3


def in_cell(obj: SceneObject, cell: int, size: int) -> bool:
    """Whether the whole object lies in that ninth of the image."""
    x0, y0, x1, y1 = cell_bounds(cell, size)
    return obj.box[0] >= x0 and obj.box[1] >= y0 and obj.box[2] <= x1 and obj.box[3] <= y1


def touches_cell(obj: SceneObject, cell: int, size: int) -> bool:
    """Whether any of the object's box lies in that ninth of the image."""
    x0, y0, x1, y1 = cell_bounds(cell, size)
    return obj.box[0] < x1 and obj.box[2] > x0 and obj.box[1] < y1 and obj.box[3] > y0


def where(name: str) -> str:
    """A region as a place: "in the top left", "at the top", "on the left", "in the north"."""
    if name in ("top", "bottom"):
        return f"at the {name}"
    if name in ("left", "right"):
        return f"on the {name}"
    return f"in the {name}"


def join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def candidates(noun: str, objects: Iterable[SceneObject]) -> list[SceneObject]:
    """The objects a singular ``noun`` names: those of that kind, else those of that class."""
    objects = list(objects)
    by_kind = [o for o in objects if o.kind == noun]
    return by_kind or [o for o in objects if info(o.cls).singular == noun]


def mentioned_counts(text: str) -> list[tuple[int, str]]:
    """Every "<number> <noun>" in ``text`` as (count, singular noun); used to check captions."""
    nouns = sorted(SINGULAR, key=len, reverse=True)
    pattern = re.compile(r"\b(\d+|" + "|".join(NUMBER_WORDS[1:]) + r") (" + "|".join(map(re.escape, nouns)) + r")\b")
    found = []
    for match in pattern.finditer(text.lower()):
        value = parse_number(match.group(1))
        if value is not None:
            found.append((value, SINGULAR[match.group(2)]))
    return found


# --------------------------------------------------------------------------------------------
# Facts about a scene


@dataclass(frozen=True, eq=False)
class _Facts:
    objects: tuple[SceneObject, ...]
    instance_map: np.ndarray
    size: int
    gsd: float
    season: str
    cover: tuple[tuple[str, float], ...]
    """Land cover names and their fractions of the image, largest first."""

    def of(self, cls: ObjectClass) -> list[SceneObject]:
        return [o for o in self.objects if o.cls == cls]

    def nouns(self, cls: ObjectClass) -> list[str]:
        """Nouns that name groups of this class without clashing: the class noun and its kinds."""
        objects = self.of(cls)
        kinds = sorted({o.kind for o in objects})
        class_noun = info(cls).singular
        all_kinds = {o.kind for o in self.objects}
        nouns = [class_noun] if class_noun not in all_kinds and len(kinds) > 1 else []
        return nouns + kinds

    def count_phrase(self, cls: ObjectClass, rng: np.random.Generator) -> str:
        """The objects of a class counted: "12 buildings", or per kind: "two roads and a track"."""
        nouns = self.nouns(cls)
        if nouns[0] == info(cls).singular or len(nouns) == 1:
            return counted(len(candidates(nouns[0], self.objects)), nouns[0], rng)
        return join([counted(len(candidates(k, self.objects)), k, rng) for k in nouns])


def _cover(class_map: np.ndarray) -> tuple[tuple[str, float], ...]:
    counts = np.bincount(class_map.ravel(), minlength=len(CLASSES)) / class_map.size
    fractions: Counter[str] = Counter()
    for cls, fraction in zip(C, counts):
        fractions[COVER_NAMES[cls]] += float(fraction)
    return tuple(sorted(fractions.items(), key=lambda kv: -kv[1]))


def describe(
    objects: tuple[SceneObject, ...],
    instance_map: np.ndarray,
    class_map: np.ndarray,
    gsd: float,
    season: str,
    rng: np.random.Generator,
) -> Description:
    """Captions, referring expressions and QA for one labelled scene."""
    facts = _Facts(objects, instance_map, int(instance_map.shape[0]), gsd, season, _cover(class_map))
    referring = _referring(facts, rng)
    captions = _captions(facts, referring, rng)
    return Description(captions, referring, _qa(facts, referring, rng))


# --------------------------------------------------------------------------------------------
# Referring expressions


@dataclass(frozen=True)
class _Extents:
    """Per row and per column, the first and last pixel of one object (for left/right/above/below)."""

    row_min: np.ndarray
    row_max: np.ndarray
    col_min: np.ndarray
    col_max: np.ndarray


def extents(instance_map: np.ndarray, obj: SceneObject) -> _Extents:
    """The first and last pixel of ``obj`` in every row and column of ``instance_map``."""
    size = int(instance_map.shape[0])
    x0, y0, x1, y1 = obj.box
    mask = instance_map[y0:y1, x0:x1] == obj.id
    big = np.iinfo(np.int64).max

    def first_last(m: np.ndarray, offset: int, start: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.full(size, big), np.full(size, -1)
        present = m.any(axis=1)
        first = np.argmax(m, axis=1) + offset
        last = m.shape[1] - 1 - np.argmax(m[:, ::-1], axis=1) + offset
        lo[start : start + len(present)] = np.where(present, first, big)
        hi[start : start + len(present)] = np.where(present, last, -1)
        return lo, hi

    row_min, row_max = first_last(mask, x0, y0)
    col_min, col_max = first_last(mask.T, y0, x0)
    return _Extents(row_min, row_max, col_min, col_max)


def relation_holds(relation: str, target: SceneObject, landmark: _Extents) -> bool:
    """Whether ``target`` lies wholly ``relation`` (left/right/above/below) of the landmark's pixels
    in the rows (left/right) or columns (above/below) that the target spans."""
    x0, y0, x1, y1 = target.box
    if relation in ("left", "right"):
        lo, hi = landmark.row_min[y0:y1], landmark.row_max[y0:y1]
    else:
        lo, hi = landmark.col_min[x0:x1], landmark.col_max[x0:x1]
    present = hi >= 0
    if not present.any():
        return False
    if relation == "left":
        return x1 <= lo[present].min()
    if relation == "right":
        return x0 > hi[present].max()
    if relation == "above":
        return y1 <= lo[present].min()
    return y0 > hi[present].max()


def _referring(facts: _Facts, rng: np.random.Generator, limit: int = 8) -> tuple[ReferringExpression, ...]:
    found: dict[str, list[ReferringExpression]] = {}
    groups = [(noun, candidates(noun, facts.objects)) for cls in COUNTED for noun in facts.nouns(cls)]
    groups = [(noun, group) for noun, group in groups if group]
    smallest = max(MIN_TARGET_PIXELS, MIN_TARGET_FRACTION * facts.size * facts.size)
    landmarks = [
        (noun, group[0])
        for noun, group in groups
        if len(group) == 1 and group[0].cls in LANDMARKS and group[0].pixels >= 4 * smallest
    ]
    for noun, group in groups:
        for rule, text, target, landmark in _rules(facts, noun, group, landmarks, rng):
            if target.pixels >= smallest:
                expression = ReferringExpression(text, target.id, target.box, rule, noun, landmark)
                found.setdefault(rule, []).append(expression)
    chosen: list[ReferringExpression] = []
    rules = sorted(found)
    for bucket in found.values():
        rng.shuffle(bucket)  # type: ignore[arg-type]
    while len(chosen) < limit and any(found.values()):
        for rule in rules:
            if found[rule] and len(chosen) < limit:
                chosen.append(found[rule].pop())
    return tuple(chosen)


def _rules(
    facts: _Facts,
    noun: str,
    group: list[SceneObject],
    landmarks: list[tuple[str, SceneObject]],
    rng: np.random.Generator,
) -> Iterable[tuple[str, str, SceneObject, int]]:
    """Every (rule, text, target, landmark id) that singles out one object of ``group``."""
    if len(group) == 1:
        yield "only", f"the {noun}", group[0], 0
    else:
        by_area = sorted(group, key=lambda o: -o.pixels)
        if by_area[0].pixels >= 1.2 * by_area[1].pixels:
            yield "largest", f"the {rng.choice(['largest', 'biggest'])} {noun}", by_area[0], 0
        if by_area[-1].pixels * 1.2 <= by_area[-2].pixels:
            yield "smallest", f"the smallest {noun}", by_area[-1], 0
        margin = max(3.0, 0.02 * facts.size)
        for axis, sign, words in (
            (1, 1, ("northernmost", "topmost")),
            (1, -1, ("southernmost", "bottommost")),
            (0, 1, ("westernmost", "leftmost")),
            (0, -1, ("easternmost", "rightmost")),
        ):
            ordered = sorted(group, key=lambda o: sign * o.centroid[axis])
            if sign * (ordered[1].centroid[axis] - ordered[0].centroid[axis]) >= margin:
                yield "extreme", f"the {rng.choice(words)} {noun}", ordered[0], 0
        cls = group[0].cls
        if cls in STYLE_PHRASES:
            styles = Counter(o.style for o in group)
            for obj in group:
                if obj.style and styles[obj.style] == 1:
                    yield "style", f"the {STYLE_PHRASES[cls](obj.style, noun)}", obj, 0
        if group[0].cls not in LONG:
            touching = Counter(cell for o in group for cell in range(9) if touches_cell(o, cell, facts.size))
            for obj in group:
                cell = region_index(*obj.centroid, facts.size)
                if touching[cell] == 1 and in_cell(obj, cell, facts.size):
                    compass = rng.uniform() < 0.5
                    yield "region", f"the {noun} {where((COMPASS if compass else REGIONS)[cell])}", obj, 0
    if len(group) > 60:
        return
    for landmark_noun, landmark in landmarks:
        if landmark.cls == group[0].cls:
            continue
        landmark_extents = extents(facts.instance_map, landmark)
        for relation, words in RELATIONS.items():
            hits = [o for o in group if relation_holds(relation, o, landmark_extents)]
            if len(hits) == 1 and len(group) > 1:
                yield "relation", f"the {noun} {rng.choice(words)} the {landmark_noun}", hits[0], landmark.id


# --------------------------------------------------------------------------------------------
# Captions


def _captions(
    facts: _Facts, referring: tuple[ReferringExpression, ...], rng: np.random.Generator, count: int = 5
) -> tuple[str, ...]:
    pool: list[str] = []
    for make in (_overview, _inventory, _land_cover, _placement, _relation, _season):
        pool.extend(make(facts, referring, rng))
    unique = list(dict.fromkeys(s for s in pool if s))
    rng.shuffle(unique)  # type: ignore[arg-type]
    chosen = unique[:count]
    for filler in _fallbacks(facts):
        if len(chosen) >= count:
            break
        if filler not in chosen:
            chosen.append(filler)
    return tuple(chosen)


def _present(facts: _Facts) -> list[ObjectClass]:
    return [cls for cls in COUNTED if facts.of(cls)]


def _setting(facts: _Facts) -> str:
    kinds = Counter(o.kind for o in facts.objects)
    buildings = len(facts.of(C.BUILDING))
    industry = len(facts.of(C.STORAGE_TANK)) - kinds["silo"] + kinds["warehouse"]
    if industry >= 2 and industry >= 0.3 * (buildings + len(facts.of(C.STORAGE_TANK))):
        return "an industrial area"
    if kinds["house"] >= 4 and kinds["house"] >= buildings / 2:
        return "a residential area"
    if buildings >= 6:
        return "a built-up area"
    if len(facts.of(C.CROP)) >= 2:
        return "farmland"
    if facts.of(C.FOREST):
        return "woodland"
    return "open land"


def _overview(facts: _Facts, _: tuple, rng: np.random.Generator) -> list[str]:
    present = _present(facts)
    if not present:
        return []
    shown = present[: int(rng.integers(2, 5))]
    items = join([facts.count_phrase(cls, rng) for cls in shown])
    setting = _setting(facts)
    return [
        str(
            rng.choice(
                [
                    f"An aerial image of {setting} with {items}.",
                    f"Overhead view of {setting}: {items}.",
                    f"{setting[0].upper() + setting[1:]} seen from above, with {items}.",
                ]
            )
        )
    ]


def _inventory(facts: _Facts, _: tuple, rng: np.random.Generator) -> list[str]:
    present = _present(facts)
    if len(present) < 2:
        return []
    items = join([facts.count_phrase(cls, rng) for cls in present])
    return [str(rng.choice([f"The scene contains {items}.", f"There are {items} in this image."]))]


def _land_cover(facts: _Facts, _: tuple, rng: np.random.Generator) -> list[str]:
    (first, share), (second, _share2) = facts.cover[0], facts.cover[1]
    if share >= 0.5:
        return [
            str(
                rng.choice(
                    [
                        f"Most of the image is covered by {first}, with some {second}.",
                        f"The image is largely {first}, with {second} in parts of the rest.",
                    ]
                )
            )
        ]
    return [f"The land is shared between {first} and {second}."]


def _placement(facts: _Facts, _: tuple, rng: np.random.Generator) -> list[str]:
    out = []
    for cls in [c for c in _present(facts) if c not in LONG][:3]:
        noun = facts.nouns(cls)[0]
        group = candidates(noun, facts.objects)
        compass = rng.uniform() < 0.5
        cells = Counter(region(*o.centroid, facts.size, compass) for o in group)
        name, hits = cells.most_common(1)[0]
        if len(group) == 1:
            out.append(f"{article(noun).capitalize()} {VERBS.get(cls, 'lies')} {where(name)}.")
        elif hits == len(group):
            out.append(f"All {counted(len(group), noun)} are {where(name)}.")
        elif hits >= 0.6 * len(group) and len(group) >= 3:
            out.append(f"Most of the {plural(noun)} are {where(name)}.")
        elif len(group) >= 3:
            out.append(f"The {plural(noun)} are spread across the image.")
    return out[:2]


def _relation(facts: _Facts, referring: tuple[ReferringExpression, ...], rng: np.random.Generator) -> list[str]:
    relations = [r for r in referring if r.rule == "relation"]
    if relations:
        r = relations[int(rng.integers(len(relations)))]
        rest = r.text[len(f"the {r.noun} ") :]
        verb = VERBS.get(facts.objects[r.target - 1].cls, "lies")
        return [f"{article(r.noun).capitalize()} {verb} {rest}."]
    singles = [r for r in referring if r.rule in ("only", "largest")]
    if singles:
        r = singles[int(rng.integers(len(singles)))]
        obj = facts.objects[r.target - 1]
        compass = rng.uniform() < 0.5
        return [f"{r.text[0].upper()}{r.text[1:]} is {where(region(*obj.centroid, facts.size, compass))}."]
    return []


def _season(facts: _Facts, _: tuple, rng: np.random.Generator) -> list[str]:
    first = facts.cover[0][0]
    phrase = {"spring": "in spring", "summer": "in summer", "autumn": "in autumn", "winter": "in winter"}[facts.season]
    return [
        str(
            rng.choice(
                [
                    f"An aerial photograph taken {phrase}, dominated by {first}.",
                    f"{article(facts.season).capitalize()} scene where {first} prevails.",
                ]
            )
        )
    ]


def _fallbacks(facts: _Facts) -> list[str]:
    width = facts.size * facts.gsd
    return [
        f"An aerial image about {width:.0f} m across.",
        f"An overhead image with {facts.gsd:.2f} m pixels.",
        f"A {facts.season} view from above.",
        "An aerial photograph of the ground.",
        f"A top-down view of {facts.cover[0][0]}.",
    ]


# --------------------------------------------------------------------------------------------
# Questions and answers


def _qa(facts: _Facts, referring: tuple[ReferringExpression, ...], rng: np.random.Generator) -> tuple[QAPair, ...]:
    out: list[QAPair] = []
    present = _present(facts)
    absent = [cls for cls in COUNTED if cls not in present]
    rng.shuffle(absent)  # type: ignore[arg-type]
    for cls in present[:3]:
        noun = facts.nouns(cls)[0]
        n = len(candidates(noun, facts.objects))
        out.append(QAPair(f"How many {plural(noun)} are there?", str(n), "count", n))
    for cls in [*present[:1], *absent[:2]]:
        noun = info(cls).singular
        yes = bool(candidates(noun, facts.objects))
        question = str(rng.choice([f"Is there {article(noun)} in the image?", f"Are there any {plural(noun)}?"]))
        out.append(QAPair(question, "yes" if yes else "no", "presence", yes))
    for cls in absent[:1]:
        noun = info(cls).singular
        out.append(QAPair(f"How many {plural(noun)} are there?", "0", "count", 0))
    if referring:
        r = referring[int(rng.integers(len(referring)))]
        obj = facts.objects[r.target - 1]
        out.append(QAPair(f"What area does {r.text} cover?", f"{obj.area_m2:.0f} m²", "area", obj.area_m2))
        name = region(*obj.centroid, facts.size)
        out.append(QAPair(f"Where is {r.text}?", where(name), "position", name))
    name, share = facts.cover[0]
    out.append(QAPair("What covers most of the image?", name, "landcover", name))
    water = dict(facts.cover).get("water", 0.0)
    out.append(QAPair("What fraction of the image is water?", f"{100 * water:.0f}%", "area", water))
    return tuple(out)
