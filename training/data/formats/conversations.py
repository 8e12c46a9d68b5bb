"""LLaVA conversation JSON: GeoChat-Instruct (single images) and ChangeChat-105k (image pairs).

The file is a list of records::

    [{"id": "P0003_0004",
      "image": "P0003_0004.png",                       (ChangeChat: ["A/x.png", "B/x.png"];
                                                        also read from "images"; absent: text only)
      "conversations": [{"from": "human", "value": "<image>\\n[refer] Where is the plane?"},
                        {"from": "gpt",   "value": "{<40><48><54><56>|<-37>}"}]}, ...]

Image paths are relative to ``image_dir``. Turns alternate human/gpt, starting with human.

ChangeChat-105k (DeltaVLM's release, ``changechat_105k_train.json`` ...) records are
``{"id": 0, "image": ["train/A/x.png", "train/B/x.png"], "changeflag": 0, "conversations": [...]}``
with ``"<image> <image> ..."`` opening the first human turn; ``changeflag`` becomes ``changed``. Its
captioning test file (``changechat_105k_test.json``) has another schema
(``{image_A, image_B, captions, changeflag}``): it is refused with a message saying so (read the
captions with ``LevirCC``, which holds the same pairs and references).

GeoChat (Kuckreja et al., CVPR 2024) writes boxes as ``{<x1><y1><x2><y2>|θ}`` on a 0-100 grid over
the whole image (θ in degrees, optional); with ``box_convention=BoxConvention.GEOCHAT`` every turn's
boxes are parsed by the engine's ``parse_percent_boxes`` and converted to pixels of the image, whose
size is read from its header when the sample is accessed. A leading task tag (``[refer]``,
``[grounding]``, ``[identify]``, ``[vqa]`` ...) in the first human turn becomes ``task``.

    chat = Conversations("GeoChat_Instruct.json", "images/", box_convention=BoxConvention.GEOCHAT)
    sample = chat[0]        # ConversationSample: turns with pixel boxes, task, image_paths
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from rs_assistant.engine.backends.boxes import ParsedBox, parse_percent_boxes
from training.data.formats._common import (
    DataFormatError,
    SampleDataset,
    Size,
    assert_images_exist,
    describe,
    field,
    image_size,
    open_image,
    read_json,
)

log = logging.getLogger(__name__)

EXPECTED = (
    'LLaVA conversation JSON [{"id", "image" (or "images"), "conversations": [{"from": "human" | "gpt", "value"}]}]'
)
_TASK = re.compile(r"^\s*(?:<image>\s*)*\[([A-Za-z_ ]+)\]")
IMAGE_TOKEN = "<image>"


class Role(enum.Enum):
    HUMAN = "human"
    GPT = "gpt"


class BoxConvention(enum.Enum):
    """How boxes are written in the conversation text."""

    NONE = "none"  # no boxes parsed
    GEOCHAT = "geochat"  # {<x1><y1><x2><y2>|θ} on 0-100 over the whole image


@dataclass(frozen=True)
class Turn:
    """One message; ``boxes`` in pixels of the (first) image, filled when the convention has boxes."""

    role: Role
    value: str
    boxes: tuple[ParsedBox, ...] = ()

    @property
    def text(self) -> str:
        """The message without ``<image>`` placeholders."""
        return self.value.replace(IMAGE_TOKEN, "").strip()


@dataclass(frozen=True)
class ConversationSample:
    id: str
    image_paths: tuple[Path, ...]
    turns: tuple[Turn, ...]
    task: str | None = None
    image_size: Size | None = None
    changed: bool | None = None  # ChangeChat's changeflag (0 = no change), when the record has one

    def __post_init__(self) -> None:
        if not self.turns:
            raise ValueError(f"conversation {self.id}: no turns")

    def images(self) -> list[Image.Image]:
        return [open_image(path) for path in self.image_paths]


def _image_list(record: dict, where: str) -> tuple[str, ...]:
    value = record.get("image", record.get("images"))
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise DataFormatError(f"{where}: 'image' is {describe(value)}; expected a path or a list of paths")


def parse_record(record: Any, where: str, image_dir: Path) -> ConversationSample:
    """One LLaVA record as a sample (boxes not parsed yet: that needs the image size)."""
    if isinstance(record, dict) and "conversations" not in record and {"image_A", "image_B", "captions"} <= set(record):
        raise DataFormatError(
            f"{where}: found {describe(record)}, ChangeChat's captioning test schema; expected {EXPECTED} "
            f"(read those pairs' captions with LevirCC, which holds the same references)"
        )
    conversations = field(record, "conversations", list, where, EXPECTED)
    record_id = record.get("id", where)
    turns = []
    for j, message in enumerate(conversations):
        speaker = field(message, "from", str, f"{where} turn {j}", EXPECTED)
        value = field(message, "value", str, f"{where} turn {j}", EXPECTED)
        try:
            role = Role(speaker)
        except ValueError:
            raise DataFormatError(f"{where} turn {j}: 'from' is {speaker!r}; expected 'human' or 'gpt'") from None
        expected_role = Role.HUMAN if j % 2 == 0 else Role.GPT
        if role is not expected_role:
            raise DataFormatError(
                f"{where} turn {j}: from {speaker!r}; expected turns alternating human, gpt, starting with human"
            )
        turns.append(Turn(role, value))
    if not turns:
        raise DataFormatError(f"{where}: 'conversations' is empty; expected at least one human and one gpt turn")
    match = _TASK.match(turns[0].value)
    flag = record.get("changeflag")
    if flag is not None and (isinstance(flag, bool) or not isinstance(flag, int)):
        raise DataFormatError(
            f"{where}: 'changeflag' is {describe(flag)}; expected 0 (no change) or a non-zero integer"
        )
    return ConversationSample(
        str(record_id),
        tuple(image_dir / p for p in _image_list(record, where)),
        tuple(turns),
        match.group(1).strip().lower() if match else None,
        changed=None if flag is None else bool(flag),
    )


def pixel_boxes(text: str, size: Size) -> tuple[ParsedBox, ...]:
    """GeoChat 0-100 boxes in ``text`` as pixel boxes of an image of ``size`` (width, height)."""
    return tuple(parse_percent_boxes(text, size))


class Conversations(SampleDataset[ConversationSample]):
    """Records of a LLaVA conversation file. ``images_per_sample`` (e.g. 2 for ChangeChat) is checked if given."""

    def __init__(
        self,
        annotation: str | Path,
        image_dir: str | Path,
        *,
        box_convention: BoxConvention = BoxConvention.NONE,
        images_per_sample: int | None = None,
        check_images: bool = True,
        transform: Callable[[ConversationSample], Any] | None = None,
    ) -> None:
        self.annotation = Path(annotation)
        self.image_dir = Path(image_dir)
        self.box_convention = box_convention
        document = read_json(self.annotation, EXPECTED)
        if not isinstance(document, list):
            raise DataFormatError(
                f"{self.annotation.name} is {describe(document)}, not a list of records "
                f"(in {self.annotation}); expected {EXPECTED}"
            )
        samples = []
        for i, record in enumerate(document):
            where = f"{self.annotation.name} record {i}"
            sample = parse_record(record, where, self.image_dir)
            if images_per_sample is not None and len(sample.image_paths) != images_per_sample:
                raise DataFormatError(
                    f"{where}: {len(sample.image_paths)} image(s); expected {images_per_sample} (a before/after pair)"
                    if images_per_sample == 2
                    else f"{where}: {len(sample.image_paths)} image(s); expected {images_per_sample}"
                )
            samples.append(sample)
        if check_images:
            assert_images_exist(sorted({p for s in samples for p in s.image_paths}), self.annotation, self.image_dir)
        log.info("%s: %d conversations", self.annotation.name, len(samples))
        super().__init__(samples, transform)

    def sample(self, index: int) -> ConversationSample:
        sample = self.samples[index]
        if self.box_convention is BoxConvention.NONE or not sample.image_paths:
            return sample
        size = image_size(sample.image_paths[0])
        turns = tuple(replace(turn, boxes=pixel_boxes(turn.value, size)) for turn in sample.turns)
        return replace(sample, turns=turns, image_size=size)


def GeoChatInstruct(annotation: str | Path, image_dir: str | Path, **kwargs: Any) -> Conversations:
    """GeoChat-Instruct: single images, 0-100 boxes converted to pixels."""
    return Conversations(annotation, image_dir, box_convention=BoxConvention.GEOCHAT, **kwargs)


def ChangeChat(annotation: str | Path, image_dir: str | Path, **kwargs: Any) -> Conversations:
    """ChangeChat-105k: every record is a before/after image pair, no box parsing."""
    kwargs.setdefault("images_per_sample", 2)
    return Conversations(annotation, image_dir, **kwargs)
