"""What a generated scene or pair is made of: frozen dataclasses shared by every module.

Pixel conventions: x to the right (columns), y down (rows); pixel (row, col) covers
``[col, col + 1) x [row, row + 1)``. Boxes are ``(x_min, y_min, x_max, y_max)`` in pixel edges,
so ``instance_map[y_min:y_max, x_min:x_max]`` holds the whole object.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine
from shapely.geometry.base import BaseGeometry

from training.data.synthetic.classes import ObjectClass

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class SceneObject:
    """One labelled object as it is visible in the image.

    ``polygon`` is the exact outline of its pixels (Polygon or MultiPolygon, pixel coordinates),
    ``area_m2`` is ``pixels * gsd ** 2``, ``centroid`` is the mean of its pixel centres (x, y)
    and ``key`` names the layout feature it was drawn from (the same in both dates of a pair).
    """

    id: int
    cls: ObjectClass
    kind: str
    style: str
    box: Box
    polygon: BaseGeometry
    pixels: int
    area_m2: float
    centroid: tuple[float, float]
    height_m: float
    key: int

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.box
        if self.id <= 0 or self.pixels <= 0 or not (0 <= x0 < x1 and 0 <= y0 < y1):
            raise ValueError(f"object {self.id}: bad id, pixel count or box {self.box}")


@dataclass(frozen=True)
class ReferringExpression:
    """A phrase that singles out one object, e.g. "the largest building".

    ``rule`` says how the target was singled out (only, largest, smallest, extreme, relation,
    style, region) among the objects that ``noun`` names (see ``language.candidates``);
    ``landmark`` is the other object of a relation (0 otherwise). The target's mask is
    ``instance_map == target``.
    """

    text: str
    target: int
    box: Box
    rule: str
    noun: str
    landmark: int = 0


@dataclass(frozen=True)
class QAPair:
    """A question about the scene with its answer as text and as a typed ``value``."""

    question: str
    answer: str
    kind: str
    value: bool | int | float | str


@dataclass(frozen=True, eq=False)
class Scene:
    """One georeferenced scene with its full ground truth (see the module docstring for axes)."""

    seed: int
    image: np.ndarray
    class_map: np.ndarray
    instance_map: np.ndarray
    objects: tuple[SceneObject, ...]
    captions: tuple[str, ...]
    referring: tuple[ReferringExpression, ...]
    qa: tuple[QAPair, ...]
    transform: Affine
    crs: str
    gsd: float
    theme: str
    season: str
    sun_azimuth: float
    sun_elevation: float
    look: dict[str, Any] = field(default_factory=dict)
    """How the scene was photographed, for breaking figures down: ``gsd_band``, ``soil``, ``sensor``,
    ``jpeg_quality`` (0: not compressed), ``haze``, sun angles and more (``scene.look_record``)."""

    def __post_init__(self) -> None:
        h, w = self.class_map.shape
        if self.image.shape != (h, w, 3) or self.image.dtype != np.uint8:
            raise ValueError(f"image must be ({h}, {w}, 3) uint8, got {self.image.shape} {self.image.dtype}")
        if self.class_map.dtype != np.uint8 or self.instance_map.dtype != np.uint16:
            raise ValueError("class_map must be uint8 and instance_map uint16")
        if self.instance_map.shape != (h, w):
            raise ValueError("instance_map and class_map differ in shape")
        if [o.id for o in self.objects] != list(range(1, len(self.objects) + 1)):
            raise ValueError("object ids must be 1..N in order")

    @property
    def size(self) -> int:
        return int(self.class_map.shape[0])

    def object(self, object_id: int) -> SceneObject:
        """The object with id ``object_id``."""
        return self.objects[object_id - 1]

    def mask(self, object_id: int) -> np.ndarray:
        """Boolean mask of the object with id ``object_id``."""
        return self.instance_map == object_id


class ChangeKind(enum.IntEnum):
    """Values of a change map: what happened to a pixel between the two dates."""

    NONE = 0
    BUILT = 1
    DEMOLISHED = 2
    TREES_CUT = 3
    FLOODED = 4
    NEW_ROAD = 5


@dataclass(frozen=True)
class Change:
    """One real change between two dates.

    ``subject`` is what changed (building, tree, forest, field, meadow, land, road), ``count``
    how many objects (1 for a clearing, a flood or a road), ``region`` where (compass words) and
    ``pixels``/``area_m2`` how much of the change map it covers.
    """

    kind: ChangeKind
    subject: str
    count: int
    region: str
    pixels: int
    area_m2: float


@dataclass(frozen=True, eq=False)
class ScenePair:
    """Two dates of one place. ``change_map`` (uint8 :class:`ChangeKind`) is on the before grid."""

    seed: int
    before: Scene
    after: Scene
    change_map: np.ndarray
    changes: tuple[Change, ...]
    captions: tuple[str, ...]
    changed: bool

    def __post_init__(self) -> None:
        if self.change_map.shape != self.before.class_map.shape or self.change_map.dtype != np.uint8:
            raise ValueError("change_map must be uint8 on the before image's grid")
        if self.changed != bool(self.change_map.any()) or self.changed != bool(self.changes):
            raise ValueError("changed must agree with the change map and the list of changes")

    @property
    def change_mask(self) -> np.ndarray:
        """Boolean mask of every changed pixel."""
        return self.change_map > 0
