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


# --- RS-RAG's own RSWK release, converted to the folder above ----------------------------------------

# The four passages per landmark that RS-RAG's authors index (QDRANT_DATASET/build_qdrant_dataset_RSWK.py):
# name -> the "world knowledge" fields it holds; "expert_knowledge" holds every field of
# "remote sensing expert knowledge".
RSWK_PASSAGES = {
    "basic_info_and_history": (
        "Name",
        "Category",
        "Area",
        "Location",
        "Address",
        "Physical_Area",
        "Construction_Period",
        "Historical_Background",
        "Major_Events",
    ),
    "architecture_and_function": ("Architectural_Characteristics", "Primary_Function", "Details"),
    "culture_and_visitor": ("Cultural_Significance", "Notable_Visitors"),
}
RSWK_RECORD = (
    'an RSWK record {"image_name": NAME (image NAME.png), "world knowledge": {Name, Category, Location, '
    'Historical_Background, Major_Events: [{Event, Year, Description}], ...}, "remote sensing expert knowledge": {...}}'
)
RSWK_QA = 'one JSON object per line {"messages": [{"role": "user" | "assistant", "content"}], "images": [NAME.png]}'


def _rswk_value(value) -> str:
    if isinstance(value, list):
        parts = []
        for item in value:
            if isinstance(item, dict):  # Major_Events: {Event, Year, Description}
                head = " ".join(str(item[k]) for k in ("Event", "Year") if item.get(k) not in (None, ""))
                parts.append(f"{head}: {item.get('Description', '')}".strip(": "))
            else:
                parts.append(str(item))
        return "; ".join(p for p in parts if p)
    return str(value).strip()


def rswk_passages(path: str | Path) -> list[dict]:
    """The passage objects (``knowledge.jsonl`` lines) of an RSWK knowledge file: four per landmark, as
    the authors index them, ids ``<image_name>#<passage name>``, each with the landmark's image."""
    path = Path(path)
    records = read_json(path, f"a list of {RSWK_RECORD}")
    if not isinstance(records, list):
        raise DataFormatError(f"{path} is {describe(records)}; expected a list of {RSWK_RECORD}")
    passages = []
    for n, record in enumerate(records):
        where = f"{path.name} record {n}"
        if not isinstance(record, dict) or not isinstance(record.get("image_name"), str):
            raise DataFormatError(f"{where}: found {describe(record)}, no 'image_name' string; expected {RSWK_RECORD}")
        world = record.get("world knowledge", {})
        expert = record.get("remote sensing expert knowledge", {})
        for key, value in (("world knowledge", world), ("remote sensing expert knowledge", expert)):
            if not isinstance(value, dict):
                raise DataFormatError(f"{where}: {key!r} is {describe(value)}; expected {RSWK_RECORD}")
        name = record["image_name"]
        image = name if name.endswith(".png") else name + ".png"
        groups = {group: [(f, world[f]) for f in fields if f in world] for group, fields in RSWK_PASSAGES.items()}
        groups["expert_knowledge"] = list(expert.items())
        for group, items in groups.items():
            text = "\n".join(f"{field}: {_rswk_value(value)}" for field, value in items if _rswk_value(value))
            if text:
                title = str(world.get("Name", Path(image).stem))
                passages.append({"id": f"{Path(image).stem}#{group}", "title": title, "text": text, "image": image})
    if not passages:
        raise DataFormatError(f"{path}: no knowledge in any record; expected a list of {RSWK_RECORD}")
    return passages


def rswk_qa(path: str | Path, passage_ids: dict[str, list[str]]) -> list[dict]:
    """The records of an RSWK task file (messages JSONL) as ``qa_<split>.json`` records: LLaVA turns, the
    image, and as ``knowledge_ids`` the passages of the landmark the image shows (``passage_ids``:
    image stem -> ids)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"{path}: file not found; expected {RSWK_QA}")
    roles = {"user": "human", "assistant": "gpt"}
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(f"{where}: not JSON ({error.msg}); expected {RSWK_QA}") from None
        messages, images = (record.get(k) if isinstance(record, dict) else None for k in ("messages", "images"))
        if not isinstance(messages, list) or not (isinstance(images, list) and len(images) == 1):
            raise DataFormatError(f"{where}: found {describe(record)}; expected {RSWK_QA}")
        turns = []
        for j, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in roles or not isinstance(message.get("content"), str):
                raise DataFormatError(f"{where} message {j}: found {describe(message)}; expected {RSWK_QA}")
            turns.append({"from": roles[role], "value": message["content"]})
        stem = Path(images[0]).stem
        out.append(
            {
                "id": f"{path.stem}-{n}",
                "image": images[0],
                "knowledge_ids": passage_ids.get(stem, []),
                "conversations": turns,
            }
        )
    return out


def convert_rswk(knowledge: str | Path, image_dir: str | Path, out: str | Path, qa: dict[str, str | Path]) -> Path:
    """Write RS-RAG's RSWK release as this project's RS-RAG folder: ``out/knowledge.jsonl`` (:func:`rswk_passages`),
    ``out/images`` (a link to ``image_dir``) and ``out/qa_<split>.json`` per ``qa`` entry (split -> task file).

        convert_rswk("ori_data_train.json", "RSWK/images", "/data/RSWK-rag",
                     {"train": "vqa_wk_full_train_11827.jsonl", "test": "vqa_wk_full_test_2993.jsonl"})
    """
    image_dir, out = Path(image_dir).resolve(), Path(out)
    require_dir(image_dir, "the folder of RSWK images (<image_name>.png)")
    passages = rswk_passages(knowledge)
    out.mkdir(parents=True, exist_ok=True)
    link = out / "images"
    if not link.exists():
        link.symlink_to(image_dir, target_is_directory=True)
    with (out / "knowledge.jsonl").open("w", encoding="utf-8") as handle:
        for passage in passages:
            handle.write(json.dumps(passage, ensure_ascii=False) + "\n")
    ids: dict[str, list[str]] = {}
    for passage in passages:
        ids.setdefault(Path(passage["image"]).stem, []).append(passage["id"])
    for split, path in qa.items():
        records = rswk_qa(path, ids)
        (out / f"qa_{split}.json").write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    read_passages(out)  # every passage image is there
    for split in qa:
        read_qa(out, split, {p["id"] for p in passages})
    return out


__all__ += ["convert_rswk", "rswk_passages", "rswk_qa"]
