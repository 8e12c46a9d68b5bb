"""The RSA processor: tokenizer, image preprocessing, prompt formats and location tokens.

Training and the engine must write exactly the same strings, so every string the model reads is
built here (:meth:`RSAProcessor.format_prompt`) and every answer is read here
(:meth:`RSAProcessor.parse_answer`).

Prompt format (one string per sample; no spaces are needed around the special tokens)::

    <s>{IMAGES}<|user|>{TAG} {INSTRUCTION}<|assistant|>{ANSWER}</s><|user|>{TAG} {INSTRUCTION}<|assistant|>

``{IMAGES}`` is ``<image>`` for one image and ``<image><image><delta>`` for a bi-temporal pair
(before, after, difference); the processor expands each placeholder into one token per patch.
Every user turn starts with its task tag; chat history turns come before the last one, each
answer closed by ``</s>``. Only answer tokens and their ``</s>`` are trained (``labels``).

=========  ========================  ==================================================================
task       user turn                 answer
=========  ========================  ==================================================================
caption    ``<caption> describe the  the caption, e.g. ``a residential area with twelve buildings along
           image``                   a road.``
ground     ``<ground> find PHRASE``  per object ``LABEL<loc_x0><loc_y0><loc_x1><loc_y1>``, objects
                                     joined by ``; `` (sorted top to bottom, then left to right);
                                     ``none`` when there is none
segment    ``<segment> segment       ``LABEL [SEG]`` (one ``[SEG]`` per mask, joined by ``; ``);
           PHRASE``                  ``none`` when there is none
change     ``<change> what changed   the change caption, ending with `` [SEG]`` when something
           between the two images``  changed (the [SEG] mask is the change mask)
chat       ``<chat> QUESTION``       free text, which may hold ``LABEL<loc_..>x4`` groups and ``[SEG]``
=========  ========================  ==================================================================

PHRASE is what the user asks for with the command words removed ("Find all the storage tanks."
-> "storage tanks", boxes.target_phrase). Location bins: ``<loc_i>`` covers
``[i / N, (i + 1) / N)`` of the side (N = num_location_bins, x of the width, y of the height of
the square the model sees, which is the whole window resized) and is read at its centre.
Text is lower-cased by the tokenizer.

Training builds a batch the way the engine does, plus the answers, labels and targets::

    texts = [processor.format_prompt(Task.GROUND, "find storage tanks",
                                     answer=processor.ground_answer([("storage tank", box)], (w, h)))]
    batch = processor(texts, [window], return_labels=True)        # window: H x W x 3 uint8
    loss = model(**batch, seg_targets=masks, change_labels=flags).loss

A batch holds single images or (before, after) pairs, not both (modeling_rsa.py).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from rs_assistant.core.protocol import Message, Role, Task
from rs_assistant.engine.backends.boxes import Box, Size, clamp_box, target_phrase
from rs_assistant.engine.backends.hf import CHARS_PER_TOKEN_BOUND, max_token_chars
from rs_assistant.engine.models.rsa.configuration_rsa import RSAConfig
from rs_assistant.engine.models.rsa.tokens import (  # noqa: F401 (the tokens are part of this module's API too)
    ASSISTANT,
    BOS,
    DELTA,
    EOS,
    IMAGE,
    PAD,
    SEG,
    SPECIAL_TOKENS,
    TASK_TAGS,
    UNK,
    USER,
    loc_token,
)

log = logging.getLogger(__name__)

CAPTION_INSTRUCTION = "describe the image"
CHANGE_INSTRUCTION = "what changed between the two images"
NONE_ANSWER = "none"

PROCESSOR_FILE = "processor_config.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_tokenizer(
    corpus_texts: Iterable[str], vocab_size: int, num_location_bins: int = 100
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``corpus_texts``, with every RSA special token.

    Ids: SPECIAL_TOKENS first (pad 0, bos 1, eos 2 ...), then ``<loc_0>`` .. ``<loc_{N-1}>``,
    then the 256 bytes and the merges, at most ``vocab_size`` in all. Text is lower-cased.
    """
    specials = [*SPECIAL_TOKENS, *(loc_token(i) for i in range(num_location_bins))]
    if vocab_size < len(specials) + 256:
        raise ValueError(
            f"vocab_size {vocab_size} leaves no room for the 256 bytes after {len(specials)} special tokens"
        )
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        extra_special_tokens=[t for t in specials if t not in (PAD, BOS, EOS, UNK)],
    )


def extend_tokenizer(tokenizer: PreTrainedTokenizerBase, num_location_bins: int = 100) -> PreTrainedTokenizerBase:
    """A pretrained LLM's tokenizer (large.json) with every RSA token it lacks added as a special token.

    The RSA prompt format replaces the LLM's chat template, so ``<pad>``, ``<s>``, ``</s>`` and
    ``<unk>`` become its pad/bos/eos/unk tokens too. The model's config then takes the ids with
    ``RSAConfig.bind_tokenizer`` (and the LM's embeddings grow to the new size).
    """
    vocab = tokenizer.get_vocab()
    wanted = [*SPECIAL_TOKENS, *(loc_token(i) for i in range(num_location_bins))]
    tokenizer.add_special_tokens(
        {
            "pad_token": PAD,
            "bos_token": BOS,
            "eos_token": EOS,
            "unk_token": UNK,
            "extra_special_tokens": [t for t in wanted if t not in vocab and t not in (PAD, BOS, EOS, UNK)],
        },
        replace_extra_special_tokens=False,
    )
    return tokenizer


@dataclass(frozen=True)
class LocatedPhrase:
    """A box the model wrote: its label, the box in window pixels and where its four loc tokens are."""

    label: str
    box: Box
    positions: tuple[int, int, int, int]


@dataclass(frozen=True)
class SegRequest:
    """A ``[SEG]`` the model wrote: the phrase before it and its position in the token ids."""

    label: str
    position: int


@dataclass(frozen=True)
class Answer:
    """A generated answer read back: plain text (no loc tokens, no [SEG]), boxes and masks asked for."""

    text: str
    boxes: tuple[LocatedPhrase, ...]
    segments: tuple[SegRequest, ...]


class PromptTooLong(ValueError):
    """A prompt (images, history and turn) would have more than ``limit`` tokens."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the prompt needs more than {limit} tokens")
        self.limit = limit


_SEPARATOR = re.compile(r"\s*;\s*")
_SPACES = re.compile(r"\s+")


class RSAProcessor:
    """Turns prompts and images into model inputs and generated ids into answers."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_size: int,
        num_image_tokens: int,
        num_location_bins: int,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
    ):
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.num_image_tokens = int(num_image_tokens)
        self.num_location_bins = int(num_location_bins)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        ids = tokenizer.convert_tokens_to_ids([*SPECIAL_TOKENS, *(loc_token(i) for i in range(num_location_bins))])
        missing = [t for t, i in zip(SPECIAL_TOKENS, ids) if i is None or (i == tokenizer.unk_token_id and t != UNK)]
        if missing:
            raise ValueError(
                f"the tokenizer lacks RSA tokens {', '.join(missing)}: build it with build_tokenizer or "
                f"extend_tokenizer"
            )
        self.token_ids: dict[str, int] = dict(zip(SPECIAL_TOKENS, ids))
        self.loc_ids: tuple[int, ...] = tuple(ids[len(SPECIAL_TOKENS) :])  # bin -> token id
        self.loc_bins: dict[int, int] = {tid: i for i, tid in enumerate(self.loc_ids)}  # token id -> bin
        if len(self.loc_bins) != num_location_bins or tokenizer.unk_token_id in self.loc_bins:
            raise ValueError(f"the tokenizer lacks some of the {num_location_bins} location tokens")

    @classmethod
    def for_model(cls, tokenizer: PreTrainedTokenizerBase, config: RSAConfig) -> RSAProcessor:
        """The processor matching a model config's image size, patch grid and bins."""
        return cls(tokenizer, config.vision_config.image_size, config.num_image_tokens, config.num_location_bins)

    # --- files ----------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> None:
        """The tokenizer's files plus processor_config.json."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        settings = {
            "processor_class": type(self).__name__,
            "image_size": self.image_size,
            "num_image_tokens": self.num_image_tokens,
            "num_location_bins": self.num_location_bins,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }
        (folder / PROCESSOR_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> RSAProcessor:
        folder = Path(folder)
        settings = json.loads((folder / PROCESSOR_FILE).read_text(encoding="utf-8"))
        settings.pop("processor_class", None)
        return cls(PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True), **settings)

    # --- images ---------------------------------------------------------------------------------

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """An RGB uint8 ``H x W x 3`` window -> ``[3, S, S]``: resized (aspect not kept) and normalised."""
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 RGB image, got shape {image.shape}")
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        pixels = F.interpolate(
            pixels[None], size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False
        )[0]
        mean = torch.tensor(self.image_mean).view(3, 1, 1)
        std = torch.tensor(self.image_std).view(3, 1, 1)
        return (pixels - mean) / std

    def pixel_values(self, images: Sequence[np.ndarray | Sequence[np.ndarray]]) -> torch.Tensor:
        """One image per sample -> ``[B, 3, S, S]``; a (before, after) pair per sample -> ``[B, 2, 3, S, S]``."""
        return torch.stack(
            [
                self.preprocess(i) if isinstance(i, np.ndarray) else torch.stack([self.preprocess(x) for x in i])
                for i in images
            ]
        )

    # --- prompts --------------------------------------------------------------------------------

    @staticmethod
    def instruction(task: Task, prompt: str = "") -> str:
        """The user turn for ``task`` (task tag and instruction) from what the user typed."""
        task = Task(task)
        if task is Task.CAPTION:
            text = CAPTION_INSTRUCTION
        elif task is Task.CHANGE:
            text = CHANGE_INSTRUCTION
        elif task in (Task.GROUND, Task.SEGMENT):
            phrase = target_phrase(_SPACES.sub(" ", prompt))
            if not phrase:
                raise ValueError(
                    f"{task.value} needs a prompt naming what to {'find' if task is Task.GROUND else 'segment'}"
                )
            text = f"{'find' if task is Task.GROUND else 'segment'} {phrase}"
        elif task is Task.CHAT:
            text = _SPACES.sub(" ", prompt).strip()
            if not text:
                raise ValueError("chat needs a question")
        else:
            raise ValueError(f"the RSA model does not do {task.value!r}")
        return f"{TASK_TAGS[task]} {text}"

    def format_prompt(
        self,
        task: Task,
        prompt: str = "",
        history: Sequence[Message] = (),
        pair: bool = False,
        answer: str | None = None,
        images: int | None = None,
    ) -> str:
        """The whole string for one sample: images, chat history, this turn, and ``answer`` when training.

        ``history`` alternates user and assistant messages (system messages are dropped); past
        user turns are chat turns. Without ``answer`` the string ends with ``<|assistant|>``,
        ready for generation. ``images``: how many images open it (default: 2 with ``pair``, else 1;
        0 for a chat without image, which has no ``<image>`` at all).
        """
        parts = [BOS, self._image_placeholders(2 if pair else 1 if images is None else images)]
        for message in history:
            if message.role is Role.USER:
                parts += [USER, self.instruction(Task.CHAT, message.content)]
            elif message.role is Role.ASSISTANT:
                parts += [ASSISTANT, message.content.strip(), EOS]
        parts += [USER, self.instruction(task, prompt), ASSISTANT]
        if answer is not None:
            parts += [answer.strip(), EOS]
        return "".join(parts)

    @staticmethod
    def _image_placeholders(images: int) -> str:
        if images not in (0, 1, 2):
            raise ValueError(f"a prompt has 0, 1 or 2 images (before, after), not {images}")
        return ("", IMAGE, IMAGE + IMAGE + DELTA)[images]

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The most characters one token of the vocabulary spells (special tokens included)."""
        return max_token_chars(self.tokenizer)

    def prompt_ids(
        self, task: Task, prompt: str = "", history: Sequence[Message] = (), images: int = 1, limit: int | None = None
    ) -> list[int]:
        """The ``input_ids`` row that ``self([format_prompt(task, prompt, history, images=images)], ...)`` makes
        (each placeholder expanded), built from the end: the last turn first, then the history newest message
        first, so that no more of a long conversation is tokenized than ``limit`` tokens can hold.

        :class:`PromptTooLong` when the row would have more than ``limit`` ids. A text longer than ``limit``
        times :data:`CHARS_PER_TOKEN_BOUND` times the vocabulary's longest token is over the limit without
        being tokenized.
        """
        room = math.inf if limit is None else limit
        head = self._encode(BOS + self._image_placeholders(images), room, limit)
        head = [t for tok in head for t in ([tok] * self.num_image_tokens if tok in self._placeholder_ids else [tok])]
        room -= len(head)
        self._check_chars(prompt, room, limit)
        turn = self._encode(USER + self.instruction(task, prompt) + ASSISTANT, room, limit)
        room -= len(turn)
        earlier: list[list[int]] = []
        for message in reversed(history):
            self._check_chars(message.content, room, limit)
            if message.role is Role.USER:
                piece = self._encode(USER + self.instruction(Task.CHAT, message.content), room, limit)
            elif message.role is Role.ASSISTANT:
                piece = self._encode(ASSISTANT + message.content.strip() + EOS, room, limit)
            else:
                continue
            room -= len(piece)
            earlier.append(piece)
        return head + [t for piece in reversed(earlier) for t in piece] + turn

    @property
    def _placeholder_ids(self) -> frozenset[int]:
        return frozenset((self.token_ids[IMAGE], self.token_ids[DELTA]))

    def _check_chars(self, text: str, room: float, limit: int | None) -> None:
        if limit is not None and len(text) > max(room, 0) * CHARS_PER_TOKEN_BOUND * self.max_token_chars:
            raise PromptTooLong(limit)

    def _encode(self, text: str, room: float, limit: int | None) -> list[int]:
        """``text``'s ids (special tokens written in it included); PromptTooLong if more than ``room``."""
        self._check_chars(text, room, limit)
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if limit is not None and len(ids) > room:
            raise PromptTooLong(limit)
        return ids

    def __call__(
        self,
        texts: Sequence[str],
        images: Sequence[np.ndarray | Sequence[np.ndarray]],
        padding_side: str = "right",
        return_labels: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Model inputs for a batch: ``input_ids``, ``attention_mask``, ``pixel_values`` (and ``labels``).

        Each ``<image>`` / ``<delta>`` becomes ``num_image_tokens`` copies; ``labels`` keep only the
        answer tokens and their ``</s>`` (every span after ``<|assistant|>``). Use left padding
        to generate a batch, right padding to train.
        """
        if len(texts) != len(images):
            raise ValueError(f"{len(texts)} texts but {len(images)} images")
        placeholders = {self.token_ids[IMAGE], self.token_ids[DELTA]}
        rows = []
        for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
            rows.append([t for tok in ids for t in ([tok] * self.num_image_tokens if tok in placeholders else [tok])])
        width = max(len(r) for r in rows)
        pad = self.token_ids[PAD]
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            span = slice(0, len(row)) if padding_side == "right" else slice(width - len(row), width)
            input_ids[b, span] = torch.tensor(row)
            attention_mask[b, span] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": self.pixel_values(images)}
        if return_labels:
            batch["labels"] = self._labels(input_ids, attention_mask)
        return batch

    def _labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        labels = torch.full_like(input_ids, -100)
        assistant, eos = self.token_ids[ASSISTANT], self.token_ids[EOS]
        for b in range(input_ids.shape[0]):
            answering = False
            for i, token in enumerate(input_ids[b].tolist()):
                if not attention_mask[b, i]:
                    continue
                if answering:
                    labels[b, i] = token
                    answering = token != eos
                elif token == assistant:
                    answering = True
        return labels

    # --- location tokens ------------------------------------------------------------------------

    def quantize(self, value: float, size: float) -> int:
        """A coordinate in ``[0, size]`` -> its bin (values outside are clamped)."""
        return min(max(int(math.floor(value / size * self.num_location_bins)), 0), self.num_location_bins - 1)

    def dequantize(self, index: int, size: float) -> float:
        """A bin -> the coordinate of its centre: within half a bin of any value quantised to it."""
        return (min(max(index, 0), self.num_location_bins - 1) + 0.5) * size / self.num_location_bins

    def box_tokens(self, box: Box, window: Size) -> str:
        """A window-pixel box (x0, y0, x1, y1) as four location tokens; ``window`` is (width, height)."""
        width, height = window
        x0, y0, x1, y1 = box
        bins = (
            self.quantize(x0, width),
            self.quantize(y0, height),
            self.quantize(x1, width),
            self.quantize(y1, height),
        )
        return "".join(loc_token(i) for i in bins)

    def ground_answer(self, objects: Sequence[tuple[str, Box]], window: Size) -> str:
        """The grounding answer for (label, window-pixel box) pairs, in the order given."""
        if not objects:
            return NONE_ANSWER
        return "; ".join(f"{label}{self.box_tokens(box, window)}" for label, box in objects)

    # --- answers --------------------------------------------------------------------------------

    def decode(self, ids: Sequence[int]) -> str:
        """Generated ids as text, keeping loc tokens and [SEG], without pad/bos/eos and what follows eos."""
        ids = list(ids)
        eos = self.token_ids[EOS]
        if eos in ids:
            ids = ids[: ids.index(eos)]
        drop = {self.token_ids[PAD], self.token_ids[BOS]}
        return self.tokenizer.decode([i for i in ids if i not in drop], skip_special_tokens=False).strip()

    def parse_text(self, text: str, window: Size) -> Answer:
        """:meth:`parse_answer` of a written answer (tests, evaluation of reference strings)."""
        return self.parse_answer(self.tokenizer(text, add_special_tokens=False)["input_ids"], window)

    def parse_answer(self, ids: Sequence[int], window: Size) -> Answer:
        """Generated ids -> text, boxes in window pixels and [SEG] requests.

        A run of loc tokens is read four at a time (x0, y0, x1, y1; an incomplete rest is
        dropped) and labelled with the phrase since the last ``;``, box or ``[SEG]`` (or the
        previous box's label when that is empty). Reading stops at ``</s>``. Boxes that have no
        area inside the window are dropped.
        """
        width, height = window
        seg, eos = self.token_ids[SEG], self.token_ids[EOS]
        skip = self._not_text
        boxes: list[LocatedPhrase] = []
        segments: list[SegRequest] = []
        text_ids: list[int] = []
        phrase_ids: list[int] = []
        run: list[tuple[int, int]] = []  # (position, bin) of the current loc run
        last_label = ""

        def phrase() -> str:
            return _SEPARATOR.split(self.tokenizer.decode(phrase_ids))[-1].strip(" ,.:")

        def close_run() -> None:
            nonlocal last_label
            label = phrase() or last_label
            for i in range(0, len(run) - 3, 4):
                (p0, b0), (p1, b1), (p2, b2), (p3, b3) = run[i : i + 4]
                box = clamp_box(
                    (
                        self.dequantize(b0, width),
                        self.dequantize(b1, height),
                        self.dequantize(b2, width),
                        self.dequantize(b3, height),
                    ),
                    window,
                )
                if box is not None:
                    boxes.append(LocatedPhrase(label, box, (p0, p1, p2, p3)))
            last_label = label
            run.clear()
            phrase_ids.clear()

        for position, token in enumerate(ids):
            token = int(token)
            if token == eos:
                break
            if token in self.loc_bins:
                run.append((position, self.loc_bins[token]))
                continue
            if run:
                close_run()
            if token == seg:
                segments.append(SegRequest(phrase() or last_label, position))
                phrase_ids.clear()
            elif token not in skip:
                text_ids.append(token)
                phrase_ids.append(token)
        if run:
            close_run()
        return Answer(self.answer_text(text_ids), tuple(boxes), tuple(segments))

    @functools.cached_property
    def _not_text(self) -> frozenset[int]:
        return frozenset(self.token_ids[t] for t in (PAD, BOS, UNK, USER, ASSISTANT, IMAGE, DELTA, *TASK_TAGS.values()))

    def is_answer_text(self, token: int) -> bool:
        """Whether a generated token is part of the answer's text (not a loc token, [SEG], </s> or a marker)."""
        return token not in self._not_text and token not in self.loc_bins and token not in self._seg_eos

    @functools.cached_property
    def _seg_eos(self) -> frozenset[int]:
        return frozenset((self.token_ids[SEG], self.token_ids[EOS]))

    def answer_text(self, text_ids: Sequence[int]) -> str:
        """The answer's text from its text tokens (:meth:`is_answer_text`), as :meth:`parse_answer` gives it."""
        text = _SPACES.sub(" ", self.tokenizer.decode(list(text_ids))).strip()
        return re.sub(r"\s+([;,.])", r"\1", text).strip(" ;")


__all__ = [
    "Answer",
    "LocatedPhrase",
    "PromptTooLong",
    "RSAProcessor",
    "SegRequest",
    "SPECIAL_TOKENS",
    "TASK_TAGS",
    "build_tokenizer",
    "extend_tokenizer",
    "loc_token",
]
