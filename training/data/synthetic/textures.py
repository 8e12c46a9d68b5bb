"""Seeded noise fields for rendering: fractal value noise and white noise, one field per name.

A :class:`Textures` draws every field on a padded canvas and crops it at an integer offset, so the
second date of a change pair (rendered from a shifted layout) sees the same ground texture moved
with the content, while a different seed gives a different world.
"""

from __future__ import annotations

import zlib

import numpy as np
from PIL import Image


class Textures:
    """Noise fields of one world (``seed``), cropped to ``size`` pixels shifted by ``offset``."""

    def __init__(self, seed: int, size: int, pad: int = 8, offset: tuple[int, int] = (0, 0)) -> None:
        if max(abs(offset[0]), abs(offset[1])) > pad:
            raise ValueError(f"offset {offset} exceeds the texture padding {pad}")
        self.seed, self.size, self.pad = seed, size, pad
        self.x0, self.y0 = pad - offset[0], pad - offset[1]
        self._cache: dict[tuple[str, float, int], np.ndarray] = {}

    def rng(self, name: str) -> np.random.Generator:
        """A random stream of this world for ``name`` (independent of the crop offset)."""
        return np.random.default_rng([self.seed, zlib.crc32(name.encode())])

    def _crop(self, field: np.ndarray) -> np.ndarray:
        return field[self.y0 : self.y0 + self.size, self.x0 : self.x0 + self.size]

    def origin(self) -> tuple[int, int]:
        """Where scene pixel (0, 0) lies on the padded texture canvas (x, y)."""
        return self.x0, self.y0

    def white(self, name: str) -> np.ndarray:
        """Standard normal noise, one value per pixel (float32)."""
        key = (name, 0.0, 0)
        if key not in self._cache:
            full = self.size + 2 * self.pad
            self._cache[key] = self._crop(self.rng(name).standard_normal((full, full), dtype=np.float32))
        return self._cache[key]

    def fractal(self, name: str, cell: float, octaves: int = 4) -> np.ndarray:
        """Fractal value noise with features of about ``cell`` pixels; zero mean, unit std (float32)."""
        cell = max(float(cell), 1.5)
        key = (name, round(cell, 3), octaves)
        if key not in self._cache:
            full = self.size + 2 * self.pad
            # Octaves coarser than a few pixels are summed at reduced resolution, then upsampled once.
            finest = cell / 2 ** (octaves - 1)
            factor = 2 ** max(0, int(np.log2(max(finest / 2.0, 1.0))))
            small = -(-full // factor)
            rng = self.rng(name)
            total = np.zeros((small, small), dtype=np.float32)
            amplitude, octave_cell = 1.0, cell / factor
            for _ in range(octaves):
                total += amplitude * _value_noise(rng, small, octave_cell)
                octave_cell /= 2.0
                amplitude *= 0.55
                if octave_cell < 1.0:
                    break
            if factor > 1:
                total = _upsample(total, factor)[:full, :full]
            total = total - total.mean()
            total /= max(float(total.std()), 1e-6)
            self._cache[key] = self._crop(total)
        return self._cache[key]


def _value_noise(rng: np.random.Generator, full: int, cell: float) -> np.ndarray:
    """Bicubic interpolation of a random lattice with spacing ``cell`` pixels, shape (full, full)."""
    step = max(int(round(cell)), 1)
    n = full // step + 4
    lattice = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)
    image = Image.fromarray(lattice, mode="F").resize((n * step, n * step), Image.BICUBIC)
    shift = int(rng.integers(0, step)) if step > 1 else 0
    return np.asarray(image)[step + shift : step + shift + full, step + shift : step + shift + full]


def _upsample(field: np.ndarray, factor: int) -> np.ndarray:
    """Bicubic enlargement by an integer factor."""
    n = field.shape[0]
    return np.asarray(Image.fromarray(field, mode="F").resize((n * factor, n * factor), Image.BICUBIC))
