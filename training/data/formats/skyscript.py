"""SkyScript image-caption CSV files (Wang et al., AAAI 2024), read row by row from disk.

The released CSVs (``SkyScript_train_top30pct_filtered_by_CLIP_openai.csv``, ``SkyScript_val_5K_...``,
``SkyScript_test_30K_...`` ...) have a header row and the columns

    filepath              image path relative to the data root, e.g. images2/a198234555_CH_19.jpg
    title                 caption of the focus object (what SkyCLIP trains on by default)
    title_multi_objects   caption of the focus and surrounding objects (optional here)

Images live under the data root as unzipped: ``<root>/images2/ ... <root>/images7/``. Any other
caption column (the language-polished files) is chosen with ``caption_column``. Only the byte
offset of each row is kept in memory (8 bytes a row, 40 MB for the 5M file); a row is parsed when
it is accessed, and its image opened when asked for.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from training.data.formats._common import DataFormatError, open_image, require_dir

log = logging.getLogger(__name__)

IMAGE_COLUMN = "filepath"
CAPTION_COLUMNS = ("title", "title_multi_objects")


@dataclass(frozen=True)
class ImageTextSample:
    """An image path and its caption; ``fields`` holds every column of the row."""

    image_path: Path
    caption: str
    fields: tuple[tuple[str, str], ...] = ()

    def image(self) -> Image.Image:
        return open_image(self.image_path)


def _index_rows(path: Path) -> tuple[bytes, np.ndarray, np.ndarray]:
    """(header record, byte offset of each data record, 1-based line of each record); records may span lines."""
    offsets, lines = [], []
    header = b""
    with path.open("rb") as handle:
        position, line_no = 0, 0
        record, start, start_line = b"", 0, 0
        for line in iter(handle.readline, b""):
            line_no += 1
            if not record:
                start, start_line = position, line_no
            record += line
            position += len(line)
            if record.count(b'"') % 2:
                continue  # a quoted field goes on to the next line
            if not header:
                header = record
            elif record.strip():
                offsets.append(start)
                lines.append(start_line)
            record = b""
    return header, np.asarray(offsets, dtype=np.int64), np.asarray(lines, dtype=np.int64)


def _parse(record: bytes, path: Path, line: int, delimiter: str) -> list[str]:
    try:
        text = record.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataFormatError(f"{path}: line {line} is not UTF-8 ({error.reason}); expected a UTF-8 CSV") from error
    rows = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if row]
    if len(rows) != 1:
        raise DataFormatError(f"{path}: line {line} holds {len(rows)} CSV records; expected one")
    return rows[0]


class SkyScript(Dataset):
    """Rows of a SkyScript CSV as :class:`ImageTextSample` (image under ``root``, caption from ``caption_column``)."""

    def __init__(
        self,
        csv_path: str | Path,
        root: str | Path,
        *,
        caption_column: str = "title",
        delimiter: str = ",",
        transform: Callable[[ImageTextSample], Any] | None = None,
    ) -> None:
        self.csv_path = Path(csv_path)
        self.root = require_dir(Path(root), "the SkyScript data root holding images2/ ... images7/")
        self.delimiter = delimiter
        self.transform = transform
        if not self.csv_path.is_file():
            raise DataFormatError(
                f"{self.csv_path}: file not found; expected a SkyScript CSV with columns "
                f"{IMAGE_COLUMN},{','.join(CAPTION_COLUMNS)}"
            )
        header, self._offsets, self._lines = _index_rows(self.csv_path)
        self.columns = _parse(header, self.csv_path, 1, delimiter) if header else []
        missing = [c for c in (IMAGE_COLUMN, caption_column) if c not in self.columns]
        if missing:
            raise DataFormatError(
                f"{self.csv_path}: header has columns {self.columns or 'none'}, no "
                f"{', '.join(repr(m) for m in missing)}; expected a SkyScript CSV with columns "
                f"{IMAGE_COLUMN}, {' or '.join(CAPTION_COLUMNS)} (or pass caption_column=)"
            )
        self.caption_column = caption_column
        log.info("%s: %d rows", self.csv_path.name, len(self._offsets))

    def __len__(self) -> int:
        return len(self._offsets)

    def row(self, index: int) -> dict[str, str]:
        """Every column of row ``index`` (0 = first data row)."""
        start = int(self._offsets[index])
        end = int(self._offsets[index + 1]) if index + 1 < len(self._offsets) else None
        with self.csv_path.open("rb") as handle:
            handle.seek(start)
            record = handle.read(end - start) if end is not None else handle.read()
        line = int(self._lines[index])
        values = _parse(record, self.csv_path, line, self.delimiter)
        if len(values) != len(self.columns):
            raise DataFormatError(
                f"{self.csv_path}: line {line} has {len(values)} fields; expected "
                f"{len(self.columns)} ({', '.join(self.columns)})"
            )
        return dict(zip(self.columns, values))

    def sample(self, index: int) -> ImageTextSample:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        row = self.row(index % len(self))
        return ImageTextSample(self.root / row[IMAGE_COLUMN], row[self.caption_column], tuple(row.items()))

    def __getitem__(self, index: int) -> Any:
        sample = self.sample(index)
        return self.transform(sample) if self.transform is not None else sample
