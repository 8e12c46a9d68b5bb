"""An RS-RAG data set folder: a knowledge corpus and knowledge-grounded question/answer splits.

RS-RAG's Remote Sensing World Knowledge (RSWK) set pairs, per landmark, a satellite image with world
knowledge (history, culture) and remote sensing knowledge (land cover, indices) text. This project
reads that shape as one folder (our declared format; RSWK's own release layout is not reproduced)::

    knowledge.jsonl            one passage per line (or knowledge.json: a list of the same objects)
        {"id": "P001", "title": "Green Forest Reserve", "text": "A protected forest ...",
         "image": "forest.png",                       optional, relative to images/
         "country": "...", "lat": 0.0, "lon": 0.0}    optional, kept as metadata
    images/                    passage images and question images
    qa_<split>.json            LLaVA conversation JSON, one file per split (qa_train.json, qa_test.json):
        [{"id": "q1", "image": "forest.png", "knowledge_ids": ["P001"],
          "conversations": [{"from": "human", "value": "<image>\\nWhat is this place?"},
                            {"from": "gpt", "value": "the green forest reserve"}]}]

``knowledge_ids`` names the gold passage(s) of a question (for retrieval R@k); it may be empty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rs_assistant.engine.models.rag import Passage
from training.data.formats._common import DataFormatError, describe, listing, read_json, require_dir
from training.data.formats.conversations import Conversations, ConversationSample

EXPECTED_FOLDER = (
    'an RS-RAG folder: knowledge.jsonl (or knowledge.json) of passages {"id", "text", "title", '
    '"image"}, images/, and qa_<split>.json LLaVA conversation files with "knowledge_ids"'
)
PASSAGE = 'a passage object {"id", "text", optional "title", "image" (relative to images/), metadata}'


def knowledge_file(root: Path) -> Path:
    root = require_dir(Path(root), EXPECTED_FOLDER)
    for name in ("knowledge.jsonl", "knowledge.json"):
        if (root / name).is_file():
            return root / name
    raise DataFormatError(
        f"{root}: no knowledge.jsonl or knowledge.json (folder holds {listing(root)}); expected {EXPECTED_FOLDER}"
    )


def read_passages(root: str | Path) -> list[Passage]:
    """The passages of ``root``'s corpus, images resolved under ``root/images`` and checked to exist."""
    root = Path(root)
    path = knowledge_file(root)
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataFormatError(
                    f"{path} line {n}: not JSON ({error.msg}); expected one {PASSAGE} per line"
                ) from None
    else:
        records = read_json(path, f"a list of {PASSAGE}")
        if not isinstance(records, list):
            raise DataFormatError(f"{path} is {describe(records)}; expected a list of {PASSAGE}")
    passages, seen = [], set()
    for n, record in enumerate(records):
        where = f"{path.name} passage {n}"
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("id"), (str, int))
            or not isinstance(record.get("text"), str)
        ):
            raise DataFormatError(f"{where}: found {describe(record)}; expected {PASSAGE}")
        pid = str(record["id"])
        if pid in seen:
            raise DataFormatError(f"{where}: id {pid!r} appears twice; expected unique passage ids")
        seen.add(pid)
        image = record.get("image")
        if image is not None:
            image_path = root / "images" / str(image)
            if not image_path.is_file():
                raise DataFormatError(
                    f"{where}: image {image!r} is not in {root / 'images'}; expected every passage image there"
                )
            image = str(image_path)
        meta = {k: v for k, v in record.items() if k not in ("id", "text", "title", "image")}
        passages.append(Passage(pid, record["text"], str(record.get("title", "")), image, meta))
    if not passages:
        raise DataFormatError(f"{path}: no passages; expected at least one {PASSAGE}")
    return passages


@dataclass(frozen=True)
class KnowledgeQA:
    sample: ConversationSample
    question: str
    answer: str
    history: tuple[tuple[str, str], ...]
    knowledge_ids: tuple[str, ...]


def read_qa(root: str | Path, split: str, passage_ids: set[str] | None = None) -> list[KnowledgeQA]:
    """The question/answer records of ``qa_<split>.json`` (last human/gpt pair answered, earlier ones history)."""
    root = require_dir(Path(root), EXPECTED_FOLDER)
    path = root / f"qa_{split}.json"
    if not path.is_file():
        found = sorted(p.stem.removeprefix("qa_") for p in root.glob("qa_*.json"))
        raise DataFormatError(
            f"{root}: no qa_{split}.json (splits found: {', '.join(found) or 'none'}); expected "
            f"split {split!r} as qa_{split}.json"
        )
    data = Conversations(path, root / "images")
    raw = read_json(path, "LLaVA conversation JSON")
    out = []
    for n, (sample, record) in enumerate(zip(data.samples, raw)):
        ids = record.get("knowledge_ids", [])
        if not isinstance(ids, list):
            raise DataFormatError(
                f"{path.name} record {n}: 'knowledge_ids' is {describe(ids)}; expected a list of passage ids"
            )
        ids = tuple(str(i) for i in ids)
        if passage_ids is not None and set(ids) - passage_ids:
            raise DataFormatError(
                f"{path.name} record {n}: knowledge_ids {sorted(set(ids) - passage_ids)} are not in the "
                "knowledge corpus; expected ids of knowledge.jsonl passages"
            )
        pairs = [(q.text, a.text) for q, a in zip(sample.turns[0::2], sample.turns[1::2])]
        if not pairs or len(sample.image_paths) != 1:
            raise DataFormatError(
                f"{path.name} record {n}: {len(sample.image_paths)} image(s), {len(pairs)} answered "
                "question(s); expected one image and at least one human/gpt pair"
            )
        out.append(KnowledgeQA(sample, pairs[-1][0], pairs[-1][1], tuple(pairs[:-1]), ids))
    return out


__all__ = ["KnowledgeQA", "read_passages", "read_qa"]
