"""Box conventions of vision-language models, converted to pixels of the window the model was given.

Each model family writes boxes its own way; each parser here turns one convention into window
pixels (x0, y0, x1, y1), x to the right and y down, origin at the window's top-left corner:

=====================  ==================================================  =====================
family                 what the model writes                               scale
=====================  ==================================================  =====================
Qwen2.5-VL             ``[{"bbox_2d": [x1, y1, x2, y2], "label": "car"}]``  absolute pixels of its
                       (often in a json code fence), or bare lists          *resized* input image
Qwen2-VL               ``<|object_ref_start|>car<|object_ref_end|>``        0-1000
                       ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``
Florence-2             ``car<loc_x1><loc_y1><loc_x2><loc_y2>`` (boxes),     1000 bins, each read
                       ``<loc_x><loc_y>...`` (polygons, ``<sep>`` between)   at its centre
GeoChat / SkyEyeGPT /  ``{<x1><y1><x2><y2>|θ}`` (angle optional),          0-100
GeoPix                 ``[x1, y1, x2, y2]``
=====================  ==================================================  =====================

Every parser is total: garbage text gives the boxes that do parse (often none), never an
exception. Boxes are put in order (x0 <= x1, y0 <= y1), clamped to the window, and dropped when
they have no area left. Sizes are always (width, height).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Size = tuple[int, int]  # (width, height) in pixels
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass(frozen=True)
class ParsedBox:
    """One box in window pixels; ``angle`` (degrees) only for rotated-box conventions."""

    box: Box
    label: str = ""
    angle: float | None = None


@dataclass(frozen=True)
class ParsedPolygon:
    """One ring of (x, y) vertices in window pixels (at least three)."""

    points: tuple[tuple[float, float], ...]
    label: str = ""


_NUM = r"-?\d+(?:\.\d+)?"


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1); 0 when both are empty."""
    ix0, iy0 = max(a[0], b[0]), max(a[1], b[1])
    ix1, iy1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, ix1 - ix0) * max(0.0, iy1 - iy0)
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def clamp_box(box: Box, window: Size) -> Box | None:
    """``box`` ordered and clamped to the window; None when nothing of it is left."""
    width, height = window
    x0, x1 = sorted((box[0], box[2]))
    y0, y1 = sorted((box[1], box[3]))
    x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
    y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        return None
    return (x0, y0, x1, y1)


def _scaled(values: list[float], window: Size, scale: tuple[float, float]) -> Box | None:
    """Four numbers in a model's frame of ``scale`` (width, height) units -> a clamped window box."""
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        return None
    sx, sy = window[0] / scale[0], window[1] / scale[1]
    return clamp_box((values[0] * sx, values[1] * sy, values[2] * sx, values[3] * sy), window)


# --- Qwen2.5-VL: absolute pixels of the resized image ----------------------------------------

_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.DOTALL)
_JSON_OBJECT = re.compile(r"\{[^{}]*\}")
_BARE_LIST = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")


def parse_qwen25_boxes(text: str, window: Size, resized: Size) -> list[ParsedBox]:
    """Qwen2.5-VL boxes: JSON ``bbox_2d`` objects or bare ``[x1, y1, x2, y2]`` lists.

    Coordinates are pixels of the image the model saw, ``resized`` (width, height) after its
    processor's resize; they are scaled by window / resized. A truncated answer keeps the
    objects that were complete.
    """
    if resized[0] <= 0 or resized[1] <= 0:
        return []
    found: list[tuple[list[float], str]] = []
    for candidate in [m.group(1) for m in _FENCE.finditer(text)] or [text]:
        found.extend(_qwen_candidate(candidate))
    boxes = []
    for values, label in found:
        box = _scaled(values, window, resized)
        if box is not None:
            boxes.append(ParsedBox(box, label))
    return boxes


def _qwen_candidate(text: str) -> list[tuple[list[float], str]]:
    # The outermost JSON value: from the first opening bracket to the last matching closer.
    openers = sorted((text.find(start), end) for start, end in (("[", "]"), ("{", "}")) if start in text)
    for i, end in openers:
        j = text.rfind(end)
        if i < j:
            try:
                return list(_walk_json(json.loads(text[i : j + 1])))
            except (ValueError, RecursionError):  # not JSON, or nested deeper than Python recurses
                pass
    objects: list[tuple[list[float], str]] = []
    for match in _JSON_OBJECT.finditer(text):
        try:
            objects.extend(_walk_json(json.loads(match.group())))
        except (ValueError, RecursionError):
            continue
    if objects:
        return objects
    return [([float(g) for g in m.groups()], "") for m in _BARE_LIST.finditer(text)]


def _walk_json(node: Any) -> Iterator[tuple[list[float], str]]:
    if isinstance(node, dict):
        coords = node.get("bbox_2d", node.get("bbox"))
        if coords is not None:
            values = _numbers(coords)
            if values is not None:
                label = node.get("label")
                yield values, label.strip() if isinstance(label, str) else ""
            return
        for value in node.values():
            yield from _walk_json(value)
    elif isinstance(node, list):
        values = _numbers(node)
        if values is not None:
            yield values, ""
            return
        for item in node:
            yield from _walk_json(item)


def _numbers(node: Any) -> list[float] | None:
    if (
        isinstance(node, list)
        and len(node) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in node)
    ):
        return [float(v) for v in node]
    return None


# --- Qwen2-VL: 0-1000 with object_ref / box tokens ----------------------------------------------

_QWEN2_TOKENS = re.compile(
    r"<\|object_ref_start\|>(?P<label>.*?)<\|object_ref_end\|>"
    rf"|<\|box_start\|>\s*\(\s*(?P<x0>{_NUM})\s*,\s*(?P<y0>{_NUM})\s*\)\s*,\s*"
    rf"\(\s*(?P<x1>{_NUM})\s*,\s*(?P<y1>{_NUM})\s*\)\s*<\|box_end\|>",
    re.DOTALL,
)


def parse_qwen2_boxes(text: str, window: Size) -> list[ParsedBox]:
    """Qwen2-VL boxes, 0-1000 on both axes; each box takes the object_ref before it as label."""
    boxes = []
    label = ""
    for match in _QWEN2_TOKENS.finditer(text):
        if match.group("label") is not None:
            label = match.group("label").strip()
            continue
        box = _scaled([float(match.group(k)) for k in ("x0", "y0", "x1", "y1")], window, (1000, 1000))
        if box is not None:
            boxes.append(ParsedBox(box, label))
    return boxes


# --- Florence-2: <loc_N>, 1000 bins -------------------------------------------------------------

_FLORENCE_TOKENS = re.compile(r"<loc_(?P<loc>\d+)>|(?P<sep></?poly>|<sep>)|<[^<>]*>|(?P<text>[^<]+)|<")
_FLORENCE_BINS = 1000


def _florence_runs(text: str) -> list[tuple[str, list[int]]]:
    """Split Florence-2 output into runs of location bins, each with the phrase before it.

    A run ends at the next phrase, at ``<sep>``, ``<poly>`` or ``</poly>``; other tags
    (``<s>``, ``</s>``, ``<pad>``, ``<od>`` ...) are skipped.
    """
    runs: list[tuple[str, list[int]]] = []
    label, locs = "", []
    for match in _FLORENCE_TOKENS.finditer(text):
        if match.group("loc") is not None:
            locs.append(int(match.group("loc")))
        elif match.group("sep") is not None or (match.group("text") is not None and match.group("text").strip()):
            if locs:
                runs.append((label, locs))
                locs = []
            if match.group("text") is not None:
                label = match.group("text").strip()
    if locs:
        runs.append((label, locs))
    return runs


def _bin_centre(loc: int, size: int) -> float:
    return (min(loc, _FLORENCE_BINS - 1) + 0.5) * size / _FLORENCE_BINS


def parse_florence2_boxes(text: str, window: Size) -> list[ParsedBox]:
    """Florence-2 boxes: a phrase followed by groups of four ``<loc_N>`` (x1, y1, x2, y2).

    Bin N covers [N, N + 1) thousandths of the image side and is read at its centre, as
    Florence-2's own post-processor does; the image is the whole window (Florence-2 resizes
    without keeping the aspect ratio, so bins are fractions of each side).
    """
    boxes = []
    width, height = window
    for label, locs in _florence_runs(text):
        for i in range(0, len(locs) - 3, 4):
            x0, y0, x1, y1 = locs[i : i + 4]
            box = clamp_box(
                (_bin_centre(x0, width), _bin_centre(y0, height), _bin_centre(x1, width), _bin_centre(y1, height)),
                window,
            )
            if box is not None:
                boxes.append(ParsedBox(box, label))
    return boxes


def parse_florence2_polygons(text: str, window: Size) -> list[ParsedPolygon]:
    """Florence-2 polygons (referring segmentation): ``<loc_x><loc_y>`` pairs, ``<sep>`` between rings."""
    polygons = []
    width, height = window
    for label, locs in _florence_runs(text):
        points = tuple(
            (_bin_centre(locs[i], width), _bin_centre(locs[i + 1], height)) for i in range(0, len(locs) - 1, 2)
        )
        if len(points) >= 3:
            polygons.append(ParsedPolygon(points, label))
    return polygons


# --- GeoChat / SkyEyeGPT / GeoPix: 0-100 --------------------------------------------------------

_PERCENT_TOKENS = re.compile(
    r"<p>(?P<label>.*?)</p>"
    rf"|\{{\s*<(?P<bx0>{_NUM})>\s*,?\s*<(?P<by0>{_NUM})>\s*,?\s*<(?P<bx1>{_NUM})>\s*,?\s*<(?P<by1>{_NUM})>"
    rf"\s*(?:\|\s*<?\s*(?P<angle>{_NUM})\s*>?\s*)?\}}"
    rf"|\[\s*(?P<lx0>{_NUM})\s*,\s*(?P<ly0>{_NUM})\s*,\s*(?P<lx1>{_NUM})\s*,\s*(?P<ly1>{_NUM})\s*\]",
    re.DOTALL,
)


def parse_percent_boxes(text: str, window: Size) -> list[ParsedBox]:
    """0-100 boxes: ``{<x1><y1><x2><y2>|θ}`` (GeoChat's rotated form, θ in degrees) or ``[x1, y1, x2, y2]``.

    A ``<p>phrase</p>`` before a box is its label. The box is the axis-aligned one the model
    wrote; a rotation is kept in ``angle`` for the caller.
    """
    boxes = []
    label = ""
    for match in _PERCENT_TOKENS.finditer(text):
        if match.group("label") is not None:
            label = match.group("label").strip()
            continue
        prefix = "b" if match.group("bx0") is not None else "l"
        values = [float(match.group(prefix + k)) for k in ("x0", "y0", "x1", "y1")]
        box = _scaled(values, window, (100, 100))
        if box is None:
            continue
        angle = float(match.group("angle")) if match.group("angle") is not None else None
        boxes.append(ParsedBox(box, label, angle))
    return boxes


# --- the phrase a grounding prompt asks for -----------------------------------------------------

_COMMAND = re.compile(
    r"^(?:please\s+)?(?:(?:can|could|would) you\s+)?(?:please\s+)?"
    r"(?:find|locate|detect|ground|show(?:\s+me)?|mark|highlight|outline|segment|count|where\s+(?:are|is))\s+",
    re.IGNORECASE,
)
_DETERMINER = re.compile(r"^(?:(?:all|every|each|any)\s+(?:of\s+)?)?(?:(?:the|a|an)\s+)?", re.IGNORECASE)
_WHERE = re.compile(r"\s+(?:in|on|within)\s+(?:the|this)\s+(?:image|picture|region|area|map|scene)$", re.IGNORECASE)


def target_phrase(prompt: str) -> str:
    """What a grounding prompt asks for: "Find all the storage tanks." -> "storage tanks"."""
    phrase = _COMMAND.sub("", prompt.strip().rstrip(" .?!"))
    phrase = _DETERMINER.sub("", phrase)
    return _WHERE.sub("", phrase).strip()
