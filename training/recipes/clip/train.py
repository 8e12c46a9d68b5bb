"""python -m training clip --config training/recipes/clip/tiny.toml [--set key=value ...] [--fresh]

Continued contrastive training of a CLIP on remote-sensing image-text pairs, as GeoRSCLIP (RS5M)
and SkyCLIP (SkyScript) do, full fine-tuning or LoRA (``finetune = "lora"``, peft), then:

1. evaluation of the final model: image-text retrieval on a Karpathy split (``eval_root``,
   ``eval_split``; R@1/5/10 both ways and their mean ``mR``) and zero-shot classification
   (``zeroshot_root``: a folder per class, or ``zeroshot_labels`` matched against the retrieval
   images' file names) with the prompt ``templates`` averaged per class;
2. export of a transformers CLIP folder (LoRA merged) to ``out``, with ``metrics.json`` and the
   training log, which the engine's ``clip`` backend serves (classify, retrieve).

``model_path`` is a transformers or open_clip CLIP folder; left empty, a tiny random CLIP is built
in ``work_dir/tiny-clip`` (the tests' and tiny.toml's case). The data formats are in data.py; the
loop (checkpoints, resume, DDP under torchrun, bf16 on GPU) is training/loop.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.eval.metrics import image_text_retrieval
from training.loop import LoopConfig, Recipe, Runtime, main_first, map_batches, seeded, stream_batches, unwrap
from training.recipes.clip.data import (
    ClassSet,
    Encoder,
    class_folders,
    labelled_by_filename,
    pair_source,
    read_images,
    retrieval_set,
)
from training.recipes.clip.model import ClipParts, ContrastiveCLIP, add_lora, export_clip, load_clip

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ClipConfig(LoopConfig):
    """The clip recipe's settings (tiny.toml, paper.toml); LoopConfig's are shared by every recipe."""

    model_path: str = ""  # transformers or open_clip CLIP folder; "" builds a tiny random one in work_dir
    finetune: str = "full"  # full | lora
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
    train_logit_scale: bool = True
    # training data (data.py)
    data_format: str = "karpathy"  # karpathy | skyscript | shards
    data_root: str = ""
    train_split: str = "train"
    skyscript_csv: str = ""
    caption_column: str = "title"
    shards: str = ""
    shuffle_buffer: int = 1000
    # evaluation
    eval_root: str = ""  # a Karpathy data set for retrieval; "" = data_root when data_format is karpathy
    eval_split: str = "test"
    zeroshot_root: str = ""  # a folder per class
    zeroshot_labels: tuple[str, ...] = ()  # or labels matched against the retrieval images' file names
    templates: tuple[str, ...] = ("a satellite image of {label}.",)
    eval_batch_size: int = 64
    export_dtype: str = "float32"  # float32 | float16 | bfloat16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.finetune not in ("full", "lora"):
            raise ValueError(f"finetune must be 'full' or 'lora', got {self.finetune!r}")
        if self.export_dtype not in DTYPES:
            raise ValueError(f"export_dtype must be one of {', '.join(DTYPES)}, got {self.export_dtype!r}")
        for name in ("lora_targets", "zeroshot_labels", "templates"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.templates or any("{label}" not in t for t in self.templates):
            raise ValueError(f"every template must contain {{label}}; got {list(self.templates)}")


class ClipRecipe(Recipe):
    name = "clip"
    run_keys = (
        "model_path",
        "finetune",
        "lora_r",
        "lora_alpha",
        "lora_targets",
        "data_format",
        "data_root",
        "train_split",
        "skyscript_csv",
        "shards",
    )
    config: ClipConfig

    def __init__(self, config: ClipConfig) -> None:
        super().__init__(config)
        self.source = pair_source(config)  # checks the data before any model is loaded
        self.parts: ClipParts | None = None

    def model_path(self) -> Path:
        if self.config.model_path:
            return Path(self.config.model_path)
        from training.tiny_checkpoints import tiny_clip

        return tiny_clip(Path(self.config.work_dir) / "tiny-clip")

    def build(self, runtime: Runtime) -> nn.Module:
        self.parts = load_clip(main_first(runtime, self.model_path))
        clip: nn.Module = self.parts.model
        clip.logit_scale.requires_grad_(self.config.train_logit_scale)
        if self.config.finetune == "lora":
            c = self.config
            clip = add_lora(
                self.parts.model, c.lora_r, c.lora_alpha, c.lora_dropout, c.lora_targets, c.train_logit_scale
            )
        self.encoder = Encoder(self.parts.image_processor, self.parts.tokenizer, self.parts.context_length)
        return ContrastiveCLIP(clip).to(runtime.device)

    def batches(self, start_step: int, runtime: Runtime) -> Iterator[dict[str, Any]]:
        seed = self.config.seed
        if self.source.size is not None:
            pair = self.source.pair

            def collate(indices: list[int], step: int) -> dict:
                pairs = [pair(i, seeded(seed, step, i)) for i in indices]
                return self.encoder.pairs([p[0] for p in pairs], [p[1] for p in pairs])

            return map_batches(self.config, start_step, runtime, self.source.size, collate)
        stream = self.source.stream
        return stream_batches(
            self.config,
            start_step,
            runtime,
            lambda epoch: stream(epoch, runtime.rank, runtime.world),
            lambda pairs, step: self.encoder.pairs([p[0] for p in pairs], [p[1] for p in pairs]),
        )

    # --- evaluation --------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module, runtime: Runtime) -> dict[str, float]:
        module: ContrastiveCLIP = unwrap(model)
        c = self.config
        root = c.eval_root or (c.data_root if c.data_format == "karpathy" else "")
        metrics: dict[str, float] = {}
        retrieval = None
        if root:
            retrieval = retrieval_set(root, c.eval_split)
            images = self._embed_images(module, retrieval.images, runtime)
            texts = self._embed_texts(module, retrieval.texts, runtime)
            metrics.update(image_text_retrieval(images @ texts.T, retrieval.text_image))
        classes: ClassSet | None = None
        if c.zeroshot_root:
            classes = class_folders(c.zeroshot_root)
        elif c.zeroshot_labels and retrieval is not None:
            classes = labelled_by_filename(retrieval.images, c.zeroshot_labels)
        if classes is not None:
            metrics.update(self.zero_shot(module, classes, runtime))
        return metrics

    def zero_shot(self, module: ContrastiveCLIP, classes: ClassSet, runtime: Runtime) -> dict[str, float]:
        prompts = [t.format(label=label) for label in classes.labels for t in self.config.templates]
        texts = self._embed_texts(module, prompts, runtime).reshape(len(classes.labels), len(self.config.templates), -1)
        class_embeds = texts.mean(1)
        class_embeds /= np.linalg.norm(class_embeds, axis=1, keepdims=True)
        scores = self._embed_images(module, classes.images, runtime) @ class_embeds.T
        order = np.argsort(-scores, axis=1)
        targets = np.asarray(classes.targets)
        out = {"zeroshot_top1": float(np.mean(order[:, 0] == targets))}
        if len(classes.labels) > 5:
            out["zeroshot_top5"] = float(np.mean([t in row[:5] for t, row in zip(targets, order)]))
        return out

    def _embed_images(self, module: ContrastiveCLIP, paths: list[Path], runtime: Runtime) -> np.ndarray:
        out = []
        for start in range(0, len(paths), self.config.eval_batch_size):
            pixels = self.encoder.images(read_images(paths[start : start + self.config.eval_batch_size]))
            out.append(module.embed_images(pixels.to(runtime.device)).float().cpu().numpy())
        return np.concatenate(out)

    def _embed_texts(self, module: ContrastiveCLIP, texts: list[str], runtime: Runtime) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.config.eval_batch_size):
            tokens = self.encoder.texts(texts[start : start + self.config.eval_batch_size])
            out.append(module.embed_texts(**{k: v.to(runtime.device) for k, v in tokens.items()}).float().cpu().numpy())
        return np.concatenate(out)

    def export(self, model: nn.Module, out: Path) -> Path:
        assert self.parts is not None
        return export_clip(unwrap(model).clip, self.parts, out, DTYPES[self.config.export_dtype])


def run(config: dict[str, Any], fresh: bool, stop=None):
    """The command line's entry: config dict -> a finished (or stopped) run."""
    from training.loop import train

    return train(ClipRecipe(ClipConfig.from_dict(config)), fresh=fresh, stop=stop)
