"""Florence-2 from a local transformers-native checkpoint: caption, ground and segment.

Models file::

    [models.florence]
    backend = "florence2"
    path = "/models/Florence-2-large"   # a transformers-native folder (model_type "florence2")
    caption = "detailed"                # optional: brief | detailed | more_detailed

Florence-2 is steered by task tokens rather than free prompts:

- caption: ``<CAPTION>``, ``<DETAILED_CAPTION>`` or ``<MORE_DETAILED_CAPTION>``, from the models
  file's ``caption`` unless the prompt asks otherwise ("briefly", "in detail", "a paragraph") or
  is itself one of the three tokens;
- ground: ``<CAPTION_TO_PHRASE_GROUNDING>`` with the phrase the prompt asks for, or ``<OD>``
  (every object it knows) when the prompt is empty or asks for objects in general;
- segment: ``<REFERRING_EXPRESSION_SEGMENTATION>`` with the phrase; its polygons are rasterised
  into one mask of the window's size.

Answers are ``<loc_N>`` tokens, 1000 bins of the image side (boxes.parse_florence2_boxes and
parse_florence2_polygons), so they map onto the window whatever size the processor resized it to.
The original microsoft/Florence-2-* folders run remote code and are refused with a hint; their
transformers-native conversions (e.g. florence-community/Florence-2-base) load here.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from affine import Affine
from rasterio.features import rasterize
from transformers import (
    AutoProcessor,
    Florence2ForConditionalGeneration,
    ProcessorMixin,
    StoppingCriteriaList,
)

from rs_assistant.core.protocol import ErrorCode, FeatureKind, ProtocolError, Task
from rs_assistant.engine.backends import boxes
from rs_assistant.engine.backends.base import Backend, BackendCall, BackendResult, Detection
from rs_assistant.engine.backends.hf import (
    AnyCancel,
    CancelCriteria,
    cancelled,
    checkpoint_folder,
    load_failed,
    load_model,
)

log = logging.getLogger(__name__)

CAPTION_TASKS = {
    "brief": "<CAPTION>",
    "detailed": "<DETAILED_CAPTION>",
    "more_detailed": "<MORE_DETAILED_CAPTION>",
}
GROUNDING = "<CAPTION_TO_PHRASE_GROUNDING>"
DETECTION = "<OD>"
SEGMENTATION = "<REFERRING_EXPRESSION_SEGMENTATION>"

_BRIEF = re.compile(r"\b(brief(ly)?|short|one sentence|concise(ly)?)\b", re.IGNORECASE)
_MORE = re.compile(r"\b(paragraph|more detail(ed)?|in depth|thorough(ly)?|everything)\b", re.IGNORECASE)
_DETAIL = re.compile(r"\bdetail(ed|s)?\b", re.IGNORECASE)
#: Grounding prompts that ask for no particular object: Florence-2 detects everything it knows.
GENERIC_TARGETS = frozenset({"", "object", "objects", "all objects", "everything", "anything", "things", "all"})
_SPECIAL = re.compile(r"</?s>|<pad>")
_TAG = re.compile(r"<[^<>]*>")


class Florence2Backend(Backend):
    name: ClassVar[str] = "florence2"
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.CAPTION, Task.GROUND, Task.SEGMENT})

    # Set by load().
    processor: ProcessorMixin
    model: Florence2ForConditionalGeneration
    caption_task: str  # the caption task token when the prompt does not choose one
    context: int  # BART's positions, in tokens, for the image tokens plus the prompt

    def load(self) -> None:
        path = checkpoint_folder(self, {"florence2"})
        if "auto_map" in json.loads((path / "config.json").read_text("utf-8")):
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': checkpoint folder {path} is an original Florence-2 release that needs "
                "remote code, which the engine never runs; use its transformers-native conversion "
                "(e.g. florence-community/Florence-2-base or -large)",
            )
        caption = str(self.config.get("caption", "detailed"))
        if caption not in CAPTION_TASKS:
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': caption = {caption!r} in the models file; use one of "
                f"{', '.join(CAPTION_TASKS)}",
            )
        try:
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # transformers raises many types; all mean the same to the caller
            raise load_failed(self, path, exc) from exc
        self.model = load_model(self, Florence2ForConditionalGeneration, path)
        self.caption_task = CAPTION_TASKS[caption]
        self.context = int(self.model.config.text_config.max_position_embeddings)
        log.info("model '%s': loaded Florence-2 from %s on %s", self.model_name, path, self.device)

    def run(self, call: BackendCall) -> BackendResult:
        self.check_task(call.task)
        self.ensure_loaded()
        task, phrase = self._task_prompt(call)
        inputs = self.processor(text=task + phrase, images=np.asarray(call.images[0]), return_tensors="pt")
        new_tokens = self._generate(inputs, call)
        if call.cancel.is_set():
            raise cancelled(self)
        return self._answer(call, new_tokens, phrase)

    def run_batch(self, calls: Sequence[BackendCall]) -> list[BackendResult]:
        """The tiles of a batch job in one ``generate``: their windows and prompts stacked (prompts of different
        lengths padded, the padding masked), each answer the one :meth:`run` gives its call alone. Calls that differ
        in their token limit are answered one at a time. A batch too large for the GPU is split (``in_batches``)."""
        if not calls:
            return []
        for call in calls:
            self.check_task(call.task)
        self.ensure_loaded()
        if len({call.options.max_new_tokens for call in calls}) > 1:
            return super().run_batch(calls)
        return self.in_batches(calls, self._run_together)

    def _run_together(self, calls: Sequence[BackendCall]) -> list[BackendResult]:
        if len(calls) == 1:
            return [self.run(calls[0])]
        prompts = [self._task_prompt(call) for call in calls]
        inputs = self.processor(
            text=[task + phrase for task, phrase in prompts],
            images=[np.asarray(call.images[0]) for call in calls],
            return_tensors="pt",
            padding=True,
        )
        rows = self._generate(inputs, calls[0], cancel=AnyCancel(calls))
        if any(call.cancel.is_set() for call in calls):
            raise cancelled(self)
        pad = self.processor.tokenizer.pad_token_id
        return [
            self._answer(call, row[row != pad] if pad is not None else row, phrase)
            for call, row, (_, phrase) in zip(calls, rows, prompts)
        ]

    def _answer(self, call: BackendCall, new_tokens: torch.Tensor, phrase: str) -> BackendResult:
        """The result of ``call`` from the decoder's tokens."""
        raw = self.processor.batch_decode(new_tokens[None], skip_special_tokens=False)[0]
        height, width = call.images[0].shape[:2]
        if call.task is Task.CAPTION:
            return BackendResult(text=_SPECIAL.sub("", raw).strip())
        if call.task is Task.GROUND:
            detections = self._parse_boxes(raw, (width, height), phrase)
        else:
            detections = self._parse_mask(raw, (width, height), phrase)
        return BackendResult(text=_summary(detections), detections=detections)

    def _task_prompt(self, call: BackendCall) -> tuple[str, str]:
        """The task token and the phrase that follows it (empty for tasks without input)."""
        prompt = call.prompt.strip()
        if call.task is Task.CAPTION:
            if prompt in CAPTION_TASKS.values():
                return prompt, ""
            if _BRIEF.search(prompt):
                return CAPTION_TASKS["brief"], ""
            if _MORE.search(prompt):
                return CAPTION_TASKS["more_detailed"], ""
            if _DETAIL.search(prompt):
                return CAPTION_TASKS["detailed"], ""
            return self.caption_task, ""
        phrase = _TAG.sub("", boxes.target_phrase(prompt)).strip()  # a task token in it would confuse the processor
        if call.task is Task.SEGMENT:
            if not phrase:
                raise ProtocolError(
                    ErrorCode.INVALID_VALUE, "segment with Florence-2 needs a prompt naming what to segment"
                )
            return SEGMENTATION, phrase
        if phrase.lower() in GENERIC_TARGETS:
            return DETECTION, ""
        return GROUNDING, phrase

    def _generate(
        self, inputs: dict[str, torch.Tensor], call: BackendCall, cancel: CancelCriteria | AnyCancel | None = None
    ) -> torch.Tensor:
        """Generation with the checkpoint's settings (beam search); returns the decoder's tokens: one row for one
        window, a batch x tokens tensor (shorter answers padded) for several."""
        length = int(inputs["input_ids"].shape[1])
        if length > self.context:
            raise ProtocolError(
                ErrorCode.PROMPT_TOO_LONG,
                f"model '{self.model_name}': the prompt takes {length} tokens with the image; its context is "
                f"{self.context}",
            )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        cancel = cancel or CancelCriteria(call.cancel)
        with torch.inference_mode():
            if len(inputs["pixel_values"]) > 1 and not self.device.startswith("cuda"):
                inputs = self._encoded(inputs, cancel)
            output = self.model.generate(
                **inputs,
                max_new_tokens=min(call.options.max_new_tokens, self.context - 1),
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([cancel]),
            )
        return output[0].cpu() if output.shape[0] == 1 else output.cpu()

    def _encoded(self, inputs: dict[str, torch.Tensor], cancel: CancelCriteria | AnyCancel) -> dict[str, torch.Tensor]:
        """A batch's inputs to ``generate`` as the language encoder's outputs, with the vision tower run one window
        at a time: on a CPU, its cost per window grows with the batch (13% at 4 windows of 768 x 768, memory
        traffic), while the decoder's steps gain from the batch. The same encoder outputs as ``generate`` makes."""
        model = self.model.model
        ids, pixels = inputs["input_ids"], inputs["pixel_values"]
        features = []
        for i in range(len(pixels)):
            if cancel.is_set():
                raise cancelled(self)
            features.append(model.get_image_features(pixels[i : i + 1]).pooler_output)
        image = torch.cat(features)
        embeds = self.model.get_input_embeddings()(ids)
        where = self.model.get_placeholder_mask(ids, inputs_embeds=embeds, image_features=image)
        embeds = embeds.masked_scatter(where, image.to(embeds.dtype))
        mask = inputs["attention_mask"]
        return {"encoder_outputs": model.language_model.encoder(inputs_embeds=embeds, attention_mask=mask),
                "attention_mask": mask}  # fmt: skip

    def _parse_boxes(self, text: str, window: boxes.Size, phrase: str) -> list[Detection]:
        """``<loc_N>`` boxes as window-pixel detections; unlabelled ones take ``phrase``.

        Florence-2 gives no confidence, so every score is 1.
        """
        return [
            Detection(kind=FeatureKind.BOX, label=p.label or phrase or "object", score=1.0, box=p.box)
            for p in boxes.parse_florence2_boxes(text, window)
        ]

    def _parse_mask(self, text: str, window: boxes.Size, phrase: str) -> list[Detection]:
        """The polygons of a referring segmentation, rasterised into one window-sized mask."""
        polygons = boxes.parse_florence2_polygons(text, window)
        if not polygons:
            return []
        mask = polygon_mask([p.points for p in polygons], window)
        if not mask.any():
            return []
        rows, cols = np.nonzero(mask)
        box = (float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1))
        label = next((p.label for p in polygons if p.label), phrase)
        return [Detection(kind=FeatureKind.MASK, label=label, score=1.0, box=box, mask=mask)]


def polygon_mask(rings: list[tuple[tuple[float, float], ...]], window: boxes.Size) -> np.ndarray:
    """Rings in window pixels filled into one H x W boolean mask (their union).

    A pixel is in when its centre (col + 0.5, row + 0.5) is inside a ring: GDAL's rule, the
    one the engine uses to polygonise masks back.
    """
    width, height = window
    shapes = [({"type": "Polygon", "coordinates": [[*ring, ring[0]]]}, 1) for ring in rings]
    return rasterize(shapes, out_shape=(height, width), transform=Affine.identity(), fill=0, dtype="uint8").astype(bool)


def _summary(detections: list[Detection]) -> str:
    if not detections:
        return "nothing found"
    counts = Counter(d.label for d in detections)
    return ", ".join(f"{n} x {label}" for label, n in counts.items())
