"""The closed set of classes that the Synthetic Earth labels, and how they are named in text.

Every pixel of a class map holds one :class:`ObjectClass` id. Id 0 (background) is the generic
ground that belongs to no object; every other class is drawn as objects with their own instance
ids, so ``class_map == CLASS_OF[instance_map]`` holds everywhere.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class ObjectClass(enum.IntEnum):
    """Class ids as stored in class maps (uint8)."""

    BACKGROUND = 0
    BUILDING = 1
    ROAD = 2
    PARKING_LOT = 3
    VEHICLE = 4
    STORAGE_TANK = 5
    TREE = 6
    FOREST = 7
    GRASS = 8
    CROP = 9
    WATER = 10
    BARE_SOIL = 11


@dataclass(frozen=True)
class ClassInfo:
    """How one class is named and shown: ``singular``/``plural`` nouns and a display colour."""

    id: int
    name: str
    singular: str
    plural: str
    rgb: tuple[int, int, int]


CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "background", "ground", "ground", (0, 0, 0)),
    ClassInfo(1, "building", "building", "buildings", (220, 60, 60)),
    ClassInfo(2, "road", "road", "roads", (128, 128, 128)),
    ClassInfo(3, "parking_lot", "parking lot", "parking lots", (200, 200, 120)),
    ClassInfo(4, "vehicle", "vehicle", "vehicles", (255, 140, 0)),
    ClassInfo(5, "storage_tank", "storage tank", "storage tanks", (240, 240, 240)),
    ClassInfo(6, "tree", "tree", "trees", (0, 160, 0)),
    ClassInfo(7, "forest", "forest", "forests", (0, 90, 30)),
    ClassInfo(8, "grass", "grass area", "grass areas", (150, 220, 100)),
    ClassInfo(9, "crop", "field", "fields", (230, 210, 90)),
    ClassInfo(10, "water", "water body", "water bodies", (40, 110, 220)),
    ClassInfo(11, "bare_soil", "bare soil area", "bare soil areas", (170, 120, 80)),
)
"""The class table, indexed by class id (the class map's values)."""


def info(cls: ObjectClass) -> ClassInfo:
    """The :class:`ClassInfo` of ``cls``."""
    return CLASSES[int(cls)]


def class_vocabulary(named: Iterable[tuple[str, int]]) -> tuple[list[str], dict[str, int]]:
    """What a model needs to map an answer's noun to a class: the plural name of each class id, and
    every noun -> class id (each class's singular and plural, plus the ``(noun, class id)`` pairs
    given, e.g. the kinds "house" and "pond" that referring answers use). A given noun seen with
    two classes, or naming another class, is left out: it names no one class."""
    nouns: dict[str, int] = {}
    for c in CLASSES[1:]:
        nouns[c.singular] = nouns[c.plural] = c.id
    seen: dict[str, set[int]] = {}
    for noun, cls in named:
        seen.setdefault(noun.strip().lower(), set()).add(int(cls))
    for noun, classes in seen.items():
        if len(classes) == 1 and noun not in nouns:
            nouns[noun] = next(iter(classes))
    return [c.plural for c in CLASSES], nouns
