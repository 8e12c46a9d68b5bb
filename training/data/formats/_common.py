"""What every loader shares: the one error type, JSON/XML reading that names the file, split checks,
image look-ups and lazy image opening.

Every problem with the data on disk is a :class:`DataFormatError` whose message names the file (or
folder), says what was found and what was expected, so a user pointing a recipe at the wrong folder
reads one line and knows what to fix.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from PIL import Image
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

T = TypeVar("T")
Size = tuple[int, int]  # (width, height) in pixels
Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, origin top-left, y down


class DataFormatError(ValueError):
    """A data set on disk is not in the format its loader reads.

    The message names the file or folder, what was found there and what was expected.
    """


# --- describing what was found -----------------------------------------------------------------


def describe(value: Any) -> str:
    """A short description of a JSON value for error messages: 'a list of 3 items', 'an object with keys a, b'."""
    if isinstance(value, dict):
        keys = list(value)
        shown = ", ".join(repr(k) for k in keys[:6]) + (", ..." if len(keys) > 6 else "")
        return f"an object with keys {shown}" if keys else "an empty object"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"


def listing(folder: Path, limit: int = 8) -> str:
    """What a folder holds, for error messages: 'a.json, images/, ...' or 'nothing'."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return "nothing readable"
    names = [e.name + ("/" if e.is_dir() else "") for e in entries[:limit]]
    if len(entries) > limit:
        names.append(f"... ({len(entries)} entries)")
    return ", ".join(names) if names else "nothing"


# --- reading files -----------------------------------------------------------------------------


def read_json(path: Path, expected: str) -> Any:
    """The parsed JSON in ``path``; DataFormatError when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        found = listing(path.parent) if path.parent.is_dir() else "no such folder"
        raise DataFormatError(f"{path}: file not found (folder holds {found}); expected {expected}")
    try:
        with path.open("r", encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataFormatError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}); expected {expected}"
        ) from error
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path}: not UTF-8 text ({error.reason}); expected {expected}") from error


def read_xml(path: Path, expected: str) -> ET.Element:
    """The root element of the XML file ``path``; DataFormatError when it does not parse."""
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as error:
        line, column = error.position
        raise DataFormatError(
            f"{path}: not well-formed XML ({error.msg.split(':')[0]} at line {line}, "
            f"column {column}); expected {expected}"
        ) from error
    except OSError as error:
        raise DataFormatError(f"{path}: cannot be read ({error.strerror}); expected {expected}") from error


def require_dir(path: Path, expected: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        what = "a file" if path.exists() else "nothing"
        raise DataFormatError(f"{path}: found {what} where a folder was expected; expected {expected}")
    return path


def field(entry: Any, key: str, kind: type | tuple[type, ...], where: str, expected: str) -> Any:
    """``entry[key]`` checked to be of ``kind``; DataFormatError naming ``where`` otherwise."""
    if not isinstance(entry, dict):
        raise DataFormatError(f"{where}: found {describe(entry)}; expected {expected}")
    if key not in entry:
        raise DataFormatError(f"{where} has no {key!r} (found {describe(entry)}); expected {expected}")
    value = entry[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
        raise DataFormatError(f"{where}: {key!r} is {describe(value)}; expected {expected}")
    return value


# --- splits ------------------------------------------------------------------------------------


def select_splits(split: str | Sequence[str] | None, found: Iterable[str], source: Path) -> set[str] | None:
    """The splits asked for, checked against those ``source`` has; None means all of them.

    Asking for a split the file does not have is an error that lists the splits it does have.
    """
    counts = Counter(found)
    if split is None:
        return None
    wanted = {split} if isinstance(split, str) else set(split)
    missing = sorted(wanted - set(counts))
    if missing:
        have = ", ".join(f"{name} ({n})" for name, n in sorted(counts.items())) or "none"
        raise DataFormatError(
            f"{source}: no samples in split {', '.join(repr(m) for m in missing)}; splits found: {have}"
        )
    return wanted


# --- images ------------------------------------------------------------------------------------


def assert_images_exist(paths: Iterable[Path], source: Path, folder: Path) -> None:
    """DataFormatError when any image ``source`` lists is not on disk (names a few of them)."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p.relative_to(folder)) if p.is_relative_to(folder) else str(p) for p in missing[:3])
        raise DataFormatError(
            f"{source}: {len(missing)} image(s) it lists are missing under {folder} "
            f"(e.g. {shown}); expected every listed image to be there"
        )


def find_image_dir(root: Path, candidates: Sequence[str], probe: str | None, expected: str) -> Path:
    """The image folder under ``root``: the first candidate holding ``probe``, else the first that exists."""
    existing = [root / c for c in candidates if (root / c).is_dir()]
    if probe is not None:
        for folder in existing + [root]:
            if (folder / probe).is_file():
                return folder
    if existing:
        return existing[0]
    raise DataFormatError(
        f"{root}: no image folder found (looked for {', '.join(c + '/' for c in candidates)}; "
        f"folder holds {listing(root)}); expected {expected}"
    )


def open_image(path: Path) -> Image.Image:
    """The image at ``path`` as RGB, read now; DataFormatError when it is missing or unreadable.

    Pillow reads JPEG/PNG/8-bit TIFF; other rasters (multi-band or 16-bit GeoTIFF) go through rasterio
    and are scaled per band to 8 bits.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: image not found; expected the image file its annotation names")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as pil_error:
        try:
            return _open_raster(path)
        except Exception as error:  # noqa: BLE001 - any failure means the file is not an image we read
            raise DataFormatError(f"{path}: not a readable image ({pil_error}); expected JPEG, PNG or TIFF") from error


def _open_raster(path: Path) -> Image.Image:
    import numpy as np
    import rasterio

    with rasterio.open(path) as source:
        data = source.read(indexes=list(range(1, min(source.count, 3) + 1))).astype("float64")
    if data.shape[0] < 3:
        data = np.repeat(data[:1], 3, axis=0)
    low = data.min(axis=(1, 2), keepdims=True)
    span = np.maximum(data.max(axis=(1, 2), keepdims=True) - low, 1e-12)
    return Image.fromarray(((data - low) / span * 255).round().astype("uint8").transpose(1, 2, 0))


def image_size(path: Path) -> Size:
    """(width, height) from the image header, without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError as error:
        raise DataFormatError(f"{path}: image not found; expected the image file its annotation names") from error
    except OSError:
        import rasterio

        try:
            with rasterio.open(path) as source:
                return (source.width, source.height)
        except Exception as error:  # noqa: BLE001
            raise DataFormatError(f"{path}: not a readable image; expected JPEG, PNG or TIFF") from error


# --- map-style data set over a list of parsed records ------------------------------------------


class SampleDataset(Dataset, Generic[T]):
    """A ``torch.utils.data.Dataset`` over samples parsed from the annotation files.

    Only annotations are parsed up front; images are opened when a sample's ``image()`` (or a
    transform) asks for them. ``transform``, when given, maps each sample to what ``__getitem__``
    returns, e.g. a tensor pair for a recipe.
    """

    def __init__(self, samples: Sequence[T], transform: Callable[[T], Any] | None = None) -> None:
        self.samples: list[T] = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def sample(self, index: int) -> T:
        return self.samples[index]

    def __getitem__(self, index: int) -> Any:
        sample = self.sample(index)
        return self.transform(sample) if self.transform is not None else sample

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]
