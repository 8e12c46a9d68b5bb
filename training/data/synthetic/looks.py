"""How a scene is photographed beyond sun and light: the sensor, haze, JPEG, and the ground's soil.

A :class:`Look` is drawn per acquisition from the seed's own look stream (so the layout, the light
and the change edits of a seed draw exactly what they drew before looks existed): a sensor with
its colour response (a 3 x 3 mixing matrix on linear RGB: saturation, channel gains and cross-talk,
jittered per scene), its sharpness (optical blur, unsharp-mask halos, colour at a lower resolution
than brightness for pan-sharpened satellite products) and its noise; haze of drawn strength, tint
and patchiness; and a JPEG round trip at a drawn quality (Pillow, deterministic). The soil
(loam, sandy, rocky) belongs to the place, not the acquisition: it is drawn once per scene, after
the layout (its odds depend on the theme), and kept by both dates of a pair.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

RGB = tuple[float, float, float]

SENSORS: dict[str, float] = {
    "aerial camera": 0.34,
    "drone camera": 0.2,
    "pan-sharpened satellite": 0.31,
    "scanned film": 0.15,
}
"""Sensor kinds and how often each is drawn."""

SOILS: tuple[str, ...] = ("loam", "sandy", "rocky")
SOIL_ODDS: dict[str, tuple[float, float, float]] = {
    # theme -> odds of SOILS
    "urban": (0.65, 0.22, 0.13),
    "suburban": (0.65, 0.22, 0.13),
    "industrial": (0.6, 0.25, 0.15),
    "rural": (0.6, 0.25, 0.15),
    "natural": (0.34, 0.33, 0.33),
}
HAZE_TINTS: dict[str, RGB] = {"blue": (0.72, 0.76, 0.82), "white": (0.80, 0.80, 0.80), "smog": (0.70, 0.66, 0.58)}
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Look:
    """One acquisition's sensor, atmosphere and compression (beyond :class:`render.Conditions`)."""

    sensor: str = "aerial camera"
    colour: tuple[float, ...] = IDENTITY
    """3 x 3 matrix (row-major) that maps linear scene RGB to the sensor's RGB."""
    saturation: float = 1.0
    contrast: float = 1.0
    """Scales deviations from mid grey after the tone curve (film fades, drones punch)."""
    blur_scale: float = 1.0
    """Multiplies the optical blur of the conditions."""
    sharpen: float = 0.0
    """Unsharp-mask strength (halos at edges)."""
    chroma_blur: float = 0.0
    """Blur (pixels) of the colour difference channels only: colour at a lower resolution than brightness."""
    noise_scale: float = 1.0
    grain: float = 0.0
    """Share of the noise that is blurred into film grain."""
    haze: float = 0.0
    """Extra haze on top of the conditions' own, 0..1."""
    haze_tint: str = "blue"
    haze_patchiness: float = 0.0
    """How much the haze varies over the image (0: uniform)."""
    haze_seed: int = 0
    jpeg_quality: int = 0
    """JPEG quality of the round trip, 0 when the image is not compressed."""
    jpeg_subsampling: int = 2
    """Pillow's chroma subsampling: 0 (4:4:4), 1 (4:2:2), 2 (4:2:0)."""

    def record(self) -> dict[str, Any]:
        """What an evaluation may break figures down by (JSON types)."""
        return {
            "sensor": self.sensor,
            "saturation": round(self.saturation, 3),
            "colour_matrix": [round(v, 4) for v in self.colour],
            "sharpen": round(self.sharpen, 3),
            "chroma_blur": round(self.chroma_blur, 3),
            "haze": round(self.haze, 3),
            "haze_tint": self.haze_tint,
            "jpeg_quality": self.jpeg_quality,
            "jpeg_subsampling": self.jpeg_subsampling,
        }


PLAIN = Look()
"""The look of scenes before looks were drawn: no colour mixing, haze, sharpening or JPEG."""


def _pick(rng: np.random.Generator, options: dict[str, float]) -> str:
    names = list(options)
    weights = np.array([options[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def colour_matrix(saturation: float, gains: RGB, crosstalk: np.ndarray) -> tuple[float, ...]:
    """Saturation about the luminance axis, then cross-talk between channels, then channel gains."""
    grey = np.repeat(LUMA[None, :].astype(float), 3, axis=0)
    matrix = grey + saturation * (np.eye(3) - grey)
    matrix = (np.eye(3) + crosstalk) @ matrix
    matrix /= matrix.sum(axis=1, keepdims=True)  # grey stays grey before the gains
    matrix = np.diag(gains) @ matrix
    return tuple(float(v) for v in matrix.ravel())


def draw_look(rng: np.random.Generator, sensor: str | None = None) -> Look:
    """A random look; ``sensor`` keeps the sensor kind (its response is drawn afresh)."""
    sensor = sensor or _pick(rng, SENSORS)
    crosstalk = rng.normal(0.0, 0.025, (3, 3))
    np.fill_diagonal(crosstalk, 0.0)
    if sensor == "aerial camera":
        saturation, gains = rng.uniform(0.95, 1.2), rng.normal(1.0, 0.03, 3)
        blur_scale, sharpen, chroma_blur = rng.uniform(0.85, 1.15), rng.uniform(0.0, 0.35), 0.0
        noise_scale, grain, contrast = rng.uniform(0.7, 1.1), 0.0, rng.uniform(0.95, 1.1)
    elif sensor == "drone camera":
        saturation, gains = rng.uniform(1.1, 1.4), rng.normal(1.0, 0.035, 3) * (1.03, 1.0, 0.96)
        blur_scale, sharpen, chroma_blur = rng.uniform(0.7, 1.0), rng.uniform(0.3, 0.9), 0.0
        noise_scale, grain, contrast = rng.uniform(0.8, 1.4), 0.0, rng.uniform(1.05, 1.2)
    elif sensor == "pan-sharpened satellite":
        saturation, gains = rng.uniform(0.7, 1.0), rng.normal(1.0, 0.04, 3)
        crosstalk[2, 1] += rng.uniform(0.05, 0.15)  # green leaks into blue: vegetation turns cyan-grey
        crosstalk[0, 2] += rng.uniform(0.0, 0.06)
        blur_scale, sharpen, chroma_blur = rng.uniform(1.0, 1.5), rng.uniform(0.2, 0.6), rng.uniform(0.8, 2.5)
        noise_scale, grain, contrast = rng.uniform(0.5, 0.9), 0.0, rng.uniform(0.9, 1.05)
    elif sensor == "scanned film":
        saturation = rng.uniform(0.65, 0.95)
        cast = [(1.05, 1.0, 0.86), (1.04, 0.95, 1.0), (0.96, 1.02, 0.98)][int(rng.integers(3))]
        gains = rng.normal(1.0, 0.02, 3) * cast
        blur_scale, sharpen, chroma_blur = rng.uniform(1.1, 1.6), 0.0, rng.uniform(0.0, 1.0)
        noise_scale, grain, contrast = rng.uniform(1.0, 1.8), rng.uniform(0.5, 0.9), rng.uniform(0.8, 0.95)
    else:
        raise ValueError(f"unknown sensor {sensor!r}")
    strong = rng.uniform() < 0.3
    haze = rng.uniform(0.08, 0.35) if strong else rng.uniform(0.0, 0.04)
    quality = 0 if rng.uniform() < 0.35 else int(rng.integers(30, 96))
    return Look(
        sensor=sensor,
        colour=colour_matrix(float(saturation), tuple(float(g) for g in gains), crosstalk),  # type: ignore[arg-type]
        saturation=float(saturation),
        contrast=float(contrast),
        blur_scale=float(blur_scale),
        sharpen=float(sharpen),
        chroma_blur=float(chroma_blur),
        noise_scale=float(noise_scale),
        grain=float(grain),
        haze=float(haze),
        haze_tint=_pick(rng, {"blue": 0.6, "white": 0.25, "smog": 0.15}),
        haze_patchiness=float(rng.uniform(0.2, 0.7) if strong else rng.uniform(0.0, 0.3)),
        haze_seed=int(rng.integers(0, 2**31)),
        jpeg_quality=quality,
        jpeg_subsampling=int(rng.choice([0, 2], p=[0.3, 0.7])),
    )


def next_look(first: Look, rng: np.random.Generator) -> Look:
    """The look of a second date: often the same kind of sensor, always fresh haze and compression."""
    return draw_look(rng, first.sensor if rng.uniform() < 0.6 else None)


def draw_soil(rng: np.random.Generator, theme: str) -> str:
    """The soil of a scene (loam, sandy, rocky), with odds by theme."""
    odds = np.asarray(SOIL_ODDS.get(theme, SOIL_ODDS["rural"]), dtype=float)
    return SOILS[int(rng.choice(len(SOILS), p=odds / odds.sum()))]


# --------------------------------------------------------------------------------------------
# Applying a look (float radiance 0..1, (H, W, 3), float32)


def mix_colours(radiance: np.ndarray, look: Look) -> np.ndarray:
    """The sensor's colour response, on linear RGB."""
    if look.colour == IDENTITY:
        return radiance
    matrix = np.asarray(look.colour, dtype=np.float32).reshape(3, 3)
    return radiance @ matrix.T


def hazed(radiance: np.ndarray, base_haze: float, look: Look, field: np.ndarray | None) -> np.ndarray:
    """Airlight over the scene: the conditions' haze plus the look's, patchy where ``field`` varies."""
    haze = np.float32(base_haze + look.haze)
    if field is not None and look.haze_patchiness > 0:
        amount = np.clip(haze * (1.0 + look.haze_patchiness * field), 0.0, 0.85)[..., None]
    else:
        amount = np.float32(min(float(haze), 0.85))
    tint = np.asarray(HAZE_TINTS[look.haze_tint], dtype=np.float32)
    return radiance * (1.0 - amount) + amount * tint


def tone(radiance: np.ndarray, look: Look) -> np.ndarray:
    """The look's contrast about mid grey (after the tone curve)."""
    if look.contrast == 1.0:
        return radiance
    return (radiance - 0.5) * np.float32(look.contrast) + 0.5


def sharpen_and_bleed(radiance: np.ndarray, look: Look) -> np.ndarray:
    """Unsharp-mask halos and colour at a lower resolution than brightness (pan-sharpening)."""
    if look.sharpen > 0:
        soft = np.stack([ndimage.gaussian_filter(radiance[..., c], 1.2, truncate=2.5) for c in range(3)], axis=-1)
        radiance = radiance + np.float32(look.sharpen) * (radiance - soft)
    if look.chroma_blur > 0:
        luma = radiance @ LUMA
        chroma = radiance - luma[..., None]
        for c in range(3):
            chroma[..., c] = ndimage.gaussian_filter(chroma[..., c], look.chroma_blur, truncate=2.5)
        radiance = luma[..., None] + chroma
    return radiance


def grain(noise: np.ndarray, look: Look) -> np.ndarray:
    """Film grain: part of the per-pixel noise blurred into clumps."""
    if look.grain <= 0:
        return noise
    clumped = np.stack([ndimage.gaussian_filter(noise[..., c], 0.8, truncate=2.5) for c in range(3)], axis=-1)
    clumped *= np.float32(1.0 / max(float(clumped.std()), 1e-6))
    return noise * np.float32(1.0 - look.grain) + clumped * np.float32(look.grain)


def jpeg(image: np.ndarray, look: Look) -> np.ndarray:
    """A JPEG round trip at the look's quality (uint8 RGB in and out; unchanged at quality 0)."""
    if look.jpeg_quality <= 0:
        return image
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=look.jpeg_quality, subsampling=look.jpeg_subsampling)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.uint8).copy()


def low_sun_tint(elevation: float) -> np.ndarray:
    """Colour of direct sunlight: warmer when the sun is low."""
    warm = min(max((30.0 - elevation) / 20.0, 0.0), 1.0)
    return np.array([1.0, 1.0 - 0.06 * warm, 1.0 - 0.16 * warm], dtype=np.float32)


def direct_share(elevation: float) -> float:
    """How strong direct sunlight is on flat ground relative to a 45-degree sun (the sky matters more at dawn)."""
    return float(np.clip(math.sin(math.radians(elevation)) / math.sin(math.radians(45.0)), 0.3, 1.25))
