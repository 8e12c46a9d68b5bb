"""python -m training segment --config training/recipes/segment/tiny.toml [--set key=value ...] [--fresh]

GeoPix (Ou et al., GRSM 2025, after LISA) on the RSA model: the LLM (LoRA) answers
``<segment> segment PHRASE`` with ``LABEL [SEG]``; the hidden state that produces ``[SEG]`` is the
query of the mask decoder over the image's patch features, with GeoPix's class-wise learnable
memory as extra context (``class_memory_classes`` in the model config). Trained: the LoRA adapters,
the mask decoder and its memory, the bridge and the RSA tokens' embedding rows. Loss: the LM's
cross-entropy + ``mask_bce_weight`` x BCE + ``mask_dice_weight`` x Dice per ``[SEG]`` (RSAConfig;
LISA's 2.0 and 0.5).

Data: a COCO instances file with RLE or polygon masks (GeoPixInstruct-style, ``coco_json`` +
``coco_images``; training/data/formats/coco_masks.py). Each image gives

- one *referring* sample per annotation text (``description``/``caption``/``expression``/
  ``sentences``): ``segment TEXT`` -> ``CATEGORY [SEG]``, that instance's mask;
- one *category* sample per category present: ``segment CATEGORY`` -> ``CATEGORY [SEG]``, the
  union of its instances' masks (``samples`` chooses: both, referring, category).

Evaluation (``eval_json``, default the training file): the model generates its answer, each
generated ``[SEG]`` becomes a mask (their union, at the image's original size, threshold 0.5; no
``[SEG]``: an empty mask), scored against the target with mIoU (mean per-sample IoU) and cIoU
(cumulative intersection over cumulative union). The export (LoRA merged) is an RSA checkpoint the
engine serves (``backend = "rsa"``, task ``segment``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rs_assistant.core.protocol import Task
from rs_assistant.engine.models.rsa.processing_rsa import SEG
from training.data.formats import CocoMasks
from training.data.formats.coco_masks import annotation_texts
from training.eval.metrics import mask_ious
from training.loop import Runtime, map_batches, unwrap
from training.recipes.rsa_base import RSARecipe, RSARecipeConfig, generate, rgb

log = logging.getLogger(__name__)

SAMPLE_KINDS = ("both", "referring", "category")


@dataclass(frozen=True)
class SegmentConfig(RSARecipeConfig):
    """The segment recipe's settings (tiny.toml, paper.toml)."""

    coco_json: str = ""  # COCO instances file (RLE / polygon masks)
    coco_images: str = ""  # its image folder
    eval_json: str = ""  # "" evaluates on coco_json
    eval_images: str = ""  # "" : coco_images
    samples: str = "both"  # both | referring | category

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.coco_json or not self.coco_images:
            raise ValueError(
                "coco_json and coco_images are required: a COCO instances file with RLE/polygon masks and "
                "its image folder, e.g. --set coco_json=/data/GeoPixInstruct/train.json "
                "--set coco_images=/data/GeoPixInstruct/images"
            )
        if self.samples not in SAMPLE_KINDS:
            raise ValueError(f"samples must be one of {', '.join(SAMPLE_KINDS)}, got {self.samples!r}")


@dataclass(frozen=True)
class SegExample:
    index: int  # image index in the CocoMasks set
    prompt: str
    label: str
    annotation_ids: tuple[int, ...]


def seg_examples(data: CocoMasks, kinds: str) -> list[SegExample]:
    """The referring and category samples of every image, read from the parsed annotations (masks decode later)."""
    out = []
    for index, (image_id, _path) in enumerate(data.samples):
        annotations = data._annotations.get(image_id, [])  # noqa: SLF001 - parsed, not yet decoded
        by_category: dict[str, list[int]] = {}
        for ann in annotations:
            category = data.categories.get(ann["category_id"], str(ann["category_id"]))
            by_category.setdefault(category, []).append(int(ann.get("id", -1)))
            if kinds in ("both", "referring"):
                for text in annotation_texts(ann):
                    out.append(SegExample(index, text, category, (int(ann.get("id", -1)),)))
        if kinds in ("both", "category"):
            for category, ids in by_category.items():
                out.append(SegExample(index, category, category, tuple(ids)))
    return out


def target_mask(data: CocoMasks, example: SegExample) -> tuple[np.ndarray, np.ndarray]:
    """(image H x W x 3, the union of the example's instance masks H x W)."""
    sample = data.sample(example.index)
    wanted = set(example.annotation_ids)
    width, height = sample.size
    mask = np.zeros((height, width), dtype=bool)
    for instance in sample.instances:
        if instance.annotation_id in wanted:
            mask |= instance.mask
    return rgb(sample.image()), mask


class SegmentRecipe(RSARecipe):
    name = "segment"
    run_keys = RSARecipe.run_keys + ("coco_json", "samples", "max_length")
    config: SegmentConfig

    def __init__(self, config: SegmentConfig) -> None:
        super().__init__(config)
        self.data = CocoMasks(config.coco_json, config.coco_images)
        self.train_examples = seg_examples(self.data, config.samples)
        if not self.train_examples:
            raise ValueError(
                f"{config.coco_json}: no annotation to learn from ({len(self.data)} images, none with a "
                f"mask{' and a referring text' if config.samples == 'referring' else ''}); expected COCO "
                "annotations with segmentations"
            )

    def check_model(self, model) -> None:
        if model.mask_decoder is None:
            raise ValueError("the model has no mask decoder")

    def batches(self, start_step: int, runtime: Runtime) -> Iterator[dict[str, Any]]:
        examples, processor, data = self.train_examples, self.processor, self.data

        def collate(indices: list[int], step: int) -> dict:
            texts, images, masks = [], [], []
            for index in indices:
                example = examples[index]
                image, mask = target_mask(data, example)
                texts.append(processor.format_prompt(Task.SEGMENT, example.prompt, answer=f"{example.label} {SEG}"))
                images.append(image)
                masks.append([mask])
            return self.encode(texts, images, masks)

        return map_batches(self.config, start_step, runtime, len(examples), collate)

    def evaluate(self, model, runtime: Runtime) -> dict[str, float]:
        c, processor = self.config, self.processor
        rsa = unwrap(model).model
        if c.eval_json:
            data = CocoMasks(c.eval_json, c.eval_images or c.coco_images)
            examples = seg_examples(data, c.samples)
        else:
            data, examples = self.data, self.train_examples
        examples = examples[: c.eval_count] if c.eval_count else examples
        predictions, targets = [], []
        self.examples: dict[str, str] = {}
        for start in range(0, len(examples), c.eval_batch_size):
            part = examples[start : start + c.eval_batch_size]
            pairs = [target_mask(data, e) for e in part]
            texts = [processor.format_prompt(Task.SEGMENT, e.prompt) for e in part]
            output, visual = generate(
                rsa, processor, texts, [p[0] for p in pairs], c.eval_max_new_tokens, runtime.device, hidden_states=True
            )
            states, samples, _steps = rsa.generated_seg_states(output)
            logits = rsa.predict_masks(states, visual, samples) if len(samples) else None
            for b, (example, (_image, mask)) in enumerate(zip(part, pairs)):
                predicted = np.zeros_like(mask)
                if logits is not None and (samples == b).any():
                    mine = logits[samples == b][:, None].float()
                    probs = torch.sigmoid(F.interpolate(mine, size=mask.shape, mode="bilinear"))[:, 0]
                    predicted = (probs > 0.5).any(dim=0).cpu().numpy()
                predictions.append(predicted)
                targets.append(mask)
                if len(self.examples) < 20:
                    self.examples[example.prompt] = processor.decode(output.sequences[b].tolist())
        return mask_ious(predictions, targets) if targets else {}


def run(config: dict[str, Any], fresh: bool, stop=None):
    """The command line's entry: config dict -> a finished (or stopped) run."""
    from training.loop import train

    return train(SegmentRecipe(SegmentConfig.from_dict(config)), fresh=fresh, stop=stop)
