"""RSVQA (Lobry et al., TGRS 2020), low resolution (Sentinel-2) and high resolution (USGS orthophotos).

Each split is three JSON files that cross-reference each other by id::

    <P>_split_<split>_images.json     {"images": [{"id": 0, "active": true, "questions_ids": [0, 1, ...],
                                                   "original_name": ..., ...}, ...]}
    <P>_split_<split>_questions.json  {"questions": [{"id": 0, "img_id": 0, "type": "presence",
                                                      "question": "Is there a road?", "answers_ids": [0],
                                                      "active": true, ...}, ...]}
    <P>_split_<split>_answers.json    {"answers": [{"id": 0, "question_id": 0, "answer": "yes",
                                                    "active": true, ...}, ...]}

with ``<P>`` = ``LR`` (splits train, val, test) or ``USGS`` (HR: train, val, test, test_phili), and
images ``<id>.tif`` in ``Images_LR/`` (LR) or ``Data/`` (HR). As the authors' ``AutomaticDB/Splits.py``
writes them, every split file lists *all* ids, position = id: what belongs to another split is a
placeholder ``{"id": N, "active": false}`` with no other field. Inactive images and questions are
skipped (the reference ``VQALoader`` keeps only active images); a question's answer is
``answers_ids[0]``, as ``VQALoader`` takes it. Question types: LR presence, comp, count,
rural_urban; HR presence, comp, count, area.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
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
    require_dir,
)

log = logging.getLogger(__name__)

PREFIXES = {"LR": "LR", "HR": "USGS"}
IMAGE_DIRS = {"LR": ("Images_LR", "Images", "images", "data"), "HR": ("Data", "Images_HR", "Images", "dataUSGS")}
EXPECTED = {
    "images": '{"images": [{"id", "active", "questions_ids"}]}',
    "questions": '{"questions": [{"id", "img_id", "type", "question", "answers_ids", "active"}]}',
    "answers": '{"answers": [{"id", "question_id", "answer", "active"}]}',
}


@dataclass(frozen=True)
class VQASample:
    """One active question about one image, with its answer and question type."""

    image_path: Path
    image_id: int
    question_id: int
    question: str
    answer: str
    question_type: str

    def image(self) -> Image.Image:
        return open_image(self.image_path)


def _records(path: Path, key: str) -> dict[int, dict]:
    document = read_json(path, f"RSVQA {EXPECTED[key]}")
    if not isinstance(document, dict) or not isinstance(document.get(key), list):
        raise DataFormatError(
            f"{path.name} has no {key!r} list (found {describe(document)}, in {path}); expected RSVQA {EXPECTED[key]}"
        )
    records = {}
    for i, record in enumerate(document[key]):
        record_id = field(record, "id", int, f"{path.name} {key} {i}", f"RSVQA {EXPECTED[key]}")
        records[record_id] = record
    return records


def _active(record: dict) -> bool:
    return bool(record.get("active", True))


class RSVQA(SampleDataset[VQASample]):
    """The active questions of one RSVQA split; ``variant`` is "LR" or "HR" (found from the files if None)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        variant: str | None = None,
        image_dir: str | Path | None = None,
        check_images: bool = True,
        transform: Callable[[VQASample], Any] | None = None,
    ) -> None:
        self.root = require_dir(Path(root), "an RSVQA folder with <P>_split_<split>_{images,questions,answers}.json")
        self.variant = variant or self._detect_variant()
        if self.variant not in PREFIXES:
            raise ValueError(f"variant must be one of {sorted(PREFIXES)}, not {self.variant!r}")
        prefix = PREFIXES[self.variant]
        files = {key: self.root / f"{prefix}_split_{split}_{key}.json" for key in EXPECTED}
        if not files["images"].is_file():
            present = sorted(
                {
                    p.name.removeprefix(f"{prefix}_split_").rsplit("_", 1)[0]
                    for p in self.root.glob(f"{prefix}_split_*_images.json")
                }
            )
            raise DataFormatError(
                f"{self.root}: no {files['images'].name} (splits found: "
                f"{', '.join(present) or 'none'}); expected split {split!r} as "
                f"{prefix}_split_{split}_{{images,questions,answers}}.json"
            )
        images, questions, answers = (_records(files[k], k) for k in ("images", "questions", "answers"))
        self.image_dir = (
            Path(image_dir)
            if image_dir is not None
            else find_image_dir(
                self.root, IMAGE_DIRS[self.variant], self._probe(images), f"RSVQA {self.variant} images <id>.tif"
            )
        )
        samples, skipped = [], Counter()
        for image_id, image in images.items():
            if not _active(image):
                skipped["inactive image"] += 1
                continue
            question_ids = field(
                image, "questions_ids", list, f"{files['images'].name} image {image_id}", EXPECTED["images"]
            )
            for question_id in question_ids:
                question = questions.get(question_id)
                if question is None:
                    raise DataFormatError(
                        f"{files['images'].name}: image {image_id} lists question {question_id}, "
                        f"which {files['questions'].name} does not have; expected every "
                        f"questions_ids entry to be a question id"
                    )
                if not _active(question):
                    skipped["inactive question"] += 1
                    continue
                where = f"{files['questions'].name} question {question_id}"
                text = field(question, "question", str, where, EXPECTED["questions"])
                kind = field(question, "type", str, where, EXPECTED["questions"])
                answer = self._answer(question, answers, files["answers"].name, where)
                if answer is None:
                    skipped["question without an answer"] += 1
                    continue
                samples.append(VQASample(self.image_dir / f"{image_id}.tif", image_id, question_id, text, answer, kind))
        if skipped:
            log.info("RSVQA %s %s: skipped %s", self.variant, split, dict(skipped))
        if check_images:
            assert_images_exist(sorted({s.image_path for s in samples}), files["images"], self.image_dir)
        self.split = split
        super().__init__(samples, transform)

    @property
    def question_types(self) -> list[str]:
        return sorted({s.question_type for s in self.samples})

    def _detect_variant(self) -> str:
        found = [v for v, prefix in PREFIXES.items() if any(self.root.glob(f"{prefix}_split_*_images.json"))]
        if len(found) != 1:
            raise DataFormatError(
                f"{self.root}: {'both LR and HR' if found else 'no'} RSVQA split files "
                f"(folder holds {listing(self.root)}); expected LR_split_<split>_*.json or "
                f"USGS_split_<split>_*.json, or pass variant="
            )
        return found[0]

    @staticmethod
    def _probe(images: dict[int, dict]) -> str | None:
        return f"{next(iter(images))}.tif" if images else None

    @staticmethod
    def _answer(question: dict, answers: dict[int, dict], answers_name: str, where: str) -> str | None:
        """The question's first listed answer (``answers_ids[0]``, the reference loader's choice); None
        when the question lists none."""
        answer_ids = field(question, "answers_ids", list, where, EXPECTED["questions"])
        if not answer_ids:
            return None
        answer = answers.get(answer_ids[0])
        if answer is None:
            raise DataFormatError(
                f"{where} lists answer {answer_ids[0]}, which {answers_name} does not have; "
                f"expected every answers_ids entry to be an answer id"
            )
        return str(
            field(answer, "answer", (str, int, float), f"{answers_name} answer {answer_ids[0]}", EXPECTED["answers"])
        )
