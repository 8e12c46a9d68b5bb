"""What changed between two dates, where and how much, read off the RSA model's maps: the change head's
per-pixel map says where, the class head's maps of the two dates (rsa_instances.class_probabilities) say
what was there before and what is there after, and the objects counted in them say how many.

Each connected patch of changed pixels (at least :data:`MIN_SHARE` of the window) is one change, named
by the classes its pixels held before and after (:func:`kind_of`): buildings built or demolished, trees
cut (or part of a forest cleared), land flooded, a new road, or one cover turned into another. Changes of
one kind in one ninth of the window (its compass point) are said together:

    "one building was built in the east; six trees were cut down in the north-west (3% of the area)"

The sentences follow the Synthetic Earth's change captions, so their BLEU and CIDEr measure how often the
kind, the count and the place are right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rs_assistant.engine.backends.rsa_instances import connected, instances

#: A patch of changed pixels smaller than this share of the window is not described (the generator's own
#: smallest change is 0.1% of the window; the change head's patches are often smaller than the change).
MIN_SHARE = 0.0005
#: The change head's probability from which a pixel is changed, for telling what changed (its verdict on the pair
#: is the model's ``change_threshold``).
PIXEL_THRESHOLD = 0.3
#: The ninths of a window, row by row (north up).
COMPASS = ("north-west", "north", "north-east", "west", "centre", "east", "south-west", "south", "south-east")
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
#: Class names (the RSA config's ``class_names``) of the classes a change is told by.
BUILDINGS, TREES, FORESTS, ROADS, PAVED, WATER = (
    "buildings",
    "trees",
    "forests",
    "roads",
    "parking lots",
    "water bodies",
)
FLOODED_LAND = {"fields": "a field", "grass areas": "a meadow"}


@dataclass(frozen=True)
class ChangePatch:
    """One change: its ``kind`` (built, demolished, trees cut, forest cleared, flooded, new road, or became), the
    classes before and after, how many objects (0: an area), where (a compass point) and its share of the window."""

    kind: str
    before: str
    after: str
    count: int
    region: str
    share: float


def number(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def kind_of(before: dict[str, float], after: dict[str, float]) -> str | None:
    """The kind of a change from the shares of a patch's pixels each class held ``before`` and holds ``after``
    (class name -> share): the first that fits of buildings built or demolished (a fifth of the patch, at
    most half of it on the other date), land flooded (half of it water now, a tenth before), a new road (roads
    or paved ground), trees cut and a forest cleared; None when none fits (one cover read as another as the
    light changed)."""

    def gained(names: tuple[str, ...], least: float, before_at_most: float) -> bool:
        now, was = sum(after.get(n, 0.0) for n in names), sum(before.get(n, 0.0) for n in names)
        return now >= least and was <= before_at_most * max(now, least)

    def lost(names: tuple[str, ...], least: float) -> bool:
        was, now = sum(before.get(n, 0.0) for n in names), sum(after.get(n, 0.0) for n in names)
        return was >= least and now <= 0.5 * was

    if gained((BUILDINGS,), 0.2, 0.5):
        return "built"
    if lost((BUILDINGS,), 0.2):
        return "demolished"
    if gained((WATER,), 0.5, 0.2):
        return "flooded"
    if gained((ROADS, PAVED), 0.4, 0.25):
        return "new road"
    if lost((FORESTS,), 0.4):
        return "forest cleared"
    if lost((TREES,), 0.2):
        return "trees cut"
    return None


def region_of(mask: np.ndarray) -> str:
    """The compass point (ninth of the window) of a mask's centroid."""
    height, width = mask.shape
    rows, cols = np.nonzero(mask)
    row = min(int(3 * rows.mean() / height), 2)
    col = min(int(3 * cols.mean() / width), 2)
    return COMPASS[row * 3 + col]


def _shares(classes: np.ndarray, mask: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Class name -> the share of ``mask``'s pixels of that class in the map ``classes``."""
    counts = np.bincount(classes[mask], minlength=len(class_names))
    return {str(class_names[c]): float(n) / max(int(mask.sum()), 1) for c, n in enumerate(counts) if n}


def describe(
    changed: torch.Tensor,
    before: torch.Tensor,
    after: torch.Tensor,
    class_names: Sequence[str],
) -> list[ChangePatch]:
    """The changes in ``changed [H, W]`` (bool), told by the class probabilities ``[classes, H, W]`` of the two
    dates; the largest first. A patch whose classes make none of the kinds :func:`kind_of` names (one cover read
    as another, as the light changed) is not told."""
    height, width = changed.shape
    labels = connected(changed.cpu().numpy())
    sizes = np.bincount(labels.ravel())
    before_classes, after_classes = before.argmax(dim=0).cpu().numpy(), after.argmax(dim=0).cpu().numpy()
    objects: dict[tuple[int, int], list] = {}  # (date, class) -> its objects, found once

    def count(date: int, name: str, patch: np.ndarray) -> int:
        """How many objects of class ``name`` lie at least a third inside ``patch`` on ``date`` (at least one)."""
        cls = list(class_names).index(name)
        if (date, cls) not in objects:
            objects[(date, cls)] = instances((before, after)[date], cls)
        return max(1, sum(patch[i.mask].mean() >= 0.3 for i in objects[(date, cls)]))

    patches = []
    for label in sorted(range(1, len(sizes)), key=lambda label: -sizes[label]):
        share = float(sizes[label]) / (height * width)
        if share < MIN_SHARE:
            continue
        pixels = labels == label
        was, now = _shares(before_classes, pixels, class_names), _shares(after_classes, pixels, class_names)
        kind = kind_of(was, now)
        if kind is None:
            continue
        number_of = {"built": (1, BUILDINGS), "demolished": (0, BUILDINGS), "trees cut": (0, TREES)}.get(kind)
        found = count(*number_of, pixels) if number_of else 0
        before_name = max(was, key=lambda name: was[name])
        patches.append(
            ChangePatch(kind, before_name, max(now, key=lambda name: now[name]), found, region_of(pixels), share)
        )
    return _merged(patches)


def _merged(patches: list[ChangePatch]) -> list[ChangePatch]:
    """Patches of one kind, classes and region as one change (their counts and shares added)."""
    merged: dict[tuple[str, str, str, str], ChangePatch] = {}
    for p in patches:
        key = (p.kind, p.before, p.after, p.region)
        if key in merged:
            q = merged[key]
            merged[key] = ChangePatch(p.kind, p.before, p.after, q.count + p.count, p.region, q.share + p.share)
        else:
            merged[key] = p
    return list(merged.values())


def sentence(change: ChangePatch) -> str:
    """One change in words, as the Synthetic Earth's change captions say it (lower case, no full stop)."""
    where = f"in the {change.region}"
    n = change.count
    were = "were" if n != 1 else "was"
    if change.kind in ("built", "demolished"):
        things = f"{number(n)} buildings" if n != 1 else "one building"
        return f"{things} {were} {change.kind} {where}"
    if change.kind == "trees cut":
        things = f"{number(n)} trees" if n != 1 else "one tree"
        return f"{things} {were} cut down {where}"
    if change.kind == "forest cleared":
        return f"part of the forest {where} was cleared"
    if change.kind == "flooded":
        return f"{FLOODED_LAND.get(change.before, 'the land')} {where} was flooded"
    if change.kind == "new road":
        return f"a new road was built {where}"
    return f"{change.before} turned into {change.after} {where}"


def text(changes: Sequence[ChangePatch]) -> str:
    """The changes as one answer: their sentences joined, with the changed share of the window."""
    if not changes:
        return ""
    said = "; ".join(sentence(c) for c in changes)
    share = sum(c.share for c in changes)
    amount = f"{share:.0%}" if share >= 0.01 else "under 1%"
    return f"{said[0].upper()}{said[1:]} ({amount} of the area changed)."
