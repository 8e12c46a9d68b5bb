"""Image-text pairs for the clip recipe, from the published formats (training/data/formats), and the
evaluation sets: retrieval on a Karpathy split, zero-shot classes from a folder per class or a label list.

``data_format``:

- ``karpathy`` (RSICD, RSITMD, UCM-Captions, Sydney-Captions): ``data_root`` holds ``dataset_*.json``;
  one pair per image and step, its caption drawn from the image's five by ``(seed, step, index)``
  (GeoRSCLIP's fine-tuning on RSITMD/RSICD);
- ``skyscript``: ``skyscript_csv`` (rows ``filepath,title,...``) with images under ``data_root``;
- ``shards``: WebDataset tar shards (RS5M), ``shards`` a brace pattern; streamed, split over
  processes by shard.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from training.data.formats import DataFormatError, KarpathyCaptions, SkyScript, WebShards
from training.data.formats._common import listing, open_image

log = logging.getLogger(__name__)

FORMATS = ("karpathy", "skyscript", "shards")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


class Encoder:
    """Images and texts to the model's tensors: the checkpoint's own preprocessing and tokenizer,
    texts padded to the full context (so a batch does not depend on how it is split over processes)."""

    def __init__(self, image_processor: Any, tokenizer: Any, context_length: int) -> None:
        self.image_processor, self.tokenizer, self.context_length = image_processor, tokenizer, context_length

    def images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    def texts(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        tokens = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def pairs(self, images: Sequence[Image.Image], texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.images(images), **self.texts(texts)}


@dataclass
class PairSource:
    """Either a map-style set (``size`` and ``pair(index, rng)``) or a stream (``stream(epoch, rank, world)``)."""

    size: int | None
    pair: Callable[[int, np.random.Generator], tuple[Image.Image, str]] | None = None
    stream: Callable[[int, int, int], Iterator[tuple[Image.Image, str]]] | None = None


def pair_source(config: Any) -> PairSource:
    """The training pairs the config names; DataFormatError/ValueError saying what was found."""
    if config.data_format not in FORMATS:
        raise ValueError(f"data_format {config.data_format!r} is not one of {', '.join(FORMATS)}")
    if config.data_format == "karpathy":
        data = KarpathyCaptions(config.data_root, split=config.train_split)
        samples = data.samples
        if not samples:
            raise DataFormatError(f"{data.annotation}: split {config.train_split!r} has no images")

        def pair(index: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
            sample = samples[index]
            if not sample.captions:
                raise DataFormatError(f"{data.annotation}: image {sample.image_path.name} has no sentences")
            return sample.image(), sample.captions[int(rng.integers(len(sample.captions)))]

        return PairSource(len(samples), pair=pair)
    if config.data_format == "skyscript":
        if not config.skyscript_csv:
            raise ValueError(
                "data_format 'skyscript' needs skyscript_csv (a SkyScript_*.csv) and data_root (its images)"
            )
        data = SkyScript(config.skyscript_csv, config.data_root, caption_column=config.caption_column)

        def row(index: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
            sample = data.sample(index)
            return sample.image(), sample.caption

        return PairSource(len(data), pair=row)
    if not config.shards:
        raise ValueError(
            "data_format 'shards' needs shards (a brace pattern such as /data/rs5m/pub11-{0000..0099}.tar)"
        )

    def stream(epoch: int, rank: int, world: int) -> Iterator[tuple[Image.Image, str]]:
        shards = WebShards(
            config.shards,
            shuffle_buffer=config.shuffle_buffer,
            seed=config.seed,
            shuffle_shards=True,
            rank=rank,
            world_size=world,
        )
        shards.set_epoch(epoch)
        for sample in shards:
            yield sample.image(), sample.text()

    return PairSource(None, stream=stream)


# --- evaluation sets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalSet:
    images: list[Path]
    texts: list[str]
    text_image: list[int]  # the image each text describes


def retrieval_set(root: str | Path, split: str) -> RetrievalSet:
    """Every image of a Karpathy split with all its captions (the RSICD/RSITMD test protocol)."""
    data = KarpathyCaptions(root, split=split)
    images, texts, owners = [], [], []
    for i, sample in enumerate(data.samples):
        images.append(sample.image_path)
        texts.extend(sample.captions)
        owners.extend([i] * len(sample.captions))
    return RetrievalSet(images, texts, owners)


@dataclass(frozen=True)
class ClassSet:
    labels: list[str]
    images: list[Path]
    targets: list[int]


def class_folders(root: str | Path) -> ClassSet:
    """A folder per class (AID, UCMerced, RESISC45, WHU-RS19 as published): the folder name is the label,
    underscores read as spaces."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(f"{root}: no such folder; expected one sub-folder of images per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    labels, images, targets = [], [], []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            labels.append(folder.name.replace("_", " "))
            images.extend(files)
            targets.extend([len(labels) - 1] * len(files))
    if len(labels) < 2:
        raise DataFormatError(
            f"{root} holds {listing(root)}; expected at least two sub-folders of images, one per class"
        )
    return ClassSet(labels, images, targets)


def labelled_by_filename(images: Sequence[Path], labels: Sequence[str]) -> ClassSet:
    """Images whose file names start with a label (RSICD's ``airport_12.jpg``); the longest match wins.
    Labels match with spaces or underscores (``storage tanks`` matches ``storage_tanks_3.jpg``)."""
    keys = sorted(((label.lower().replace(" ", "_"), i) for i, label in enumerate(labels)), key=lambda k: -len(k[0]))
    kept, targets = [], []
    for path in images:
        name = path.name.lower()
        for key, index in keys:
            if name.startswith(key):
                kept.append(path)
                targets.append(index)
                break
    if not kept:
        raise DataFormatError(
            f"no image file name starts with any of the zero-shot labels {list(labels)} "
            f"(e.g. {images[0].name if images else 'no images'}); expected names such as "
            f"{labels[0].replace(' ', '_')}_1.jpg, or give zeroshot_root (a folder per class)"
        )
    return ClassSet(list(labels), kept, targets)


def read_images(paths: Sequence[Path]) -> list[Image.Image]:
    return [open_image(p) for p in paths]
