"""Natural forest as individual crowns of several species (render side; labels are untouched).

Crowns sit on a jittered grid over the padded texture canvas (so the second date of a pair, whose
textures are shifted with its content, sees the same trees). Each grid cell holds one crown whose
species is drawn from the mix of the forest it stands in (``deciduous``: broadleaf and birch,
``conifer``: spruce and pine, ``mixed``: all four); the species sets its radius, height, profile
(a cone for conifers, a dome for broadleaves), how lobed its outline is and its colours by season.
A pixel shows the highest crown surface above it (a canopy height model over the 3 x 3 nearest
cells), or a gap down to the forest floor. Crowns whose centre is outside the forest are not
drawn and crowns near its edge shrink to fit, so what is drawn as crowns stays inside the forest
mask, which the labels take from the forest's polygon as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from training.data.synthetic.textures import Textures

RGB = tuple[float, float, float]

SPACING_M = 4.6
"""Crown grid spacing in metres. A crown's centre stays within a quarter spacing of its cell's centre
when its radius exceeds a quarter spacing, and its lobed radius under 1.25 spacings, so the 3 x 3
cells around a pixel hold every crown that reaches it."""


@dataclass(frozen=True)
class Species:
    """How one tree species looks from above (sizes in metres)."""

    name: str
    radius: tuple[float, float]
    height: tuple[float, float]
    cone: bool
    """Cone-shaped crown (conifers) rather than a dome."""
    lobes: float
    """How ragged the outline is (0: a circle)."""
    arms: int
    """Branch whorls seen from above (conifers' star outline), 0 for none."""
    colours: dict[str, tuple[RGB, ...]]
    """Per season, the colours a crown is drawn from."""


SPECIES: tuple[Species, ...] = (
    Species(
        "broadleaf",
        (2.6, 4.5),
        (16.0, 26.0),
        False,
        0.16,
        0,
        {
            "spring": ((0.30, 0.45, 0.18), (0.34, 0.48, 0.20), (0.27, 0.40, 0.17)),
            "summer": ((0.19, 0.31, 0.13), (0.22, 0.33, 0.14), (0.17, 0.28, 0.12)),
            "autumn": ((0.55, 0.33, 0.12), (0.62, 0.50, 0.15), (0.45, 0.24, 0.11), (0.32, 0.35, 0.14)),
            "winter": ((0.36, 0.32, 0.28), (0.40, 0.35, 0.30)),
        },
    ),
    Species(
        "birch",
        (1.6, 3.0),
        (14.0, 22.0),
        False,
        0.22,
        0,
        {
            "spring": ((0.40, 0.55, 0.22), (0.43, 0.57, 0.25)),
            "summer": ((0.28, 0.42, 0.17), (0.31, 0.44, 0.19)),
            "autumn": ((0.72, 0.62, 0.20), (0.66, 0.55, 0.18)),
            "winter": ((0.46, 0.41, 0.37), (0.50, 0.45, 0.40)),
        },
    ),
    Species(
        "spruce",
        (1.2, 2.3),
        (18.0, 30.0),
        True,
        0.06,
        8,
        {
            s: ((0.10, 0.19, 0.12), (0.11, 0.20, 0.14), (0.09, 0.17, 0.11))
            for s in ("spring", "summer", "autumn", "winter")
        },
    ),
    Species(
        "pine",
        (1.8, 3.2),
        (16.0, 26.0),
        False,
        0.3,
        0,
        {
            s: ((0.16, 0.24, 0.13), (0.18, 0.25, 0.12), (0.14, 0.22, 0.13))
            for s in ("spring", "summer", "autumn", "winter")
        },
    ),
)
SPECIES_NAMES = tuple(s.name for s in SPECIES)
FOREST_MIX: dict[str, tuple[float, float, float, float]] = {
    # forest style -> odds of SPECIES (broadleaf, birch, spruce, pine)
    "deciduous": (0.68, 0.32, 0.0, 0.0),
    "conifer": (0.0, 0.0, 0.6, 0.4),
    "mixed": (0.34, 0.16, 0.3, 0.2),
    "": (0.5, 0.2, 0.2, 0.1),
}
STYLES = tuple(FOREST_MIX)
FLOOR: RGB = (0.20, 0.22, 0.14)
"""The forest floor seen in gaps between crowns (before its shade)."""


@dataclass(frozen=True, eq=False)
class Crowns:
    """Which crown each forest pixel shows (arrays over the pixels asked about, in their order).

    ``crown`` is a crown's id (from its forest style and grid cell) or -1 in a gap; ``species`` an index
    into :data:`SPECIES` (-1 in a gap); ``t`` the distance from the crown's centre relative to its
    radius; ``ux``, ``uy`` the unit direction from the centre; ``height`` the canopy surface in
    metres (the forest floor, 0, in gaps); ``shade`` in [0, 1] how much of the sun other crowns
    take. ``centres`` maps each crown id drawn to (x, y, radius) in scene pixels, after shrinking.
    """

    crown: np.ndarray
    species: np.ndarray
    t: np.ndarray
    ux: np.ndarray
    uy: np.ndarray
    height: np.ndarray
    shade: np.ndarray
    centres: dict[int, tuple[float, float, float]]


def _grid(textures: Textures, spacing: float) -> tuple[int, np.ndarray]:
    """Per cell: jitter x, y, radius, height, species and lobe draws (all uniform 0..1)."""
    n = int((textures.size + 2 * textures.pad) / spacing) + 3
    return n, textures.rng("crowns").uniform(0.0, 1.0, (n, n, 6)).astype(np.float32)


@dataclass(frozen=True, eq=False)
class _Cells:
    """Per (forest style, grid cell), flattened: crown centre, radius (pixels), height (m), species."""

    cx: np.ndarray
    cy: np.ndarray
    r: np.ndarray
    h: np.ndarray
    species: np.ndarray


def _cell_table(
    cells: np.ndarray,
    styles: list[str],
    spacing: float,
    ppm: float,
    origin: tuple[int, int],
    forest: np.ndarray,
) -> _Cells:
    """Every cell's crown for each forest style (the species, and so the size, depend on the style)."""
    n = cells.shape[0]
    size = forest.shape[0]
    room = ndimage.distance_transform_edt(forest).astype(np.float32)  # pixels from a forest pixel to its edge
    r_lo = np.array([s.radius[0] for s in SPECIES], dtype=np.float32) * ppm
    r_hi = np.array([s.radius[1] for s in SPECIES], dtype=np.float32) * ppm
    h_lo = np.array([s.height[0] for s in SPECIES], dtype=np.float32)
    h_hi = np.array([s.height[1] for s in SPECIES], dtype=np.float32)
    col = (np.arange(n, dtype=np.float32) + 0.5)[None, :] * spacing
    row = (np.arange(n, dtype=np.float32) + 0.5)[:, None] * spacing
    parts: dict[str, list[np.ndarray]] = {"cx": [], "cy": [], "r": [], "h": [], "species": []}
    for style in styles:
        odds = np.cumsum(np.asarray(FOREST_MIX[style], dtype=np.float32))
        species = np.minimum(np.searchsorted(odds / odds[-1], cells[..., 4], side="right"), len(SPECIES) - 1)
        r = r_lo[species] + (r_hi[species] - r_lo[species]) * cells[..., 2]
        margin = np.maximum(0.5 * spacing - r, 0.25 * spacing)  # small crowns may sit anywhere in their cell
        cx = col + (cells[..., 0] - 0.5) * 2 * margin - origin[0]
        cy = row + (cells[..., 1] - 0.5) * 2 * margin - origin[1]
        # Crowns rooted outside the forest are not drawn; near its edge they shrink to fit.
        inside = (cx >= 0) & (cy >= 0) & (cx < size) & (cy < size)
        edge = np.where(
            inside,
            room[np.clip(cy.astype(np.int64), 0, size - 1), np.clip(cx.astype(np.int64), 0, size - 1)],
            np.float32(1e6),
        )
        parts["r"].append(np.where(edge > 0, np.minimum(r, np.maximum(edge, 0.55 * r)), 0.0).astype(np.float32))
        parts["cx"].append(cx.astype(np.float32))
        parts["cy"].append(cy.astype(np.float32))
        parts["h"].append((h_lo[species] + (h_hi[species] - h_lo[species]) * cells[..., 3]).astype(np.float32))
        parts["species"].append(species.astype(np.int64))
    return _Cells(**{k: np.concatenate([a.ravel() for a in v]) for k, v in parts.items()})


def crowns(
    x: np.ndarray,
    y: np.ndarray,
    style: np.ndarray,
    forest: np.ndarray,
    textures: Textures,
    ppm: float,
    sun: np.ndarray,
) -> Crowns:
    """The crowns over forest pixels with centres ``x``, ``y`` (scene pixels); ``style`` indexes
    :data:`STYLES` per pixel, ``forest`` is the boolean forest mask of the scene, ``sun`` the unit
    vector towards the sun."""
    spacing = SPACING_M * ppm
    n, cells = _grid(textures, spacing)
    ox, oy = textures.origin()
    gx = np.floor((x + ox) / spacing).astype(np.int64)
    gy = np.floor((y + oy) / spacing).astype(np.int64)
    size = forest.shape[0]
    used, slot = np.unique(style, return_inverse=True)
    table = _cell_table(cells, [STYLES[int(k)] for k in used], spacing, ppm, (ox, oy), forest)
    lobes = np.array([s.lobes for s in SPECIES], dtype=np.float32)
    cone = np.array([s.cone for s in SPECIES], dtype=bool)
    lumps = textures.fractal("crown-lobes", 1.1 * ppm, octaves=2)
    lump = np.clip(lumps[np.clip(y.astype(np.int64), 0, size - 1), np.clip(x.astype(np.int64), 0, size - 1)], -1.5, 1.5)
    base = slot.astype(np.int64) * n * n

    best = np.full(x.shape, -np.inf, dtype=np.float32)
    best_id = np.full(x.shape, -1, dtype=np.int64)
    best_k = np.zeros(x.shape, dtype=np.int64)
    best_t = np.ones(x.shape, dtype=np.float32)
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            cell = np.clip(gy + j, 0, n - 1) * n + np.clip(gx + i, 0, n - 1)
            k = base + cell
            cx, cy, r, h, species = table.cx[k], table.cy[k], table.r[k], table.h[k], table.species[k]
            t = np.hypot(x - cx, y - cy) / np.maximum(r, 1e-3) / (1.0 + lobes[species] * lump)
            rm = r / ppm
            z = np.where(cone[species], h - 2.2 * rm * t, h - rm * (1.0 - np.sqrt(np.clip(1.0 - t * t, 0.0, 1.0))))
            z = np.where((t < 1.0) & (r > 0), z, -np.inf)
            closer = z > best
            best = np.where(closer, z, best)
            best_id = np.where(closer, cell, best_id)
            best_k = np.where(closer, k, best_k)
            best_t = np.where(closer, t, best_t)
    found = best_id >= 0
    best_sp = np.where(found, table.species[best_k], -1)
    best_cx, best_cy, best_r = table.cx[best_k], table.cy[best_k], table.r[best_k]
    best_dx, best_dy = x - best_cx, y - best_cy
    # Conifers: a star of branch whorls; pixels between the arms fall into the gap below.
    reach = np.ones_like(best)
    conifer = (best_sp >= 0) & cone[np.maximum(best_sp, 0)]
    if conifer.any():
        phase = cells.reshape(-1, 6)[np.maximum(best_id, 0), 5] * 2 * np.pi
        arms = np.array([max(s.arms, 1) for s in SPECIES], dtype=np.float32)[np.maximum(best_sp, 0)]
        wave = 0.5 + 0.5 * np.cos(arms * np.arctan2(best_dy, best_dx) + phase)
        reach = np.where(conifer, 1.0 - 0.28 * wave, 1.0)
    gap = (best_sp < 0) | (best_t > reach)
    crown = np.where(gap, -1, style.astype(np.int64) * n * n + best_id)  # the same id on both dates of a pair
    species_out = np.where(gap, -1, best_sp)
    height = np.where(gap, 0.0, best).astype(np.float32)
    norm = np.maximum(np.hypot(best_dx, best_dy), 1e-3)
    shade = _shade(x, y, height, size, ppm, sun)
    ids, first = np.unique(crown, return_index=True)
    centres = {int(k): (float(best_cx[i]), float(best_cy[i]), float(best_r[i])) for k, i in zip(ids, first) if k >= 0}
    return Crowns(crown, species_out, np.clip(best_t, 0.0, 1.0), best_dx / norm, best_dy / norm, height, shade, centres)


def _shade(x: np.ndarray, y: np.ndarray, height: np.ndarray, size: int, ppm: float, sun: np.ndarray) -> np.ndarray:
    """How much each pixel is shaded by taller crowns towards the sun (0: lit, 1: in shadow)."""
    sx, sy, sz = (float(v) for v in sun)
    horizontal = math.hypot(sx, sy)
    if horizontal < 1e-6:
        return np.zeros_like(height)
    chm = np.zeros((size, size), dtype=np.float32)
    col, row = x.astype(np.int64), y.astype(np.int64)
    chm[row, col] = height
    rise = sz / horizontal  # metres the sun ray climbs per metre
    shaded = np.zeros(height.shape, dtype=bool)
    for metres in (0.4, 0.9, 1.6, 2.5, 3.6, 5.0, 7.0, 9.5):
        step = metres * ppm
        if step < 0.7:
            continue
        c = np.clip(np.round(col + sx / horizontal * step).astype(np.int64), 0, size - 1)
        r = np.clip(np.round(row + sy / horizontal * step).astype(np.int64), 0, size - 1)
        shaded |= chm[r, c] > height + rise * metres + 0.3
    return shaded.astype(np.float32)
