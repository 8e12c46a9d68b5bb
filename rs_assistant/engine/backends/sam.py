"""Segment Anything (SAM and SAM 2.1) backend: box prompts to masks, with transformers' SamModel or Sam2Model.

Models file::

    [models.sam]
    backend = "sam"
    path = "/models/sam-vit-base"      # a transformers SAM or SAM 2 folder, e.g. facebook/sam-vit-base
    box_batch_size = 16                # optional: boxes decoded per forward pass
    embedding_cache = 4                # optional: windows whose image embedding is kept (0: none)

The folder is what ``SamModel.save_pretrained`` and ``SamProcessor.save_pretrained`` write:
``config.json`` (model_type "sam"), the weights (``model.safetensors`` or ``pytorch_model.bin``,
possibly sharded) and the processor's ``preprocessor_config.json`` or ``processor_config.json``.

SAM 2 / 2.1 folders (config.json model_type "sam2", or "sam2_video" as in facebook/sam2.1-hiera-*,
whose image part ``Sam2Model`` loads, ignoring the video memory weights) need ``config.json`` and the
weights; ``preprocessor_config.json`` is read for the normalisation when present. transformers'
``Sam2ImageProcessor`` needs torchvision, which the engine does not install (it would have to match
torch's CUDA build), so this backend does that processor's few steps itself, as it does them: the
window is resized (bilinear, antialiased, rounded back to 8 bits) to the model's square input
(1024 x 1024, *without* keeping the aspect ratio), scaled to [0, 1] and normalised (ImageNet mean
and std); box corners are scaled by the same per-axis factors; the low-resolution mask logits are
resized (bilinear) straight back to the window's size and thresholded at 0.

Two ways in:

- ``segment_boxes(image, boxes)``: what the engine calls to chain any grounding model into SAM
  for the ``segment`` task. Boxes are (x0, y0, x1, y1) in pixels of ``image``; the answer is one
  H x W boolean mask per box, in the same order.
- the ``segment`` task on its own: the prompt may hold box prompts written as
  ``[x0, y0, x1, y1]`` in window pixels (any number of them, e.g. "roof [10, 20, 80, 95]");
  without one, a single box covering the whole window is the prompt. The text left once the
  boxes are taken out becomes the features' label ("object" if none). Every box gives one
  mask feature; the engine then drops those under ``options.score_threshold``, as for any
  ``segment``. A box prompt with no area inside the window is refused (BAD_REQUEST).

The image runs through the vision encoder once, and its embedding is kept for the last
``embedding_cache`` windows (keyed by their pixels), so that every later prompt on the same window
(the next turn of a chat, the boxes a grounding model found, a second box drawn) costs only the
prompt encoder and the mask decoder, a few milliseconds, instead of the encoder's seconds on a CPU;
the boxes go through the prompt encoder and the
mask decoder in chunks of ``box_batch_size``, checking for cancellation between chunks. SAM is
asked for a single mask per box (``multimask_output=False``), as its authors do for box prompts:
a box is not ambiguous the way a single click is. The score is the mask decoder's predicted IoU,
clamped to [0, 1]. The processor resizes the window to the model's longest side (1024 for the
public checkpoints) and pads it to a square; masks are cropped back to the resized size and
then resized to the window's own size, so they line up pixel for pixel with the window.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Sam2Model, SamModel, SamProcessor

from rs_assistant.core.protocol import ErrorCode, FeatureKind, ProtocolError, Task
from rs_assistant.engine.backends.base import Backend, BackendCall, BackendResult, Detection
from rs_assistant.engine.backends.hf import check_memory, load_failed, weight_files
from rs_assistant.engine.device import attn_implementation, torch_dtype

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

#: config.json model_types this backend runs: SAM (SamModel) and SAM 2 / 2.1 (Sam2Model).
SAM_TYPES = frozenset({"sam"})
SAM2_TYPES = frozenset({"sam2", "sam2_video"})
#: Sam2ImageProcessor's defaults (transformers/models/sam2/image_processing_sam2.py), used when the
#: folder has no preprocessor_config.json saying otherwise.
SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
DEFAULT_BOX_BATCH_SIZE = 16
DEFAULT_EMBEDDING_CACHE = 4

_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
BOX_RE = re.compile(r"\[" + ",".join([_NUMBER] * 4) + r"\]")


def parse_box_prompt(prompt: str) -> tuple[list[Box], str]:
    """The ``[x0, y0, x1, y1]`` boxes written in ``prompt``, and the text around them."""
    boxes = [(float(a), float(b), float(c), float(d)) for a, b, c, d in (m.groups() for m in BOX_RE.finditer(prompt))]
    rest = " ".join(BOX_RE.sub(" ", prompt).split()).strip(" ,;:.")
    return boxes, rest


def clip_box(box: Sequence[float], width: int, height: int) -> Box | None:
    """``box`` clipped to the window, or None if nothing of it (with positive area) is inside."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite((x0, y0, x1, y1))):
        return None
    x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
    y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


class SamBackend(Backend):
    name = "sam"
    tasks = frozenset({Task.SEGMENT})

    model: SamModel | Sam2Model
    processor: SamProcessor | None  # None for SAM 2 (see the module docstring)
    sam2: Sam2Input | None  # SAM 2's input size and normalisation; None for SAM
    dtype: torch.dtype
    box_batch_size: int

    def load(self) -> None:
        path = self.local_path()
        model_type = _check_folder(self.model_name, path)
        dtype = torch_dtype(self.device)
        check_memory(self, weight_files(path))
        try:
            if model_type in SAM2_TYPES:
                self.processor = None
                self.model = Sam2Model.from_pretrained(
                    path, local_files_only=True, dtype=dtype, attn_implementation=attn_implementation(self.device)
                )
                self.sam2 = Sam2Input.from_folder(path, self.model.config)
            else:
                self.processor = SamProcessor.from_pretrained(path, local_files_only=True)
                self.model = SamModel.from_pretrained(
                    path, local_files_only=True, dtype=dtype, attn_implementation=attn_implementation(self.device)
                )
                self.sam2 = None
        except Exception as exc:  # transformers raises many types; all mean the same to the caller
            raise load_failed(self, path, exc) from exc
        self.model.to(self.device).eval()
        self.dtype = dtype
        self.box_batch_size = _positive_int(self.model_name, self.config, "box_batch_size", DEFAULT_BOX_BATCH_SIZE)
        self.embedding_cache_size = _positive_int(
            self.model_name, self.config, "embedding_cache", DEFAULT_EMBEDDING_CACHE, minimum=0
        )
        self.embeddings: OrderedDict[bytes, Any] = OrderedDict()
        self.encoder_runs = 0  # how many windows went through the vision encoder (the rest came from the cache)
        kind = "SAM 2" if self.sam2 is not None else "SAM"
        log.info("loaded %s '%s' from %s on %s (%s)", kind, self.model_name, path, self.device, dtype)

    def run(self, call: BackendCall) -> BackendResult:
        self.check_task(call.task)
        self.ensure_loaded()
        image = call.images[0]
        height, width = image.shape[:2]
        prompt_boxes, label = parse_box_prompt(call.prompt)
        prompt_boxes_given = bool(prompt_boxes)  # a mask per given box is one object; the whole window's, not
        if not prompt_boxes:
            prompt_boxes = [(0.0, 0.0, float(width), float(height))]
        boxes = []
        for box in prompt_boxes:
            clipped = clip_box(box, width, height)
            if clipped is None:
                raise ProtocolError(
                    ErrorCode.INVALID_VALUE,
                    f"box prompt {list(box)} has no area inside the {width}x{height} window (x0, y0, x1, y1 in "
                    f"window pixels)",
                )
            boxes.append(clipped)
        masks, scores = self._segment(image, boxes, call.cancel)
        detections = [
            Detection(
                kind=FeatureKind.MASK,
                label=label or "object",
                score=score,
                box=box,
                mask=mask,
                one_object=prompt_boxes_given,
            )
            for box, mask, score in zip(boxes, masks, scores)
        ]
        return BackendResult(text=f"{len(detections)} mask(s)", detections=detections)

    def segment_boxes(
        self, image: np.ndarray, boxes: Sequence[Sequence[float]], cancel: threading.Event | None = None
    ) -> list[np.ndarray]:
        """One H x W bool mask per box (x0, y0, x1, y1 in pixels of ``image``), in order.

        Boxes are clipped to the window; a box with no area inside it gets an all-False mask.
        Raises ProtocolError(CANCELLED) if ``cancel`` is set between chunks of boxes.
        """
        self.ensure_loaded()
        height, width = image.shape[:2]
        clipped = [clip_box(box, width, height) for box in boxes]
        valid = [box for box in clipped if box is not None]
        masks, _ = self._segment(image, valid, cancel)
        found = iter(masks)
        return [next(found) if box is not None else np.zeros((height, width), dtype=bool) for box in clipped]

    def _segment(
        self, image: np.ndarray, boxes: Sequence[Box], cancel: threading.Event | None
    ) -> tuple[list[np.ndarray], list[float]]:
        """Masks and predicted IoUs for boxes already clipped to the window."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"SAM expects an H x W x 3 uint8 window, got {image.shape} {image.dtype}")
        if not boxes:
            return [], []
        if self.sam2 is not None:
            return self._segment_sam2(image, boxes, cancel)
        inputs = self.processor(
            images=image, input_boxes=[[list(b) for b in boxes]], input_data_format="channels_last", return_tensors="pt"
        )
        masks: list[np.ndarray] = []
        scores: list[float] = []
        with torch.inference_mode():
            embeddings = self._embedding(image, lambda: inputs["pixel_values"])
            for start in range(0, len(boxes), self.box_batch_size):
                if cancel is not None and cancel.is_set():
                    raise ProtocolError(ErrorCode.CANCELLED, "segmentation was cancelled")
                chunk = inputs["input_boxes"][:, start : start + self.box_batch_size].to(self.device, self.dtype)
                out = self.model(image_embeddings=embeddings, input_boxes=chunk, multimask_output=False)
                # pred_masks: (1, boxes, 1, h, w) low-resolution logits; iou_scores: (1, boxes, 1).
                window_masks = self.processor.post_process_masks(
                    [out.pred_masks[0].float().cpu()], inputs["original_sizes"], inputs["reshaped_input_sizes"]
                )[0]
                masks.extend(m[0].numpy() for m in window_masks)
                scores.extend(out.iou_scores[0, :, 0].float().clamp(0.0, 1.0).cpu().tolist())
        return masks, scores

    def _embedding(self, image: np.ndarray, pixels: Callable[[], torch.Tensor]) -> Any:
        """The vision encoder's output for ``image`` (``pixels()``: its model input), from the cache when the same
        window was seen lately."""
        key = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16, person=str(image.shape).encode()[:16])
        digest = key.digest()
        if digest in self.embeddings:
            self.embeddings.move_to_end(digest)
            return self.embeddings[digest]
        embedding = self.model.get_image_embeddings(pixels().to(self.device, self.dtype))
        self.encoder_runs += 1
        if self.embedding_cache_size:
            self.embeddings[digest] = embedding
            while len(self.embeddings) > self.embedding_cache_size:
                self.embeddings.popitem(last=False)
        return embedding

    def _segment_sam2(
        self, image: np.ndarray, boxes: Sequence[Box], cancel: threading.Event | None
    ) -> tuple[list[np.ndarray], list[float]]:
        """SAM 2: the same answer as ``_segment``, with Sam2ImageProcessor's steps done here."""
        assert self.sam2 is not None
        height, width = image.shape[:2]
        scale = torch.tensor([self.sam2.prompt_size / width, self.sam2.prompt_size / height] * 2, dtype=torch.float32)
        prompts = torch.tensor([list(b) for b in boxes], dtype=torch.float32) * scale
        masks: list[np.ndarray] = []
        scores: list[float] = []
        with torch.inference_mode():
            embeddings = self._embedding(image, lambda: self.sam2.pixels(image))  # type: ignore[union-attr]
            for start in range(0, len(boxes), self.box_batch_size):
                if cancel is not None and cancel.is_set():
                    raise ProtocolError(ErrorCode.CANCELLED, "segmentation was cancelled")
                chunk = prompts[None, start : start + self.box_batch_size].to(self.device, self.dtype)
                out = self.model(image_embeddings=embeddings, input_boxes=chunk, multimask_output=False)
                # pred_masks: (1, boxes, 1, h, w) low-resolution logits; iou_scores: (1, boxes, 1).
                logits = torch.nn.functional.interpolate(
                    out.pred_masks[0].float().cpu(), (height, width), mode="bilinear", align_corners=False
                )
                masks.extend(m[0].numpy() for m in logits > 0.0)
                scores.extend(out.iou_scores[0, :, 0].float().clamp(0.0, 1.0).cpu().tolist())
        return masks, scores


@dataclass(frozen=True)
class Sam2Input:
    """What SAM 2's image processor does to a window: size (height, width), scale, mean and std."""

    size: tuple[int, int]
    prompt_size: int  # the square frame box corners are given in (the prompt encoder's image_size)
    rescale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        bad = min(self.size) < 1 or self.prompt_size < 1 or min(self.std) <= 0
        if bad or len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"unusable SAM 2 input settings: {self}")

    @classmethod
    def from_folder(cls, path: Path, config: Any) -> Sam2Input:
        """The model's input size from its config; normalisation from preprocessor_config.json, else SAM 2's."""
        size = config.vision_config.backbone_config.image_size
        size = (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
        prompt = config.prompt_encoder_config.image_size
        prompt_size = int(prompt[0] if isinstance(prompt, (list, tuple)) else prompt)
        settings: dict[str, Any] = {}
        if (path / "preprocessor_config.json").is_file():
            settings = json.loads((path / "preprocessor_config.json").read_text(encoding="utf-8"))
        return cls(
            size=size,
            prompt_size=prompt_size,
            rescale=float(settings.get("rescale_factor", 1 / 255)),
            mean=tuple(float(v) for v in settings.get("image_mean", SAM2_MEAN)),  # type: ignore[arg-type]
            std=tuple(float(v) for v in settings.get("image_std", SAM2_STD)),  # type: ignore[arg-type]
        )

    def pixels(self, image: np.ndarray) -> torch.Tensor:
        """1 x 3 x H x W normalised float32 pixels of an H x W x 3 uint8 window."""
        chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        resized = torch.nn.functional.interpolate(chw, self.size, mode="bilinear", align_corners=False, antialias=True)
        resized = resized.round().clamp(0, 255)  # torchvision's resize of a uint8 image gives uint8
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (resized * self.rescale - mean) / std


def _check_folder(model_name: str, path: Path) -> str:
    """The folder's model_type; refuses, naming the path, a folder that is not a complete SAM or SAM 2 checkpoint."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProtocolError(
            ErrorCode.MODEL_LOAD_FAILED, f"model '{model_name}': cannot read {path / 'config.json'}: {exc}"
        ) from exc
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in SAM_TYPES | SAM2_TYPES:
        raise ProtocolError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"model '{model_name}': {path / 'config.json'} is for model_type {model_type!r}, the sam backend needs "
            f"{' or '.join(repr(t) for t in sorted(SAM_TYPES | SAM2_TYPES))}",
        )
    needed = [("weights", WEIGHT_FILES)] + ([("processor config", PROCESSOR_FILES)] if model_type in SAM_TYPES else [])
    for what, names in needed:
        if not any((path / name).exists() for name in names):
            raise ProtocolError(
                ErrorCode.MODEL_LOAD_FAILED,
                f"model '{model_name}': checkpoint folder {path} has no {what} (expected one of {', '.join(names)})",
            )
    return str(model_type)


def _positive_int(model_name: str, config: Mapping[str, Any], key: str, default: int, minimum: int = 1) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED, f"model '{model_name}': {key} must be {what}, got {value!r}")
    return value
