"""Qwen2.5-VL from a local transformers checkpoint: caption, ground, chat and change.

Models file::

    [models.qwen]
    backend = "qwen2_5_vl"
    path = "/models/Qwen2.5-VL-3B-Instruct"
    max_pixels = 1003520   # optional: each window is resized to at most this many pixels
    min_pixels = 3136      # optional

The window is resized as the real model expects (Qwen's ``smart_resize``: both sides multiples of
patch size x merge size, the area between ``min_pixels`` and ``max_pixels``). Qwen2.5-VL answers
grounding in absolute pixels of that resized image, so boxes are scaled back by window size /
resized size, where the resized size is read from the processor's ``image_grid_thw`` (x patch
size). Finetunes that answer in Qwen2-VL's 0-1000 ``<|box_start|>`` form are read too.

A chat may have no image (the conversation alone) and may be sampled (``call.decoding``); its answer
is watched token by token for stop strings and streaming (``call.watch``), and reports its token
counts and whether the length limit cut it. A conversation so long that it cannot fit the context
whatever its tokens is refused before it is tokenized.

The prompt is built from the checkpoint's chat template, tokenizer and image processor directly,
with each ``<|image_pad|>`` expanded to its image's token count exactly as ``Qwen2_5_VLProcessor``
does. That class is not used because it also requires a video processor, and transformers' video
processors need torchvision, which the engine does not install.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    BaseImageProcessor,
    LogitsProcessorList,
    PreTrainedTokenizerBase,
    Qwen2_5_VLForConditionalGeneration,
    StoppingCriteriaList,
)

from rs_assistant.core.protocol import ErrorCode, FeatureKind, ProtocolError, Role, Task
from rs_assistant.engine.backends import boxes
from rs_assistant.engine.backends.base import Backend, BackendCall, BackendResult, Detection
from rs_assistant.engine.backends.hf import (
    CHARS_PER_TOKEN_BOUND,
    AnyCancel,
    WatchCriteria,
    cancelled,
    checkpoint_folder,
    finish_reason,
    load_failed,
    load_model,
    max_token_chars,
    sampler,
    written_tokens,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 1280 * 28 * 28  # Qwen's recommended budget: at most 1280 visual tokens per image
DEFAULT_MIN_PIXELS = 4 * 28 * 28

CAPTION_PROMPT = "Describe this remote sensing image in detail."
GROUND_PROMPT = (
    "Locate every {target} in the image and output their bbox coordinates in JSON format, "
    'as [{{"bbox_2d": [x1, y1, x2, y2], "label": "{target}"}}].'
)
CHANGE_PROMPT = "Picture 1 was taken before and Picture 2 after, over the same area. {question}"
CHANGE_QUESTION = "Describe the differences between them: what was built, removed or changed?"


@dataclass
class Prepared:
    """The model inputs for one call and the size each image was resized to."""

    inputs: dict[str, torch.Tensor]
    resized: list[boxes.Size]  # (width, height) of each image as the model saw it

    @property
    def length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


class Qwen25VLBackend(Backend):
    name: ClassVar[str] = "qwen2_5_vl"
    tasks: ClassVar[frozenset[Task]] = frozenset({Task.CAPTION, Task.GROUND, Task.CHAT, Task.CHANGE})
    chat_without_images: ClassVar[bool] = True
    samples: ClassVar[bool] = True

    # Set by load().
    tokenizer: PreTrainedTokenizerBase
    image_processor: BaseImageProcessor
    model: Qwen2_5_VLForConditionalGeneration
    image_token: str  # the placeholder the chat template writes per image, "<|image_pad|>"
    context: int  # the language model's context, in tokens
    max_pixels: int
    min_pixels: int

    def load(self) -> None:
        path = checkpoint_folder(self, {"qwen2_5_vl"})
        try:
            self.max_pixels = int(self.config.get("max_pixels", DEFAULT_MAX_PIXELS))
            self.min_pixels = int(self.config.get("min_pixels", DEFAULT_MIN_PIXELS))
        except (TypeError, ValueError):
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': max_pixels and min_pixels must be whole numbers",
            ) from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # transformers raises many types; all mean the same to the caller
            raise load_failed(self, path, exc) from exc
        self.model = load_model(self, Qwen2_5_VLForConditionalGeneration, path)
        if self.tokenizer.chat_template is None and (path / "chat_template.json").is_file():
            # Early releases kept the template only in the processor's chat_template.json.
            self.tokenizer.chat_template = json.loads((path / "chat_template.json").read_text("utf-8"))["chat_template"]
        if self.tokenizer.chat_template is None:
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{self.model_name}': checkpoint folder {path} has no chat template "
                "(chat_template.jinja, or chat_template in tokenizer_config.json)",
            )
        self.image_token = self.tokenizer.convert_ids_to_tokens(self.model.config.image_token_id)
        self.context = int(self.model.config.text_config.max_position_embeddings)
        log.info("model '%s': loaded Qwen2.5-VL from %s on %s", self.model_name, path, self.device)

    def run(self, call: BackendCall) -> BackendResult:
        self.check_task(call.task)
        self.ensure_loaded()
        if not call.images and call.task is not Task.CHAT:
            raise ProtocolError(ErrorCode.BAD_IMAGE_COUNT, f"{call.task.value} needs an image")
        prepared = self._prepare(call)
        new_tokens = self._generate(prepared, call)
        if call.cancel.is_set():
            raise cancelled(self)
        return self._result(call, prepared, new_tokens)

    def run_batch(self, calls: Sequence[BackendCall]) -> list[BackendResult]:
        """The tiles of a batch job (caption or ground, one image each, greedy) in one ``generate``: their prompts
        padded on the left to one length (the padding masked, the positions taken from the mask as transformers
        does), each answer the one :meth:`run` gives its call alone. Other calls are answered one at a time; a
        batch too large for the GPU is split (``in_batches``)."""
        if not calls:
            return []
        for call in calls:
            self.check_task(call.task)
        self.ensure_loaded()
        together = all(
            call.task in (Task.CAPTION, Task.GROUND)
            and len(call.images) == 1
            and call.decoding.greedy
            and not call.watch.wants_updates
            for call in calls
        )
        if not together or len({call.options.max_new_tokens for call in calls}) > 1:
            return super().run_batch(calls)
        return self.in_batches(calls, self._run_together)

    def _run_together(self, calls: Sequence[BackendCall]) -> list[BackendResult]:
        if len(calls) == 1:
            return [self.run(calls[0])]
        prepared = [self._prepare(call) for call in calls]
        limits = {self._max_new_tokens(p, call) for p, call in zip(prepared, calls)}
        if len(limits) > 1 or min(limits) < 1:  # the context, not the request, limits one of them: alone
            return [self.run(call) for call in calls]
        length = max(p.length for p in prepared)
        pad = self.model.generation_config.pad_token_id
        pad = pad if isinstance(pad, int) else self.tokenizer.pad_token_id or 0

        def left(key: str, value: int) -> torch.Tensor:
            return torch.cat(
                [torch.nn.functional.pad(p.inputs[key], (length - p.length, 0), value=value) for p in prepared]
            )

        inputs = {
            "input_ids": left("input_ids", pad),
            "attention_mask": left("attention_mask", 0),
            "mm_token_type_ids": left("mm_token_type_ids", 0),
            "pixel_values": torch.cat([p.inputs["pixel_values"] for p in prepared]),
            "image_grid_thw": torch.cat([p.inputs["image_grid_thw"] for p in prepared]),
        }
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=limits.pop(),
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([AnyCancel(calls)]),
            )
        if any(call.cancel.is_set() for call in calls):
            raise cancelled(self)
        rows = output[:, length:].cpu()
        return [
            self._result(call, p, torch.tensor(written_tokens(row.tolist(), self._eos), dtype=row.dtype))
            for call, p, row in zip(calls, prepared, rows)
        ]

    def _result(self, call: BackendCall, prepared: Prepared, new_tokens: torch.Tensor) -> BackendResult:
        """The answer of ``call`` from the tokens the model wrote."""
        text = self._text(new_tokens.tolist())
        if call.task is not Task.GROUND:
            written = written_tokens(new_tokens.tolist(), self._eos)
            return BackendResult(
                text=text,
                prompt_tokens=prepared.length,
                completion_tokens=len(written),
                finish_reason=finish_reason(
                    written, self._eos, self._max_new_tokens(prepared, call), call.watch.stopped
                ),
            )
        raw = self.tokenizer.decode(new_tokens, skip_special_tokens=False)
        height, width = call.images[0].shape[:2]
        label = boxes.target_phrase(call.prompt) or "object"
        return BackendResult(text=text, detections=self._parse_boxes(raw, (width, height), prepared.resized[0], label))

    # --- prompt ---------------------------------------------------------------------------------

    def _instruction(self, call: BackendCall) -> str:
        prompt = call.prompt.strip()
        if call.task is Task.GROUND:
            return GROUND_PROMPT.format(target=boxes.target_phrase(prompt) or "object")
        if call.task is Task.CHANGE:
            return CHANGE_PROMPT.format(question=prompt or CHANGE_QUESTION)
        return prompt or CAPTION_PROMPT

    def _messages(self, call: BackendCall) -> list[dict[str, Any]]:
        """History, then the instruction; the images open the conversation's first user turn."""
        messages: list[dict[str, Any]] = [{"role": m.role.value, "content": m.content} for m in call.history]
        messages.append({"role": Role.USER.value, "content": self._instruction(call)})
        if call.images:
            first_user = next(m for m in messages if m["role"] == Role.USER.value)
            first_user["content"] = [{"type": "image"} for _ in call.images] + [
                {"type": "text", "text": first_user["content"]}
            ]
        return messages

    def _prepare(self, call: BackendCall) -> Prepared:
        self._check_size(call)
        text = self.tokenizer.apply_chat_template(
            self._messages(call), add_generation_prompt=True, tokenize=False, add_vision_id=len(call.images) > 1
        )
        if not call.images:
            return self._text_only(text)
        try:
            vision = self.image_processor(
                images=[np.asarray(image) for image in call.images],
                size={"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
                return_tensors="pt",
            )
        except ValueError as exc:  # smart_resize refuses sides more than 200 times apart
            raise ProtocolError(
                ErrorCode.BAD_EXTENT, f"model '{self.model_name}' cannot take this region: {exc}"
            ) from None
        grid = vision["image_grid_thw"]
        parts = text.split(self.image_token)
        if len(parts) != len(call.images) + 1:
            raise ProtocolError(ErrorCode.INVALID_VALUE, f"the prompt or history may not contain {self.image_token}")
        counts = (grid.prod(-1) // self.image_processor.merge_size**2).tolist()
        text = parts[0] + "".join(self.image_token * n + part for n, part in zip(counts, parts[1:]))
        encoded = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        input_ids = encoded["input_ids"]
        inputs = {
            "input_ids": input_ids,
            "attention_mask": encoded["attention_mask"],
            "mm_token_type_ids": (input_ids == self.model.config.image_token_id).int(),
            "pixel_values": vision["pixel_values"].to(self.model.dtype),
            "image_grid_thw": grid,
        }
        patch = self.image_processor.patch_size
        resized = [(int(w) * patch, int(h) * patch) for _, h, w in grid.tolist()]
        return Prepared(inputs={k: v.to(self.device) for k, v in inputs.items()}, resized=resized)

    def _text_only(self, text: str) -> Prepared:
        """A chat without image: the conversation's tokens alone."""
        if self.image_token in text:
            raise ProtocolError(ErrorCode.INVALID_VALUE, f"the prompt or history may not contain {self.image_token}")
        encoded = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        inputs = {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "mm_token_type_ids": torch.zeros_like(encoded["input_ids"], dtype=torch.int),
        }
        return Prepared(inputs={k: v.to(self.device) for k, v in inputs.items()}, resized=[])

    def _check_size(self, call: BackendCall) -> None:
        """PROMPT_TOO_LONG, before anything is tokenized, for a conversation too long to fit the context whatever
        its tokens (more characters than the context times the longest token, with a margin)."""
        chars = len(call.prompt) + sum(len(m.content) for m in call.history)
        if chars > self.context * CHARS_PER_TOKEN_BOUND * self._max_token_chars:
            raise self._too_long(f"{chars} characters")

    @functools.cached_property
    def _max_token_chars(self) -> int:
        return max_token_chars(self.tokenizer)

    def _too_long(self, size: str) -> ProtocolError:
        return ProtocolError(
            ErrorCode.PROMPT_TOO_LONG,
            f"model '{self.model_name}': the prompt takes {size} with the image(s); its context is "
            f"{self.context}. Shorten the history or the prompt, or choose a smaller region.",
        )

    # --- generation -----------------------------------------------------------------------------

    @functools.cached_property
    def _eos(self) -> frozenset[int]:
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
        return frozenset([*ids, self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else ids)

    def _text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def _max_new_tokens(self, prepared: Prepared, call: BackendCall) -> int:
        return min(call.options.max_new_tokens, self.context - prepared.length)

    def _generate(self, prepared: Prepared, call: BackendCall) -> torch.Tensor:
        """Greedy (or, for a chat, ``call.decoding``'s sampled) generation; returns the new token ids. Stops at the
        next token once cancelled or once ``call.watch`` sees a stop string (it gets the text after every token
        when it wants it)."""
        if self.context - prepared.length < 1:
            raise self._too_long(f"{prepared.length} tokens")
        watch = WatchCriteria(call.cancel, call.watch, render=self._text, eos=self._eos, start=prepared.length)
        processors = sampler(call.decoding, self.device)
        extra = {"logits_processor": LogitsProcessorList(processors)} if processors else {}
        with torch.inference_mode():
            output = self.model.generate(
                **prepared.inputs,
                max_new_tokens=self._max_new_tokens(prepared, call),
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([watch]),
                **extra,
            )
        return output[0, prepared.length :].cpu()

    # --- answer ---------------------------------------------------------------------------------

    def _parse_boxes(self, text: str, window: boxes.Size, resized: boxes.Size, label: str) -> list[Detection]:
        """Boxes in ``text`` as window-pixel detections; unlabelled boxes take ``label``.

        Qwen2.5-VL's JSON is in pixels of the ``resized`` image; a ``<|box_start|>`` answer is
        Qwen2-VL's 0-1000. Generative models give no confidence, so every score is 1.
        """
        if "<|box_start|>" in text:
            parsed = boxes.parse_qwen2_boxes(text, window)
        else:
            parsed = boxes.parse_qwen25_boxes(text, window, resized)
        return [Detection(kind=FeatureKind.BOX, label=p.label or label, score=1.0, box=p.box) for p in parsed]
