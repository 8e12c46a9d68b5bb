"""The RSA model fed at the scale it was trained for: a window finer than any it saw, shrunk and placed on its input.

The model reads every window resized to its square input (224 px). Trained on windows of 0.5 to 7 m per
input pixel (the config's ``trained_input_pixel_m``), it reads a 512 px window at 0.1 m (51 m across:
0.23 m per input pixel) at a scale it has never seen: roofs four times the size it knows. A
:class:`Placement` gives the model such a window at the low end: along each side finer than it, the
window takes only the share of the input its ground size fills at that scale, and the rest is padding
(:data:`PADDING`: the window's mean colour, or its edges mirrored). What comes back (boxes, masks, class
maps) is read in the window's part of the input and mapped back to the window's own pixels. A window
coarser than the high end cannot be made finer and is fed as read.

What this serves: the padded crops of class-level finds (rsa_instances.class_probabilities_at), where the
class head reads a fine window's objects at the ground scale its crops were tuned at; that measured better
(single trees and counts most). Placing the whole window for caption, referring ground and segment,
change and chat measured worse than feeding it as read (captions and grounding, with either padding; the
figures are at :data:`PLACE_FINE_WINDOWS` and in the model card), so that is off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: Whether a window finer than the trained range is placed (shrunk and padded) for caption, referring ground and
#: segment, change and chat. Off: measured worse than feeding the fine window as read (generator v2, 50 test
#: scenes and pairs, 0.1-0.3 m band, as read / mean-colour padding / edge reflection: caption CIDEr 0.980 /
#: 0.691 / 0.802, ground Acc@0.5 0.500 / 0.333 / 0.333; change accuracy 0.632 / 0.632 / 0.737 on 19 pairs).
#: Class-level finds still read a fine window in crops of a ground size (rsa_instances), which measured better.
PLACE_FINE_WINDOWS = False
#: What surrounds a placed window on the canvas: "reflect" (its edges mirrored) or "mean" (its mean colour). For the
#: padded class-level crops, reflection measured better (generator v2, 50 test scenes, 0.1-0.3 m: box AP50, mean of
#: the four classes, 0.216 with the mean colour, 0.361 reflected; buildings 0.414 -> 0.685).
PADDING = "reflect"
#: The largest side (pixels) of a canvas the placed window is drawn on; a larger one is drawn smaller (the
#: model reads 224 px of it anyway; the masks come back at this resolution and are resized to the window).
MAX_CANVAS = 1024


@dataclass(frozen=True)
class Placement:
    """A window (``window``: height, width) drawn on a canvas (``canvas``: height, width, canvas pixels) at
    ``offset`` (row, column of its top-left corner) with ``size`` (height, width) canvas pixels."""

    window: tuple[int, int]
    canvas: tuple[int, int]
    offset: tuple[int, int]
    size: tuple[int, int]

    @classmethod
    def centred(cls, window: tuple[int, int], canvas: tuple[float, float], max_side: int = MAX_CANVAS) -> Placement:
        """The window in the middle of a canvas of ``canvas`` window pixels (at least the window), drawn smaller
        when that canvas has a side over ``max_side``."""
        height, width = window
        want = (max(float(canvas[0]), height), max(float(canvas[1]), width))
        scale = min(1.0, max_side / max(want))
        out = (max(1, round(want[0] * scale)), max(1, round(want[1] * scale)))
        size = (min(out[0], max(1, round(height * scale))), min(out[1], max(1, round(width * scale))))
        offset = ((out[0] - size[0]) // 2, (out[1] - size[1]) // 2)
        return cls((height, width), out, offset, size)

    @property
    def scale(self) -> tuple[float, float]:
        """Canvas pixels per window pixel (rows, columns)."""
        return (self.size[0] / self.window[0], self.size[1] / self.window[1])

    def image(self, window: np.ndarray) -> np.ndarray:
        """The canvas: ``window`` (H x W x 3 uint8) resized to :attr:`size` if need be, padded (:data:`PADDING`)."""
        (y, x), (h, w) = self.offset, self.size
        drawn = resized(window, (h, w))
        if PADDING == "reflect":
            after = (self.canvas[0] - y - h, self.canvas[1] - x - w)
            return np.pad(drawn, ((y, after[0]), (x, after[1]), (0, 0)), mode="symmetric")
        fill = window.reshape(-1, window.shape[-1]).mean(axis=0) if window.size else np.zeros(window.shape[-1])
        out = np.empty((*self.canvas, window.shape[-1]), np.uint8)
        out[:] = np.round(fill).astype(np.uint8)
        out[y : y + h, x : x + w] = drawn
        return out

    def box(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float] | None:
        """A box in canvas pixels -> the window's pixels, clipped to the window; None when it lies outside it."""
        (y, x), (sy, sx) = self.offset, self.scale
        height, width = self.window
        x0, x1 = (min(max((v - x) / sx, 0.0), width) for v in (box[0], box[2]))
        y0, y1 = (min(max((v - y) / sy, 0.0), height) for v in (box[1], box[3]))
        return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None

    def point(self, point: tuple[float, float]) -> tuple[float, float] | None:
        (y, x), (sy, sx) = self.offset, self.scale
        px, py = (point[0] - x) / sx, (point[1] - y) / sy
        return (px, py) if 0 <= px <= self.window[1] and 0 <= py <= self.window[0] else None

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """A canvas-sized boolean mask -> the window's (its part of the canvas, resized nearest where it must be)."""
        (y, x), (h, w) = self.offset, self.size
        part = np.ascontiguousarray(mask[y : y + h, x : x + w])
        if (h, w) == self.window:
            return part
        rows = np.minimum((np.arange(self.window[0]) + 0.5) * h / self.window[0], h - 1).astype(int)
        cols = np.minimum((np.arange(self.window[1]) + 0.5) * w / self.window[1], w - 1).astype(int)
        return part[rows][:, cols]

    def maps(self, maps: torch.Tensor) -> torch.Tensor:
        """``[C, canvas h, canvas w]`` (class probabilities, a change map) -> ``[C, H, W]`` over the window."""
        (y, x), (h, w) = self.offset, self.size
        part = maps[:, y : y + h, x : x + w]
        if (h, w) == self.window:
            return part
        return F.interpolate(part[None].float(), size=self.window, mode="bilinear", align_corners=False)[0]


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An H x W x C uint8 image at ``size`` (height, width), area-averaged as the processor resizes (bilinear with
    antialiasing); the image itself when it has that size."""
    if image.shape[:2] == tuple(size):
        return image
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    out = F.interpolate(pixels[None], size=tuple(size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def input_pixel_m(length: int, pixel_size_m: float, input_side: int) -> float:
    """Ground metres per model-input pixel of a window side of ``length`` pixels of ``pixel_size_m`` metres."""
    return length * pixel_size_m / input_side


def fit(
    window: tuple[int, int], pixel_size_m: float | None, trained: tuple[float, float] | None, input_side: int
) -> Placement | None:
    """Where a window of ``window`` (height, width) pixels of ``pixel_size_m`` metres goes on the model's input so
    that each side is read at no finer than ``trained[0]`` metres per input pixel; None when no side is finer
    (the window is fed as read), when the pixel size or the trained range is unknown."""
    if pixel_size_m is None or trained is None or not math.isfinite(pixel_size_m) or pixel_size_m <= 0:
        return None
    low = float(trained[0])
    sides = [max(length, low * input_side / pixel_size_m) for length in window]  # the canvas, in window pixels
    if all(side <= length * (1 + 1e-6) for side, length in zip(sides, window)):
        return None
    return Placement.centred(window, (sides[0], sides[1]))


def fed_pixel_m(placement: Placement, pixel_size_m: float, input_side: int) -> float:
    """Ground metres per model-input pixel of what a placed window is fed at (its finer side's)."""
    (ch, cw), (sy, sx) = placement.canvas, placement.scale
    return min(ch * pixel_size_m / sy, cw * pixel_size_m / sx) / input_side


def coarser(
    window: tuple[int, int], pixel_size_m: float | None, trained: tuple[float, float] | None, side: int
) -> bool:
    """Whether a window is coarser than the model's trained range (fed as read: it cannot be made finer)."""
    if pixel_size_m is None or trained is None:
        return False
    return min(input_pixel_m(length, pixel_size_m, side) for length in window) > float(trained[1])
