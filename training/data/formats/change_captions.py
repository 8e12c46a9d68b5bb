"""Bi-temporal change captioning: LEVIR-CC and SECOND-CC.

**LEVIR-CC** (Liu et al., TGRS 2022) ships ``LevirCCcaptions.json`` in the Karpathy layout plus a
``changeflag`` per pair, and the pairs under ``images/<split>/A`` (before) and ``images/<split>/B``
(after)::

    LEVIR-CC/
        LevirCCcaptions.json    {"images": [{"filepath": "train", "filename": "train_000001.png",
                                  "imgid": 0, "split": "train", "changeflag": 1,
                                  "sentences": [{"raw": " a road is built .", "tokens": [...]}, ...],
                                  "sentids": [...]}, ...]}
        images/{train,val,test}/{A,B}/<filename>

Pair paths follow the authors' ``create_input_files`` (RSICCformer ``utils.py``):
``images/<split>/A/<filename>`` and ``images/<split>/B/<filename>``, from the ``split`` field
(``filepath`` holds the same split name in the release; it is not used for paths).

**SECOND-CC** (Karaca et al., JSTARS 2025) ships ``SECOND-CC-AUG.json`` and, per split, the RGB pair
and the semantic maps of both dates::

    SECOND-CC-AUG/
        SECOND-CC-AUG.json
        {train,val,test}/rgb/{A,B}/<filename>
        {train,val,test}/sem/{A,B}/<filename>

The SECOND-CC JSON has LEVIR-CC's Karpathy fields (``filename``, ``imgid``, ``split``,
``sentences`` with ``tokens``) but no ``changeflag``: the authors' ``createHD5files.py`` reads
``img['split']``, ``img['filename']`` and ``c['tokens']``, and their ``eval_MModalCC.py`` calls a
pair unchanged when its *second* reference sentence is one of five "no change" sentences. Without a
``changeflag`` this loader decides ``changed`` by that same rule
(``training.eval.metrics.SECOND_CC_UNCHANGED``); LEVIR-CC's ``changeflag`` is required.
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
    open_image,
    read_json,
    require_dir,
    select_splits,
)
from training.data.formats.karpathy import image_entries, parse_sentences

log = logging.getLogger(__name__)

LEVIR_CC_FILE = "LevirCCcaptions.json"
SECOND_CC_FILE = "SECOND-CC-AUG.json"
EXPECTED = (
    'LEVIR-CC format {"images": [{"filepath", "filename", "imgid", "split", "changeflag", '
    '"sentences": [{"raw", "tokens"}]}]}'
)


@dataclass(frozen=True)
class ChangeCaptionSample:
    """A before/after pair, whether it changed, its reference captions and (SECOND-CC) semantic maps.

    ``changed``: LEVIR-CC's ``changeflag``; for SECOND-CC the authors' caption rule (see the module).
    """

    before_path: Path
    after_path: Path
    name: str
    image_id: int
    split: str
    changed: bool | None
    captions: tuple[str, ...]
    tokens: tuple[tuple[str, ...], ...]
    before_semantic_path: Path | None = None
    after_semantic_path: Path | None = None

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.tokens):
            raise ValueError(f"{self.name}: {len(self.captions)} captions but {len(self.tokens)} token lists")

    def before(self) -> Image.Image:
        return open_image(self.before_path)

    def after(self) -> Image.Image:
        return open_image(self.after_path)


class _ChangeCaptions(SampleDataset[ChangeCaptionSample]):
    file_name: str = ""
    changeflag_required: bool = True

    def __init__(
        self,
        root: str | Path,
        split: str | Sequence[str] | None = "train",
        *,
        annotation: str | Path | None = None,
        check_images: bool = True,
        transform: Callable[[ChangeCaptionSample], Any] | None = None,
    ) -> None:
        self.root = require_dir(Path(root), f"a folder holding {self.file_name} and its images")
        self.annotation = Path(annotation) if annotation is not None else self.root / self.file_name
        entries = image_entries(read_json(self.annotation, EXPECTED), self.annotation, EXPECTED)
        where = lambda i: f"{self.annotation.name} image {i}"  # noqa: E731
        splits = [field(e, "split", str, where(i), EXPECTED) for i, e in enumerate(entries)]
        wanted = select_splits(split, splits, self.annotation)
        samples = []
        for i, (entry, entry_split) in enumerate(zip(entries, splits)):
            if wanted is not None and entry_split not in wanted:
                continue
            filename = field(entry, "filename", str, where(i), EXPECTED)
            image_id = field(entry, "imgid", int, where(i), EXPECTED)
            captions, tokens = parse_sentences(entry, where(i), EXPECTED)
            samples.append(self._sample(entry, entry_split, filename, image_id, captions, tokens, where(i)))
        if check_images:
            paths = [p for s in samples for p in (s.before_path, s.after_path)]
            assert_images_exist(paths, self.annotation, self.root)
        log.info("%s: %d pairs (%s)", self.annotation.name, len(samples), split)
        super().__init__(samples, transform)

    def _changed(self, entry: dict, where: str, tokens: tuple[tuple[str, ...], ...] = ()) -> bool | None:
        if "changeflag" not in entry and not self.changeflag_required:
            return self._changed_from_captions(tokens)
        flag = field(entry, "changeflag", int, where, EXPECTED)
        if flag not in (0, 1):
            raise DataFormatError(f"{where}: 'changeflag' is {describe(flag)}; expected 0 or 1")
        return bool(flag)

    def _changed_from_captions(self, tokens: tuple[tuple[str, ...], ...]) -> bool | None:
        return None

    def _sample(
        self,
        entry: dict,
        split: str,
        filename: str,
        image_id: int,
        captions: tuple[str, ...],
        tokens: tuple[tuple[str, ...], ...],
        where: str,
    ) -> ChangeCaptionSample:
        raise NotImplementedError


class LevirCC(_ChangeCaptions):
    """LEVIR-CC pairs of one or more splits: ``images/<split>/{A,B}/<filename>``."""

    file_name = LEVIR_CC_FILE

    def _sample(self, entry, split, filename, image_id, captions, tokens, where):
        folder = self.root / "images" / split
        return ChangeCaptionSample(
            folder / "A" / filename,
            folder / "B" / filename,
            filename,
            image_id,
            split,
            self._changed(entry, where),
            captions,
            tokens,
        )


class SecondCC(_ChangeCaptions):
    """SECOND-CC pairs: ``<split>/rgb/{A,B}/<filename>`` with semantic maps ``<split>/sem/{A,B}/<filename>``."""

    file_name = SECOND_CC_FILE
    changeflag_required = False

    def _changed_from_captions(self, tokens: tuple[tuple[str, ...], ...]) -> bool | None:
        """MModalCC's rule: unchanged when the second reference (the first if there is one) is a
        "no change" sentence."""
        from training.eval.metrics import SECOND_CC_UNCHANGED, is_unchanged_caption

        if not tokens:
            return None
        return not is_unchanged_caption(tokens[min(1, len(tokens) - 1)], SECOND_CC_UNCHANGED)

    def _sample(self, entry, split, filename, image_id, captions, tokens, where):
        folder = self.root / split
        return ChangeCaptionSample(
            folder / "rgb" / "A" / filename,
            folder / "rgb" / "B" / filename,
            filename,
            image_id,
            split,
            self._changed(entry, where, tokens),
            captions,
            tokens,
            folder / "sem" / "A" / filename,
            folder / "sem" / "B" / filename,
        )
