"""Karpathy-style caption files: RSICD, UCM-Captions, Sydney-Captions, RSITMD.

Each data set ships one Karpathy-format caption file (the split format first used for COCO/Flickr)
next to a folder of images: ``dataset_rsicd.json`` (RSICD; its release keeps it in
``annotations_rsicd/``), ``dataset_RSITMD.json``, and ``dataset.json`` for UCM-Captions and
Sydney-Captions::

    {"images": [{"filename": "airport_1.jpg", "imgid": 0, "split": "train",
                 "sentences": [{"raw": "many planes ...", "tokens": ["many", "planes", ...],
                                "imgid": 0, "sentid": 0}, ...],
                 "sentids": [0, 1, 2, 3, 4]}, ...],
     "dataset": "rsicd"}

An optional ``filepath`` on an image (COCO's ``val2014``) is a sub-folder of the image folder.
Image folders as published: ``RSICD_images/`` (RSICD), ``imgs/`` (UCM-Captions, Sydney-Captions),
``images/`` (RSITMD); any folder under the root holding the first listed image is found too.

    data = KarpathyCaptions("/data/RSICD", split="test")
    sample = data[0]            # CaptionSample: image_path, captions, tokens, ...
    image = sample.image()      # PIL RGB, opened now
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from training.data.formats._common import (
    DataFormatError,
    SampleDataset,
    assert_images_exist,
    describe,
    field,
    find_image_dir,
    listing,
    open_image,
    read_json,
    select_splits,
)

log = logging.getLogger(__name__)

EXPECTED = (
    'Karpathy format {"images": [{"filename", "imgid", "split", "sentences": [{"raw", "tokens"}]}], "dataset": NAME}'
)
IMAGE_DIRS = ("RSICD_images", "imgs", "images", "Images", "RSITMD_images")


@dataclass(frozen=True)
class CaptionSample:
    """One image and its reference captions (``raw`` sentences, stripped) with their tokens."""

    image_path: Path
    image_id: int
    split: str
    captions: tuple[str, ...]
    tokens: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.tokens):
            raise ValueError(f"{self.image_path}: {len(self.captions)} captions but {len(self.tokens)} token lists")

    def image(self) -> Image.Image:
        return open_image(self.image_path)


def parse_sentences(
    entry: dict, where: str, expected: str = EXPECTED
) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(raw captions, tokens) of one Karpathy image entry; tokens default to the lower-cased words of raw."""
    sentences = field(entry, "sentences", list, where, expected)
    captions, tokens = [], []
    for j, sentence in enumerate(sentences):
        raw = field(sentence, "raw", str, f"{where} sentence {j}", expected)
        words = sentence.get("tokens")
        if words is None:
            words = raw.lower().replace(".", " ").split()
        elif not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
            raise DataFormatError(f"{where} sentence {j}: 'tokens' is {describe(words)}; expected a list of strings")
        captions.append(raw.strip())
        tokens.append(tuple(words))
    return tuple(captions), tuple(tokens)


def image_entries(document: Any, source: Path, expected: str = EXPECTED) -> list[dict]:
    """The ``images`` list of a Karpathy-style document, checked to be a list of objects."""
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        found = (
            f"'images' is {describe(document['images'])}"
            if isinstance(document, dict) and "images" in document
            else f"found {describe(document)}"
        )
        raise DataFormatError(f"{source.name} has no 'images' list ({found}, in {source}); expected {expected}")
    return document["images"]


ANNOTATION_PATTERNS = ("dataset_*.json", "dataset.json", "annotations*/dataset_*.json")


def find_annotation(root: Path) -> Path:
    """The caption file in ``root``: ``dataset_*.json`` (RSICD, RSITMD), else ``dataset.json`` (UCM-Captions and
    Sydney-Captions are released as ``UCM_captions/dataset.json``, ``Sydney_captions/dataset.json``), else
    ``annotations_*/dataset_*.json`` (RSICD's release: ``annotations_rsicd/dataset_rsicd.json``)."""
    if not root.is_dir():
        raise DataFormatError(f"{root}: no such folder; expected a folder with a dataset_*.json caption file")
    found: list[Path] = []
    for pattern in ANNOTATION_PATTERNS:
        found = sorted(root.glob(pattern))
        if found:
            break
    if not found:
        raise DataFormatError(
            f"{root}: no dataset_*.json (folder holds {listing(root)}); expected a Karpathy-style caption file "
            f"such as dataset_rsicd.json, dataset.json (UCM/Sydney) or annotations_rsicd/dataset_rsicd.json"
        )
    if len(found) > 1:
        raise DataFormatError(
            f"{root}: several caption files ({', '.join(p.name for p in found)}); pass annotation= to choose one"
        )
    return found[0]


class KarpathyCaptions(SampleDataset[CaptionSample]):
    """Captions of one or more splits of a ``dataset_*.json`` file (split=None: all of them).

    ``annotation`` defaults to the only ``dataset_*.json`` in ``root``, ``image_dir`` to the published
    image folder. Every listed image is checked to exist unless ``check_images`` is False.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | Sequence[str] | None = "train",
        *,
        annotation: str | Path | None = None,
        image_dir: str | Path | None = None,
        check_images: bool = True,
        transform: Callable[[CaptionSample], Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.annotation = Path(annotation) if annotation is not None else find_annotation(self.root)
        document = read_json(self.annotation, EXPECTED)
        entries = image_entries(document, self.annotation)
        default_name = (
            self.annotation.stem.removeprefix("dataset_") if self.annotation.stem != "dataset" else self.root.name
        )
        self.name = str(document.get("dataset", default_name))
        where = lambda i: f"{self.annotation.name} image {i}"  # noqa: E731
        splits = [field(e, "split", str, where(i), EXPECTED) for i, e in enumerate(entries)]
        wanted = select_splits(split, splits, self.annotation)
        probe = entries[0].get("filename") if entries and isinstance(entries[0], dict) else None
        self.image_dir = (
            Path(image_dir)
            if image_dir is not None
            else find_image_dir(
                self.root, IMAGE_DIRS, probe, f"the images of {self.annotation.name} in one of {', '.join(IMAGE_DIRS)}"
            )
        )
        samples = []
        for i, (entry, entry_split) in enumerate(zip(entries, splits)):
            if wanted is not None and entry_split not in wanted:
                continue
            filename = field(entry, "filename", str, where(i), EXPECTED)
            image_id = field(entry, "imgid", int, where(i), EXPECTED)
            folder = self.image_dir / entry["filepath"] if isinstance(entry.get("filepath"), str) else self.image_dir
            captions, tokens = parse_sentences(entry, where(i))
            samples.append(CaptionSample(folder / filename, image_id, entry_split, captions, tokens))
        if check_images:
            assert_images_exist((s.image_path for s in samples), self.annotation, self.image_dir)
        log.info("%s: %d images (%s) from %s", self.name, len(samples), split, self.annotation)
        super().__init__(samples, transform)
