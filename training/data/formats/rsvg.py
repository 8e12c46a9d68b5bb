"""DIOR-RSVG visual grounding (Zhan et al., TGRS 2023): referring expression -> one box.

Published layout::

    DIOR_RSVG/
        Annotations/00001.xml ...   VOC XML, one file per image, one <object> per expression
        JPEGImages/00001.jpg ...
        train.txt  val.txt  test.txt    one object index per line

An object in the XML::

    <annotation><filename>00001.jpg</filename><size><width>800</width><height>800</height></size>
      <object><name>golffield</name><bndbox><xmin>133</xmin><ymin>237</ymin><xmax>684</xmax>
        <ymax>672</ymax></bndbox><description>A green and brown golf field</description></object>
    </annotation>

The split files index *objects*, numbered 0, 1, 2 ... over every ``<object>`` of every XML file, as
the authors' ``data_loader.py`` (RSVG-pytorch) counts them: ``filelist`` walks ``Annotations/`` and
*sorts the full paths*, so the order is file-name order (``00001.xml``, ``00002.xml``, ...), and
a split's samples come out in object order, each listed index once. The released split files
(train 26991, val 3829, test 7500 indices over 38320 objects) are sorted and have no repeats. Boxes
are VOC pixel coordinates (xmin, ymin, xmax, ymax) of the original 800 x 800 image, read as given
(the reference loader reads ``<bndbox>`` as the object's third child and ``<description>`` as its
fourth; this loader reads them by tag).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from training.data.formats._common import (
    Box,
    DataFormatError,
    SampleDataset,
    Size,
    assert_images_exist,
    listing,
    open_image,
    read_xml,
    require_dir,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EXPECTED = (
    "VOC XML <annotation><filename/><object><name/><bndbox><xmin/><ymin/><xmax/><ymax/></bndbox>"
    "<description/></object></annotation>"
)


@dataclass(frozen=True)
class GroundingSample:
    """A referring expression and the pixel box it refers to in one image."""

    image_path: Path
    expression: str
    box: Box
    category: str
    object_index: int
    image_size: Size | None = None

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.box
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"object {self.object_index}: empty box {self.box}")

    def image(self) -> Image.Image:
        return open_image(self.image_path)


def _text(node, tag: str, where: Path, index: int) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataFormatError(f"{where}: object {index} has no <{tag}> text; expected {EXPECTED}")
    return child.text.strip()


def parse_annotation(path: Path) -> tuple[str, Size | None, list[tuple[str, Box, str]]]:
    """(image file name, (width, height) or None, [(category, box, description)]) of one DIOR-RSVG XML."""
    root = read_xml(path, EXPECTED)
    if root.tag != "annotation":
        raise DataFormatError(f"{path}: root element is <{root.tag}>; expected {EXPECTED}")
    filename = root.findtext("filename")
    if not filename or not filename.strip():
        raise DataFormatError(f"{path}: no <filename>; expected {EXPECTED}")
    size = None
    if root.find("size") is not None:
        try:
            size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
        except (TypeError, ValueError):
            size = None
    objects = []
    for j, node in enumerate(root.findall("object")):
        category = _text(node, "name", path, j)
        if node.find("bndbox") is None:
            raise DataFormatError(f"{path}: object {j} has no <bndbox>; expected {EXPECTED}")
        values = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = _text(node, f"bndbox/{tag}", path, j)
            try:
                values.append(float(text))
            except ValueError:
                raise DataFormatError(f"{path}: object {j} <{tag}> is {text!r}; expected a number") from None
        box = (values[0], values[1], values[2], values[3])
        if not (box[0] < box[2] and box[1] < box[3]):
            raise DataFormatError(f"{path}: object {j} box {box} has no area; expected xmin < xmax and ymin < ymax")
        objects.append((category, box, _text(node, "description", path, j)))
    return filename.strip(), size, objects


def read_split(path: Path) -> list[int]:
    """Object indices listed in a split file (one integer per line, blank lines ignored)."""
    indices = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            indices.append(int(line))
        except ValueError:
            raise DataFormatError(f"{path}: line {n} is {line!r}; expected one object index per line") from None
    return indices


class DiorRSVG(SampleDataset[GroundingSample]):
    """The objects a DIOR-RSVG split file lists, in object-index order (as the reference loader)."""

    def __init__(
        self,
        root: str | Path,
        split: str | Sequence[str] = "train",
        *,
        check_images: bool = True,
        transform: Callable[[GroundingSample], Any] | None = None,
    ) -> None:
        self.root = require_dir(Path(root), "the DIOR_RSVG folder (Annotations/, JPEGImages/, train.txt, ...)")
        annotations = self.root / "Annotations"
        images = self.root / "JPEGImages"
        for folder in (annotations, images):
            if not folder.is_dir():
                raise DataFormatError(
                    f"{self.root}: no {folder.name}/ folder (folder holds {listing(self.root)}); "
                    f"expected DIOR-RSVG layout Annotations/*.xml, JPEGImages/*.jpg, "
                    f"{'.txt, '.join(SPLITS)}.txt"
                )
        wanted = [split] if isinstance(split, str) else list(split)
        indices = []
        for name in wanted:
            split_file = self.root / f"{name}.txt"
            if not split_file.is_file():
                found = sorted(p.name for p in self.root.glob("*.txt")) or ["none"]
                raise DataFormatError(
                    f"{self.root}: no split file {split_file.name} (split files found: "
                    f"{', '.join(found)}); expected one of {', '.join(s + '.txt' for s in SPLITS)}"
                )
            indices.extend(read_split(split_file))
        xml_files = sorted(annotations.rglob("*.xml"), key=str)  # the reference's os.walk + sorted paths
        if not xml_files:
            raise DataFormatError(
                f"{annotations}: no .xml files (folder holds {listing(annotations)}); "
                f"expected one VOC XML file per image"
            )
        objects: list[tuple[Path, Size | None, str, Box, str]] = []
        for path in xml_files:
            filename, size, found = parse_annotation(path)
            objects.extend((images / filename, size, category, box, text) for category, box, text in found)
        bad = [i for i in indices if not 0 <= i < len(objects)]
        if bad:
            raise DataFormatError(
                f"{self.root}: split {'+'.join(wanted)} lists object index {bad[0]} "
                f"({len(bad)} out of range) but Annotations/ holds {len(objects)} objects; "
                f"expected indices 0..{len(objects) - 1}"
            )
        samples = [
            GroundingSample(objects[i][0], objects[i][4], objects[i][3], objects[i][2], i, objects[i][1])
            for i in sorted(set(indices))  # object order, each once: the reference's `if count in Index`
        ]
        if check_images:
            assert_images_exist(sorted({s.image_path for s in samples}), annotations, images)
        log.info("DIOR-RSVG %s: %d expressions over %d XML files", split, len(samples), len(xml_files))
        super().__init__(samples, transform)
