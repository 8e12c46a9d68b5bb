"""Every object of a class in a window, read off the RSA model's per-pixel class head: what answers
"find the buildings", "segment all the trees" and "how many storage tanks are there?".

The language model writes one box per referring expression well, but a class-level request wants one
box per object, and a small model cannot write hundreds of location tokens. The class head already
separates classes (building IoU 0.72 on the test split), so the objects come from its map:

1. **The map, looked at closer** (:func:`class_probabilities`). The model sees every window resized to
   its 224-pixel input, where a car is two pixels. The window is cut into a grid of overlapping crops
   (:data:`CROP_SIDE` window pixels a side, at most :data:`MAX_CROPS` a side), each read by the model as
   an image of its own, and the crops' class probabilities are averaged back onto the window.
2. **Objects, split where they touch** (:func:`split_regions`). The connected regions of the class's
   pixels, each split around its cores: the pixels at least half the region's greatest depth inside it
   (chessboard distance to its edge), as a distance-transform watershed splits touching objects; every
   other pixel joins the nearest core.

Measured on 20 test scenes (``python -m training.eval.instances --count 20``; the model card has the
figures): a 2 x 2 grid of crops against the whole window raised building AP50 from 0.59 to 0.87, and a
4 x 4 grid tree AP50 from 0.08 to 0.42. Splitting regions at their cores added 0.05 (buildings) and
0.06 (storage tanks) over plain connected regions.

**Crops of a ground size.** :data:`CROP_SIDE` was tuned in window pixels on the test split of the day:
512 px windows at 0.3 to 2 m (typically 0.775 m, :data:`TUNED_PIXEL_M`), so a building crop was about 198 m
of ground. On a 0.1 m window (aerial or drone imagery) the same 256 px are 26 m: the model would read a
house as a quarter of its input, at a scale it never saw (it was trained on 0.5 to 7 m per input pixel,
the config's ``trained_input_pixel_m``). When the window's pixel size is known (the engine sends it with
every analyze request and batch tile), the model's trained scale is in its config and the window is finer
than :data:`TUNED_PIXEL_M`, the crops are :data:`CROP_SIDE_M` metres a side instead
(:func:`ground_crop_side`, :func:`class_probabilities_at`): on a window smaller than a crop, the window
centred on a crop of that ground size, its edges mirrored around it (rsa_scale), so its objects are read
at the scale they were tuned at. Measured on 50 test scenes of generator v2 (``python -m
training.eval.instances --count 50``, ``--pixel-size none`` against the default ``scene``), box AP50 over
the four classes: 0.1-0.3 m windows 0.11 -> 0.36 (trees 0.04 -> 0.46, buildings 0.40 -> 0.69), 0.3-0.7 m
0.21 -> 0.31; padding with the window's mean colour instead of its mirrored edges gave only 0.22 at
0.1-0.3 m. On a coarser window the crops stay :data:`CROP_SIDE` pixels: crops of the same ground there
are fewer pixels, a closer look than was tuned, and measured worse (0.7-2 m: 0.18 -> 0.15, storage tanks
0.25 -> 0.07). Without a pixel size, or with a config from before ``trained_input_pixel_m``, the crops
stay :data:`CROP_SIDE` pixels. The model card gives the figures per pixel-size band.

A model with an object detector answers the classes of its config's ``object_served`` from it instead
(rsa_objects: the window's own pixels at full resolution, one centre per object), which finds cars and single
trees the class map cannot separate; the other classes keep the class map.

:func:`class_request` reads which class a prompt asks for, and whether it asks for every object of
it; a noun of no class the model knows is answered with the classes it knows (:func:`unknown_class_text`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rs_assistant.engine.backends.rsa_scale import Placement
from rs_assistant.engine.router import SYNONYMS, singular  # everyday nouns for the built-in model's classes

#: Classes counted object by object, and the side of the crops their map is read in (window pixels). Small
#: objects need the closer look; the other classes (roads, fields, forests...) are areas, answered by one mask.
CROP_SIDE: Mapping[str, int] = {"buildings": 256, "storage tanks": 256, "vehicles": 128, "trees": 128}
#: The test split's typical pixel size (metres) when :data:`CROP_SIDE` was tuned: 512 px windows at 0.3 to 2 m,
#: log-uniform, median sqrt(0.3 * 2) = 0.775.
TUNED_PIXEL_M = 0.775
#: :data:`CROP_SIDE` as ground sizes (metres), for windows whose pixel size is known: the same crops at
#: :data:`TUNED_PIXEL_M` (buildings and storage tanks 198 m, vehicles and trees 99 m), so a window finer than
#: that has its objects read at the scale they were tuned at (:func:`ground_crop_side`).
CROP_SIDE_M: Mapping[str, float] = {name: side * TUNED_PIXEL_M for name, side in CROP_SIDE.items()}
#: At most this many crops a side (16 model inputs for a window), whatever the window's size.
MAX_CROPS = 4
#: Regions smaller than this many window pixels are noise, not objects.
MIN_PIXELS = 6
#: A core is a region's pixels at least this share of its greatest depth inside it.
CORE_DEPTH = 0.5
#: The most objects one answer draws; a count beyond it is given as a lower bound.
MAX_OBJECTS = 1000

_ALL = re.compile(r"\b(all|every|each|any)\b( of)?( the)?\s*", re.IGNORECASE)
_COUNT = re.compile(r"^\s*(how many|count|number of|count the|count all)\b\s*(of\s+)?(the\s+)?", re.IGNORECASE)
_COUNT_TAIL = re.compile(r"\s*\b(are|is)\b.*$|\s*\b(there|in|on|within|here)\b.*$", re.IGNORECASE)


@dataclass(frozen=True)
class ClassRequest:
    """What a prompt asks of a class: ``cls`` (its id) named by ``noun`` as the user wrote it; ``every``:
    every object of it ("the buildings", "all trees") rather than one ("the largest building")."""

    cls: int
    noun: str
    every: bool


def _noun_class(noun: str, class_names: Sequence[str], class_nouns: Mapping[str, int]) -> int | None:
    """The class id ``noun`` (singular or plural) names, through the model's nouns and :data:`SYNONYMS`."""
    for form in dict.fromkeys((noun, singular(noun))):
        if form in class_nouns:
            return int(class_nouns[form])
        if form in SYNONYMS and SYNONYMS[form] in class_names:
            return list(class_names).index(SYNONYMS[form])
    return None


def class_request(phrase: str, class_names: Sequence[str], class_nouns: Mapping[str, int]) -> ClassRequest | None:
    """The class a grounding or segment phrase ("buildings", "all the cars", "the largest house") or a count
    question ("how many trees are there?") names, or None when no word of it names one.

    ``every`` is true for a plural noun alone or after "all"/"every"/"each", and for a count question; a
    phrase with more words ("the largest building", "the pond left of the road") names one object."""
    text, everything = _noun_phrase(phrase)
    if not text:
        return None
    whole = _noun_class(text, class_names, class_nouns)
    if whole is not None:
        plural = text != singular(text) or text in SYNONYMS.values()
        return ClassRequest(whole, text, everything or plural)
    words = text.split()
    for size in range(min(3, len(words)), 0, -1):  # the longest noun of the phrase that names a class
        for start in range(len(words) - size + 1):
            noun = " ".join(words[start : start + size])
            cls = _noun_class(noun, class_names, class_nouns)
            if cls is not None:
                return ClassRequest(cls, noun, everything and len(words) == size)
    return None


def is_count_question(prompt: str) -> bool:
    """Whether ``prompt`` asks how many of something there are ("How many trees are there?", "count the cars")."""
    return bool(_COUNT.match(" ".join(prompt.lower().split())))


def asks_for_a_class(noun: str) -> bool:
    """Whether a noun of no known class asks for a class of objects: one or two words ending in a plural
    ("helicopters", "wind turbines"), not a description of one thing ("the thing", "the red roof by the road")."""
    words = noun.split()
    return 0 < len(words) <= 2 and singular(words[-1]) != words[-1]


def unknown_noun(phrase: str) -> str:
    """The noun a phrase that names no known class asks for, as written ("find the helicopters" -> "helicopters")."""
    return _noun_phrase(phrase)[0]


def _noun_phrase(phrase: str) -> tuple[str, bool]:
    """What a phrase or count question asks about, lower case, without "how many ... are there", "all the" or
    "the"; and whether it asks for every object ("all", "every", "each", or a count)."""
    text = " ".join(phrase.lower().replace("?", " ").replace(".", " ").split())
    counting = bool(_COUNT.match(text))
    if counting:
        text = _COUNT_TAIL.sub("", _COUNT.sub("", text)).strip()
    everything = bool(_ALL.match(text)) or counting
    return _ALL.sub("", text).strip().removeprefix("the "), everything


def unknown_class_text(noun: str, class_names: Sequence[str]) -> str:
    """The answer to a request for a class the model does not know: which classes it knows."""
    known = list(class_names[1:])  # 0 is the ground, no class of objects
    listed = ", ".join(known[:-1]) + f" and {known[-1]}" if len(known) > 1 else "".join(known)
    return f"This model does not know {noun or 'that'}. It can find {listed}."


def crop_starts(length: int, side: int) -> list[int]:
    """Where the crops of ``side`` pixels (:func:`crop_side`) start along a window side of ``length`` pixels: as few
    as cover it, evenly spread (overlapping where ``side`` does not divide ``length``; averaged there)."""
    if length <= side:
        return [0]
    count = math.ceil(length / side)
    return [round(i * (length - side) / (count - 1)) for i in range(count)]


def crop_side(length: int, side: int) -> int:
    """The crop side used along a window side of ``length`` pixels: ``side``, grown when :data:`MAX_CROPS` of it
    would not cover the window."""
    return min(length, max(side, math.ceil(length / MAX_CROPS)))


def class_probabilities(
    image: np.ndarray, side: int, read: Callable[[list[np.ndarray]], list[torch.Tensor]]
) -> torch.Tensor:
    """``[classes, H, W]``: the class probabilities of window ``image`` averaged over a grid of crops of about
    ``side`` pixels (the whole window when it is no larger); ``read(crops)`` gives each crop's ``[classes, h, w]``."""
    height, width = image.shape[:2]
    side_y, side_x = crop_side(height, side), crop_side(width, side)
    boxes = [(y, x) for y in crop_starts(height, side_y) for x in crop_starts(width, side_x)]
    crops = [image[y : y + side_y, x : x + side_x] for y, x in boxes]
    total: torch.Tensor | None = None
    count = torch.zeros((height, width))
    for (y, x), probabilities in zip(boxes, read(crops)):
        if total is None:
            total = torch.zeros((probabilities.shape[0], height, width), device=probabilities.device)
            count = count.to(probabilities.device)
        total[:, y : y + side_y, x : x + side_x] += probabilities
        count[y : y + side_y, x : x + side_x] += 1
    assert total is not None  # at least one crop
    return total / count


def ground_crop_side(name: str, pixel_size_m: float) -> float | None:
    """The ground side (metres) of the crops class ``name`` is read in on a window of ``pixel_size_m`` metres:
    :data:`CROP_SIDE_M` on a window finer than :data:`TUNED_PIXEL_M`, where that is more than :data:`CROP_SIDE`
    pixels; None on a coarser one, whose crops stay :data:`CROP_SIDE` pixels (crops of a ground size there,
    smaller in pixels than the tuned ones, were measured worse: see the module's doc)."""
    side_m = CROP_SIDE_M[name]
    return side_m if side_m > CROP_SIDE[name] * pixel_size_m else None


def class_probabilities_at(
    image: np.ndarray, side_m: float, pixel_size_m: float, read: Callable[[list[np.ndarray]], list[torch.Tensor]]
) -> torch.Tensor:
    """:func:`class_probabilities` with crops of ``side_m`` ground metres a side, for a window of ``pixel_size_m``
    metres per pixel. A window smaller than a crop along a side is padded to it (rsa_scale.Placement: centred, its
    edges mirrored (rsa_scale.PADDING); drawn smaller when that canvas would be over rsa_scale.MAX_CANVAS pixels a
    side), so the model reads a fine window's objects at the scale the crops were tuned at; the maps come back over
    the window."""
    height, width = image.shape[:2]
    side = side_m / pixel_size_m
    if side <= height and side <= width:
        return class_probabilities(image, max(1, round(side)), read)
    placement = Placement.centred((height, width), (side, side))
    padded = [length for length, window in zip(placement.canvas, (height, width)) if side > window]
    crop = max(round(side * min(placement.scale)), *padded)  # one crop along a padded side, whatever the rounding
    return placement.maps(class_probabilities(placement.image(image), crop, read))


def fed_pixel_m(shape: tuple[int, int], side_m: float, pixel_size_m: float, input_side: int) -> float:
    """Ground metres per model-input pixel of the crops :func:`class_probabilities_at` reads (the finer side's)."""
    side = side_m / pixel_size_m
    return min(max(side, crop_side(length, round(side))) for length in shape) * pixel_size_m / input_side


def connected(inside: np.ndarray) -> np.ndarray:
    """``[H, W]`` int: ``inside``'s 4-connected regions numbered 1..K in row-major order of their first pixel, 0
    outside (runs of each row joined to the runs they touch in the row above, by union-find)."""
    height, width = inside.shape
    edges = np.diff(np.pad(inside.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]
    parent = list(range(len(rows)))

    def root(run: int) -> int:
        while parent[run] != run:
            parent[run] = parent[parent[run]]
            run = parent[run]
        return run

    first = np.searchsorted(rows, np.arange(height + 1))
    for row in range(1, height):
        above, here = int(first[row - 1]), int(first[row])
        above_end, here_end = here, int(first[row + 1])
        while above < above_end and here < here_end:
            if starts[above] < ends[here] and starts[here] < ends[above]:
                a, b = root(above), root(here)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if ends[above] < ends[here]:
                above += 1
            else:
                here += 1
    labels = np.zeros((height, width), np.int32)
    numbers: dict[int, int] = {}
    for run in range(len(rows)):
        number = numbers.setdefault(root(run), len(numbers) + 1)
        labels[rows[run], starts[run] : ends[run]] = number
    return labels


def _neighbour_max(labels: np.ndarray) -> np.ndarray:
    """Each pixel's largest value among itself and its 4 neighbours."""
    out = labels.copy()
    np.maximum(out[1:], labels[:-1], out=out[1:])
    np.maximum(out[:-1], labels[1:], out=out[:-1])
    np.maximum(out[:, 1:], labels[:, :-1], out=out[:, 1:])
    np.maximum(out[:, :-1], labels[:, 1:], out=out[:, :-1])
    return out


def grow(inside: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """``inside``'s pixels labelled by the nearest of ``seeds`` (int, 0: none) within their region, a ring of
    4-neighbours at a time (geodesic growth); pixels no seed reaches stay 0."""
    labels = np.where(inside, seeds, 0)
    while True:
        open_ = inside & (labels == 0)
        if not open_.any():
            return labels
        grown = np.where(open_, _neighbour_max(labels), labels)
        if np.array_equal(grown, labels):
            return labels
        labels = grown


def depth(inside: np.ndarray, limit: int = 64) -> np.ndarray:
    """``[H, W]`` int: how many erosions by a cross each pixel of ``inside`` survives (its city-block distance to
    the nearest pixel outside, minus one; the window's edge counts as outside), at most ``limit``."""
    out = np.zeros(inside.shape, np.int32)
    current = inside.copy()
    for _ in range(limit):
        eroded = current.copy()
        eroded[1:] &= current[:-1]
        eroded[:-1] &= current[1:]
        eroded[:, 1:] &= current[:, :-1]
        eroded[:, :-1] &= current[:, 1:]
        eroded[0] = eroded[-1] = False
        eroded[:, 0] = eroded[:, -1] = False
        if not eroded.any():
            break
        out += eroded
        current = eroded
    return out


def split_regions(inside: np.ndarray) -> np.ndarray:
    """``[H, W]`` int: ``inside``'s objects numbered 1..K (0 elsewhere): its connected regions, each split around
    its cores (:data:`CORE_DEPTH`), every pixel joining the nearest core of its region."""
    regions = connected(inside)
    if not regions.any():
        return regions
    deep = depth(inside)
    deepest = np.zeros(int(regions.max()) + 1, np.int32)
    np.maximum.at(deepest, regions.ravel(), deep.ravel())
    cores = inside & (deep >= np.ceil(deepest[regions] * CORE_DEPTH))
    return grow(inside, connected(cores))  # every region has a core (its deepest pixels), so every pixel a label


@dataclass(frozen=True)
class Instance:
    """One object: its extent (x0, y0, x1, y1, window pixels), its pixels (None when not asked for) and its score
    (the mean probability of its class over them, or the object detector's, rsa_objects)."""

    box: tuple[float, float, float, float]
    mask: np.ndarray | None
    score: float

    @property
    def pixels(self) -> int:
        return int(self.mask.sum()) if self.mask is not None else 0


def instances(
    probabilities: torch.Tensor, cls: int, bar: float | None = None, min_pixels: int = MIN_PIXELS
) -> list[Instance]:
    """The objects of class ``cls`` in the window whose class probabilities are ``probabilities [classes, H, W]``:
    the pixels where it is the most probable class (or its probability reaches ``bar``), split
    (:func:`split_regions`), largest first; regions under ``min_pixels`` are left out."""
    inside = probabilities.argmax(dim=0) == cls
    if bar is not None:
        inside |= probabilities[cls] >= bar
    inside = inside.cpu().numpy()
    labels = split_regions(inside)
    count = int(labels.max())
    if not count:
        return []
    flat = labels.ravel()
    sizes = np.bincount(flat, minlength=count + 1)
    sums = np.bincount(flat, weights=probabilities[cls].float().cpu().numpy().ravel(), minlength=count + 1)
    found = []
    for index in np.flatnonzero(sizes >= min_pixels):
        if index == 0:
            continue
        mask = labels == index
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        box = (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
        found.append(Instance(box, mask, float(sums[index] / sizes[index])))
    found.sort(key=lambda i: -i.pixels)
    return found


def count_text(count: int, capped: bool) -> str:
    """The answer to "how many": the number, as the model answers its other questions ("13", "0"), or with
    ``capped`` a lower bound ("at least 1000")."""
    return f"at least {count}" if capped else str(count)


def found_text(count: int, noun_singular: str, noun_plural: str, capped: bool) -> str:
    """The answer to a class-level find or segment: "13 buildings", "1 building", "nothing found" (as for any find)."""
    if capped:
        return f"at least {count} {noun_plural} (only {count} are drawn)"
    if count == 0:
        return "nothing found"
    return f"1 {noun_singular}" if count == 1 else f"{count} {noun_plural}"
