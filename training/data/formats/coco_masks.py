"""GeoPixInstruct-style instance masks: a COCO instances file with RLE or polygon segmentations.

GeoPix (Ou et al., GRSM 2025) has not released GeoPixInstruct's files; this reads the COCO
instances format its masks come in (iSAID/SAMRS-style annotations)::

    {"images": [{"id": 1, "file_name": "P0001.png", "width": 800, "height": 800}, ...],
     "categories": [{"id": 1, "name": "plane"}, ...],
     "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [x, y, w, h], "iscrowd": 0,
                      "segmentation": {"size": [h, w], "counts": "<compressed string>" | [run, ...]}
                                      | [[x1, y1, x2, y2, ...], ...],
                      "description": "the plane at the top left"}, ...]}

Referring text per annotation is read from any of ``description``, ``caption``, ``expression``
(strings) and ``sentences`` (strings or ``{"raw"}``/``{"sent"}`` objects); annotations may have
none. Masks are decoded with ``pycocotools.mask`` when a sample is accessed, never up front.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.data.formats._common import (
    Box,
    DataFormatError,
    SampleDataset,
    Size,
    assert_images_exist,
    describe,
    field,
    open_image,
    read_json,
)

log = logging.getLogger(__name__)

EXPECTED = (
    'COCO instances {"images": [{"id", "file_name", "width", "height"}], "categories": [{"id", "name"}], '
    '"annotations": [{"id", "image_id", "category_id", "segmentation": RLE or polygons}]}'
)
TEXT_KEYS = ("description", "caption", "expression")


@dataclass(frozen=True, eq=False)
class MaskInstance:
    """One object: its binary mask (height x width, bool), category, pixel box and referring texts."""

    annotation_id: int
    category_id: int
    category: str
    mask: np.ndarray
    box: Box
    texts: tuple[str, ...] = ()
    iscrowd: bool = False


@dataclass(frozen=True, eq=False)
class SegmentationSample:
    image_path: Path
    image_id: int
    size: Size
    instances: tuple[MaskInstance, ...]

    def image(self) -> Image.Image:
        return open_image(self.image_path)


def decode_segmentation(segmentation: Any, height: int, width: int, where: str) -> np.ndarray:
    """A COCO segmentation (RLE with string or list counts, or polygons) as a bool (height, width) mask."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and isinstance(counts, (str, list))):
            raise DataFormatError(
                f"{where}: segmentation is {describe(segmentation)}; expected RLE "
                f'{{"size": [h, w], "counts": string or list}}'
            )
        if list(size) != [height, width]:
            raise DataFormatError(
                f"{where}: RLE size {size} does not match its image ({height} x {width}); "
                f"expected [height, width] of the image"
            )
        if isinstance(counts, list):
            if sum(counts) != height * width:
                raise DataFormatError(
                    f"{where}: uncompressed RLE counts sum to {sum(counts)}; expected {height * width} (height x width)"
                )
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": size, "counts": counts.encode("ascii")}
        try:
            return mask_utils.decode(rle).astype(bool)
        except Exception as error:  # noqa: BLE001 - pycocotools raises bare errors on corrupt strings
            raise DataFormatError(f"{where}: RLE counts do not decode ({error}); expected COCO RLE") from error
    if (
        isinstance(segmentation, list)
        and segmentation
        and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation)
    ):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    raise DataFormatError(
        f"{where}: segmentation is {describe(segmentation)}; expected RLE {{'size', 'counts'}} "
        f"or polygons [[x1, y1, x2, y2, x3, y3, ...], ...]"
    )


def annotation_texts(annotation: dict) -> tuple[str, ...]:
    texts = [annotation[k] for k in TEXT_KEYS if isinstance(annotation.get(k), str)]
    for sentence in annotation.get("sentences", []) or []:
        if isinstance(sentence, str):
            texts.append(sentence)
        elif isinstance(sentence, dict) and isinstance(sentence.get("raw", sentence.get("sent")), str):
            texts.append(sentence.get("raw", sentence.get("sent")))
    return tuple(t.strip() for t in texts if t.strip())


class CocoMasks(SampleDataset):
    """Images of a COCO instances file with their decoded masks (images without annotations are kept)."""

    def __init__(
        self,
        annotation: str | Path,
        image_dir: str | Path,
        *,
        check_images: bool = True,
        transform: Callable[[SegmentationSample], Any] | None = None,
    ) -> None:
        self.annotation = Path(annotation)
        self.image_dir = Path(image_dir)
        document = read_json(self.annotation, EXPECTED)
        name = self.annotation.name
        if not isinstance(document, dict) or not all(
            isinstance(document.get(k), list) for k in ("images", "annotations")
        ):
            raise DataFormatError(
                f"{name} has no 'images' and 'annotations' lists (found {describe(document)}, "
                f"in {self.annotation}); expected {EXPECTED}"
            )
        self.categories = {
            field(c, "id", int, f"{name} category {i}", EXPECTED): field(
                c, "name", str, f"{name} category {i}", EXPECTED
            )
            for i, c in enumerate(document.get("categories", []))
        }
        images = {}
        for i, image in enumerate(document["images"]):
            where = f"{name} image {i}"
            images[field(image, "id", int, where, EXPECTED)] = (
                field(image, "file_name", str, where, EXPECTED),
                field(image, "height", int, where, EXPECTED),
                field(image, "width", int, where, EXPECTED),
            )
        self._annotations: dict[int, list[dict]] = defaultdict(list)
        for i, ann in enumerate(document["annotations"]):
            where = f"{name} annotation {i}"
            image_id = field(ann, "image_id", int, where, EXPECTED)
            category_id = field(ann, "category_id", int, where, EXPECTED)
            field(ann, "segmentation", (dict, list), where, EXPECTED)
            if image_id not in images:
                raise DataFormatError(f"{where}: image_id {image_id} is not in 'images'; expected an id listed there")
            if self.categories and category_id not in self.categories:
                raise DataFormatError(
                    f"{where}: category_id {category_id} is not in 'categories'; expected one of "
                    f"{sorted(self.categories)}"
                )
            self._annotations[image_id].append(ann)
        self._images = images
        self._image_ids = list(images)
        samples = [(image_id, self.image_dir / images[image_id][0]) for image_id in self._image_ids]
        if check_images:
            assert_images_exist([p for _, p in samples], self.annotation, self.image_dir)
        log.info("%s: %d images, %d annotations", name, len(images), sum(map(len, self._annotations.values())))
        super().__init__(samples, transform)

    def sample(self, index: int) -> SegmentationSample:
        image_id, path = self.samples[index]
        _, height, width = self._images[image_id]
        instances = []
        for ann in self._annotations.get(image_id, []):
            where = f"{self.annotation.name} annotation {ann.get('id', '?')}"
            mask = decode_segmentation(ann["segmentation"], height, width, where)
            instances.append(
                MaskInstance(
                    int(ann.get("id", -1)),
                    ann["category_id"],
                    self.categories.get(ann["category_id"], str(ann["category_id"])),
                    mask,
                    _box(ann, mask),
                    annotation_texts(ann),
                    bool(ann.get("iscrowd", 0)),
                )
            )
        return SegmentationSample(path, image_id, (width, height), tuple(instances))


def _box(annotation: dict, mask: np.ndarray) -> Box:
    """The annotation's COCO ``bbox`` [x, y, w, h] as (x0, y0, x1, y1), else the mask's pixel extent."""
    bbox = annotation.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox):
        x, y, w, h = (float(v) for v in bbox)
        return (x, y, x + w, y + h)
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return (0.0, 0.0, 0.0, 0.0)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
