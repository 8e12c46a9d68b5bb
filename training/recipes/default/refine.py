"""python -m training.recipes.default.refine --model FOLDER [--scenes 1500] [--epochs 6] [--out FOLDER]

A training stage of the RSA model after the main run: its class refiner (RSAClassRefiner, the
guided upsampling of the per-pixel class head's map), trained on the frozen rest of the model, then
written back into the checkpoint folder (``--out``, by default the same folder) with
``class_refine_channels`` and ``class_refine_size`` in its config.

For each of ``scenes`` train scenes (seeds disjoint from val and test), drawn as the engine reads a
window of ``size`` pixels, the frozen model gives the head's logits and pixel features once; the
refiner then learns, over ``epochs`` passes with a progress bar, to match the class map's share
of each class in every cell of its ``class_refine_size`` grid (soft cross-entropy), each class
weighted by its share of the pixels to the power -``balance``, so that vehicles, tanks and single
trees count. It reports, on ``val`` scenes, each class's mean IoU in the window-sized class map
with and without the refiner, as ClassRegions serves it.

The selector (training.recipes.default.selector) reads only the head's own map, so the two stages
may run in either order.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the selector stage: scene workers share the cores

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from rs_assistant.engine.backends.rsa import ClassRegions  # noqa: E402
from rs_assistant.engine.models.rsa import RSAForConditionalGeneration, RSAProcessor  # noqa: E402
from rs_assistant.engine.models.rsa.modeling_rsa import RSAClassRefiner  # noqa: E402
from training.data.synthetic import split_seeds  # noqa: E402
from training.eval.metrics import mask_iou  # noqa: E402
from training.recipes.default.selector import scenes  # noqa: E402
from training.recipes.default.stages import load_frozen, stage_parser, train_epochs, write_back  # noqa: E402

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One scene as the refiner reads it: the frozen head's ``logits [K, M, M]`` and ``pixels [C, M, M]``
    (fp16), the window's colours ``rgb [3, S, S]`` (uint8, area-averaged) and its ``class_map [H, W]`` (uint8)."""

    logits: torch.Tensor
    pixels: torch.Tensor
    rgb: torch.Tensor
    class_map: torch.Tensor


@torch.inference_mode()
def example_of_scene(
    model: RSAForConditionalGeneration, processor: RSAProcessor, image: np.ndarray, class_map: np.ndarray, side: int
) -> Example:
    """What the refiner learns from one scene (the head's outputs computed as ClassRegions serves them)."""
    visual = model.encode_images(processor.pixel_values([image]).to(model.device, model.dtype))
    regions = ClassRegions(model, visual, 0, class_map.shape, image)
    rgb = (regions.window_rgb(side)[0] * 255).round().to(torch.uint8).cpu()
    return Example(
        regions.logits().half().cpu(),
        regions.pixel_features().half().cpu(),
        rgb,
        torch.from_numpy(class_map.astype(np.uint8)),
    )


def collect(
    model: RSAForConditionalGeneration,
    processor: RSAProcessor,
    seeds: Sequence[int],
    size: int = 512,
    workers: int = 2,
    desc: str = "refiner examples",
) -> list[Example]:
    """The examples of the scenes ``seeds``."""
    side = model.config.class_refine_size
    return [
        example_of_scene(model, processor, image, class_map, side)
        for image, class_map, _, _ in tqdm(
            scenes(seeds, size, workers), total=len(seeds), desc=desc, dynamic_ncols=True
        )
    ]


def soft_targets(class_maps: torch.Tensor, classes: int, side: int) -> torch.Tensor:
    """``class_maps [n, H, W]`` -> each class's share of every cell of a ``side`` x ``side`` grid ``[n, K, side,
    side]``."""
    one_hot = F.one_hot(class_maps.long(), classes).permute(0, 3, 1, 2).float()
    return F.interpolate(one_hot, size=(side, side), mode="area")


def class_weights(examples: Sequence[Example], classes: int, balance: float) -> torch.Tensor:
    """``[K]``: (each class's share of the examples' pixels) ** -``balance``, with a mean of 1 over the pixels."""
    counts = torch.zeros(classes)
    for e in examples:
        counts += torch.bincount(e.class_map.flatten().long(), minlength=classes)[:classes].float()
    share = counts / counts.sum()
    weights = torch.where(share > 0, share.clamp(min=1e-6) ** -balance, torch.zeros_like(share))
    return weights / (weights * share).sum()


def _batch(examples: Sequence[Example], classes: int, side: int) -> tuple[torch.Tensor, ...]:
    return (
        torch.stack([e.logits for e in examples]).float(),
        torch.stack([e.pixels for e in examples]).float(),
        torch.stack([e.rgb for e in examples]).float() / 255,
        soft_targets(torch.stack([e.class_map for e in examples]), classes, side),
    )


def fit(
    refiner: RSAClassRefiner,
    examples: Sequence[Example],
    epochs: int = 6,
    lr: float = 1e-2,
    batch: int = 8,
    balance: float = 0.5,
    seed: int = 0,
) -> list[float]:
    """Trains ``refiner`` on ``examples`` (soft cross-entropy, class-weighted by ``balance``); the mean loss of each
    epoch."""
    if not examples:
        raise ValueError("no examples to train the class refiner on")
    classes, side = examples[0].logits.shape[0], refiner.size
    weights = class_weights(examples, classes, balance)

    def loss_of(chosen: list[Example]) -> torch.Tensor:
        logits, pixels, rgb, targets = _batch(chosen, classes, side)
        refined = refiner(logits, pixels, rgb).float()
        return -(targets * weights[None, :, None, None] * F.log_softmax(refined, dim=1)).sum(dim=1).mean()

    return train_epochs(refiner, examples, loss_of, epochs, lr, batch, seed, "class refiner")


@torch.no_grad()
def class_ious(
    refiner: RSAClassRefiner | None, examples: Sequence[Example], class_names: Sequence[str]
) -> dict[str, float]:
    """Each class's mean IoU (over the examples that hold it) in the window-sized most-probable-class map,
    refined by ``refiner`` or (None) the head's own, and ``"mean"``: over every (example, class) pair."""
    found: dict[str, list[float]] = {}
    for e in examples:
        logits = e.logits.float()[None]
        if refiner is not None:
            logits = refiner(logits, e.pixels.float()[None], e.rgb.float()[None] / 255).float()
        classes = F.interpolate(logits, size=tuple(e.class_map.shape), mode="bilinear")[0].argmax(dim=0)
        truth = e.class_map.long()
        for cls in truth.unique().tolist():
            found.setdefault(str(class_names[cls]), []).append(mask_iou(classes == cls, truth == cls))
    result = {name: float(np.mean(values)) for name, values in sorted(found.items())}
    result["mean"] = float(np.mean([v for values in found.values() for v in values])) if found else float("nan")
    return result


def train_refiner(
    folder: Path,
    out: Path | None = None,
    scenes_count: int = 1500,
    val_count: int = 40,
    epochs: int = 6,
    channels: int = 24,
    side: int = 224,
    size: int = 512,
    balance: float = 0.5,
    workers: int = 2,
    threads: int = 2,
    seed: int = 0,
) -> dict:
    """Adds a trained class refiner to the checkpoint ``folder`` and saves it to ``out`` (default: ``folder``)."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    processor, model, saved_dtype = load_frozen(folder)
    if model.config.pixel_class_loss_weight <= 0:
        raise ValueError(f"{folder}: the class refiner needs a model with the per-pixel class head")
    model.class_refiner = None  # the examples hold the head's own map (a refiner the folder had is replaced)
    model.config.class_refine_channels, model.config.class_refine_size = channels, side
    train = collect(model, processor, split_seeds("train", scenes_count), size, workers, "refiner examples (train)")
    val = (
        collect(model, processor, split_seeds("val", val_count), size, workers, "refiner examples (val)")
        if val_count
        else []
    )
    refiner = RSAClassRefiner(model.config)  # its correction starts at zero
    losses = fit(refiner, train, epochs, balance=balance, seed=seed)
    model.class_refiner = refiner.to(model.device)
    names = model.config.class_names or [str(i) for i in range(model.config.num_aux_classes)]
    results = {"scenes": len(train), "final_loss": losses[-1], "seconds": round(time.perf_counter() - started, 1)}
    if val:
        results["val_head_iou"] = class_ious(None, val, names)
        results["val_refined_iou"] = class_ious(refiner.cpu(), val, names)
        model.class_refiner = refiner.to(model.device)
    target = write_back(model, processor, folder, out, saved_dtype)
    log.info("class refiner written to %s", target)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "python -m training.recipes.default.refine", __doc__.splitlines()[0], scenes=1500, epochs=6, threads=2
    )
    parser.add_argument("--channels", type=int, default=24, help="the refiner's width (default 24)")
    parser.add_argument("--side", type=int, default=224, help="the refined map's side in pixels (default 224)")
    parser.add_argument("--balance", type=float, default=0.5, help="class weight power (default 0.5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.scenes < 1 or args.epochs < 1 or args.channels < 1 or args.side < 8 or not 0 <= args.balance <= 1:
        parser.error("--scenes, --epochs and --channels must be positive, --side at least 8 and --balance in 0..1")
    results = train_refiner(
        args.model,
        args.out,
        args.scenes,
        args.val,
        args.epochs,
        args.channels,
        args.side,
        args.size,
        args.balance,
        args.workers,
        args.threads,
    )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
