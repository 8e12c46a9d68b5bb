"""What the training stages after the main run share (selector.py, refine.py, objects.py): the recipe's settings
for them, the checkpoint they load with everything frozen, how they write it back, their common
options and their training loop."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn
from tqdm import tqdm

from rs_assistant.engine.models.rsa import RSAForConditionalGeneration, RSAProcessor
from training.loop import ConfigFromDict

Item = TypeVar("Item")


@dataclass(frozen=True)
class StageSettings(ConfigFromDict):
    """The ``[stages]`` table of a default recipe config: what runs after the main run (pipeline.py), in this
    order. A stage with 0 scenes does not run, so a config without the table trains the main run only."""

    selector_scenes: int = 0  # train scenes the region selector learns from (selector.py; 0: no selector)
    selector_epochs: int = 8
    refine_scenes: int = 0  # train scenes the class refiner learns from (refine.py; 0: no refiner)
    refine_epochs: int = 6
    objects_scenes: int = 0  # train scenes the object detector learns from (objects.py; 0: no detector)
    objects_epochs: int = 10
    calibrate_scenes: int = 0  # val scenes the serving thresholds are chosen on (training.eval.calibrate; 0: none)
    calibrate_pairs: int = 200  # val pairs for the change threshold
    calibrate_captions: int = 0  # val scenes for the caption decoding (0: keep the config's)
    val_scenes: int = 40  # val scenes the selector and refiner stages report on
    size: int = 512  # window side in pixels the scenes are drawn at, as the engine reads a window
    workers: int = 2  # processes generating scenes

    def __post_init__(self) -> None:
        negative = sorted(k for k, v in vars(self).items() if v < 0)
        if negative:
            raise ValueError(f"stages: {', '.join(negative)} must not be negative")
        if self.selector_epochs < 1 or self.refine_epochs < 1 or self.objects_epochs < 1 or self.size < 32:
            raise ValueError(
                "stages: selector_epochs, refine_epochs and objects_epochs must be positive and size at least 32"
            )

    @property
    def names(self) -> list[str]:
        """The stages that run, in order."""
        return [
            name
            for name, count in (
                ("selector", self.selector_scenes),
                ("refiner", self.refine_scenes),
                ("objects", self.objects_scenes),
                ("calibration", self.calibrate_scenes),
            )
            if count > 0
        ]


def load_frozen(folder: Path, **overrides) -> tuple[RSAProcessor, RSAForConditionalGeneration, torch.dtype]:
    """The processor and model of the checkpoint ``folder`` (fp32, eval mode, on CUDA when there is one;
    ``overrides`` go to its config) and the dtype its weights were saved in."""
    processor = RSAProcessor.from_pretrained(folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    saved_dtype = getattr(torch, str(config.get("dtype") or "float32"))
    model = RSAForConditionalGeneration.from_pretrained(folder, local_files_only=True, dtype=torch.float32, **overrides)
    return processor, model.to("cuda" if torch.cuda.is_available() else "cpu").eval(), saved_dtype


def write_back(
    model: RSAForConditionalGeneration,
    processor: RSAProcessor,
    folder: Path,
    out: Path | None,
    saved_dtype: torch.dtype,
) -> Path:
    """Saves ``model`` (in ``saved_dtype``) to ``out``, or back to ``folder``; a new folder gets the processor too."""
    target = out or folder
    target.mkdir(parents=True, exist_ok=True)
    model.cpu().to(saved_dtype).save_pretrained(target)
    if target != folder:
        processor.save_pretrained(target)
    return target


def stage_parser(prog: str, description: str, scenes: int, epochs: int, threads: int) -> argparse.ArgumentParser:
    """The options every stage takes, with its own defaults for ``--scenes``, ``--epochs`` and ``--threads``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--model", type=Path, default=Path("resources/models/rsa-default"), help="RSA checkpoint folder"
    )
    parser.add_argument("--out", type=Path, default=None, help="where to write the model (default: --model)")
    parser.add_argument("--scenes", type=int, default=scenes, help=f"train scenes (default {scenes})")
    parser.add_argument("--val", type=int, default=40, help="val scenes to report on (default 40)")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"passes over the examples (default {epochs})")
    parser.add_argument("--size", type=int, default=512, help="window side in pixels (default 512)")
    parser.add_argument("--workers", type=int, default=2, help="processes generating scenes (default 2)")
    parser.add_argument(
        "--threads", type=int, default=threads, help=f"torch threads beside the workers (default {threads})"
    )
    return parser


def train_epochs(
    module: nn.Module,
    items: Sequence[Item],
    loss_of: Callable[[list[Item]], torch.Tensor],
    epochs: int,
    lr: float,
    batch: int,
    seed: int,
    desc: str,
) -> list[float]:
    """Trains ``module`` with AdamW (weight decay 0.01) and a half-cosine decay of ``lr`` to 0, over ``epochs``
    seeded shuffles of ``items`` in batches of ``batch``, with a progress bar; ``loss_of`` gives a batch's mean
    loss. Returns the mean loss of each epoch and leaves ``module`` in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(items) / batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0)))
    )
    losses = []
    module.train()
    with tqdm(total=steps, desc=desc, dynamic_ncols=True) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(items), generator=generator).tolist()
            total = 0.0
            for start in range(0, len(order), batch):
                chosen = [items[i] for i in order[start : start + batch]]
                loss = loss_of(chosen)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(chosen)
                bar.update()
            losses.append(total / len(items))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    module.eval()
    return losses
