"""python -m training.recipes.default.objects --model FOLDER [--scenes 2000] [--epochs 10] [--out FOLDER]

A training stage of the RSA model after the main run: its object detector (RSAObjectDetector, a CenterNet-style
network over the window's own pixels), trained alone (it reads no other part of the model), then written back
into the checkpoint folder (``--out``, by default the same folder) with ``object_detector_channels``,
``object_classes``, ``object_min_pixel_m`` and ``object_served`` in its config.

For each of ``scenes`` train scenes (seeds disjoint from val and test; a share ``--plain`` in generator
version 1's plain look, the rest in generator v2's looks), drawn at its own pixel size and read as the engine
reads a window (rsa_objects.read_scale: shrunk to ``object_min_pixel_m`` when finer), the detector learns,
over ``epochs`` passes in random crops of ``--crop`` pixels (flipped and turned), where each object's centre
is (a Gaussian the object's shape; focal loss), its size and offset there (L1), and which pixels each class
covers (binary cross-entropy). It reports, on ``val`` scenes read whole, each class's box AP50 from the
detector (training.eval.instances' matching; that eval compares it with the class map's answers on test).

``--serve`` names the classes whose class-level answers ("find the cars", "how many trees?") the detector gives
from then on, ``--join`` those the class map and the detector answer together (rsa_objects.join); the others keep
the class map's (rsa_instances). Choose them by the figures of training.eval.instances.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the other stages: scene workers share the cores

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from rs_assistant.engine.backends import rsa_objects  # noqa: E402
from rs_assistant.engine.models.rsa.object_detector import STRIDE, RSAObjectDetector  # noqa: E402
from training.data.synthetic import CLASSES, generate_scene, split_seeds  # noqa: E402
from training.eval.instances import average_precision, match  # noqa: E402
from training.eval.metrics import box_iou  # noqa: E402
from training.recipes.default.stages import load_frozen, stage_parser, train_epochs, write_back  # noqa: E402

log = logging.getLogger(__name__)

#: The classes the detector reads, in its channels' order (the classes counted object by object).
DETECTED = ("buildings", "storage tanks", "vehicles", "trees")


@dataclass(frozen=True)
class Example:
    """One scene as the detector reads it: ``image [H, W, 3]`` (uint8, resized as the engine reads the window),
    ``cover [H, W]`` (uint8: 1 + the detector's class index of the pixel's object, 0 none) and ``objects [N, 5]``
    (float32: class index, x0, y0, x1, y1 in the image's pixels), with the scene's ``gsd`` (metres)."""

    image: np.ndarray
    cover: np.ndarray
    objects: np.ndarray
    gsd: float


def _class_ids(names: Sequence[str]) -> list[int]:
    """The generator's class ids of class ``names`` (plural nouns)."""
    plural = {c.plural: c.id for c in CLASSES}
    return [plural[name] for name in names]


def example_of_scene(args: tuple[int, int, float, bool, tuple[str, ...]]) -> Example:
    """The example of scene ``seed`` (``args``: seed, size, min_pixel_m, plain look, detected class names)."""
    seed, size, min_pixel_m, plain, names = args
    scene = generate_scene(seed, size=size, looks=not plain)
    ids = _class_ids(names)
    lookup = np.zeros(256, np.uint8)
    for index, cls in enumerate(ids):
        lookup[cls] = index + 1
    cover = lookup[scene.class_map]
    objects = [(ids.index(int(o.cls)), *map(float, o.box)) for o in scene.objects if int(o.cls) in ids]
    scale = rsa_objects.read_scale(scene.image.shape[:2], scene.gsd, min_pixel_m)
    image = scene.image[..., :3]
    height, width = rsa_objects.read_size(image.shape[:2], scale)
    if (height, width) != image.shape[:2]:
        image = (rsa_objects.detector_input(image, scale)[0, :, :height, :width] * 255).round().byte()
        image = image.permute(1, 2, 0).numpy()
        cover = F.interpolate(torch.from_numpy(cover)[None, None].float(), size=(height, width), mode="nearest")
        cover = cover[0, 0].byte().numpy()
    boxes = np.array(objects, np.float32).reshape(-1, 5)
    boxes[:, 1:] *= np.array([width / scene.image.shape[1], height / scene.image.shape[0]] * 2, np.float32)
    return Example(np.ascontiguousarray(image), cover, boxes, float(scene.gsd))


def collect(
    seeds: Sequence[int],
    size: int,
    min_pixel_m: float,
    plain_share: float,
    names: Sequence[str] = DETECTED,
    workers: int = 2,
    desc: str = "detector examples",
) -> list[Example]:
    """The examples of scenes ``seeds`` (every ``1 / plain_share``-th in the plain look), in ``workers`` processes."""
    every = round(1 / plain_share) if plain_share > 0 else 0
    jobs = [(seed, size, min_pixel_m, bool(every) and i % every == 0, tuple(names)) for i, seed in enumerate(seeds)]
    if workers <= 1:
        return [example_of_scene(j) for j in tqdm(jobs, desc=desc, dynamic_ncols=True)]
    with get_context("spawn").Pool(workers) as pool:
        return list(
            tqdm(pool.imap(example_of_scene, jobs, chunksize=4), total=len(jobs), desc=desc, dynamic_ncols=True)
        )


def zoom(example: Example, min_pixel_m: float, max_pixel_m: float | None) -> float:
    """How much the engine enlarges ``example``'s window before the detector reads it (rsa_objects.read_scale; 1 for
    a window it reads as it is or shrinks, which the example already is)."""
    return max(1.0, rsa_objects.read_scale(example.cover.shape, example.gsd, min_pixel_m, max_pixel_m))


def augmented(
    example: Example, side: int, rng: np.random.Generator, enlarge: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random ``side`` x ``side`` crop of ``example`` enlarged ``enlarge`` times (a crop of ``side / enlarge``
    pixels resized; zero-padded when the image is smaller), flipped and turned at random: ``(image, cover,
    objects)``, objects whose centre lies in the crop, clipped to it."""
    source = min(side, math.ceil(side / enlarge / STRIDE) * STRIDE)
    height, width = example.cover.shape
    y = int(rng.integers(0, max(0, height - source) // STRIDE + 1)) * STRIDE
    x = int(rng.integers(0, max(0, width - source) // STRIDE + 1)) * STRIDE
    image = np.zeros((source, source, 3), np.uint8)
    cover = np.zeros((source, source), np.uint8)
    part = example.image[y : y + source, x : x + source]
    image[: part.shape[0], : part.shape[1]] = part
    cover[: part.shape[0], : part.shape[1]] = example.cover[y : y + source, x : x + source]
    objects = example.objects.copy()
    objects[:, [1, 3]] -= x
    objects[:, [2, 4]] -= y
    cx, cy = (objects[:, 1] + objects[:, 3]) / 2, (objects[:, 2] + objects[:, 4]) / 2
    keep = (cx >= 0) & (cy >= 0) & (cx < min(source, width - x)) & (cy < min(source, height - y))
    objects = objects[keep]
    objects[:, 1:] = np.clip(objects[:, 1:], 0, source)
    if source != side:
        rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        image = F.interpolate(rgb, size=(side, side), mode="bilinear", align_corners=False)[0]
        image = image.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        cover = F.interpolate(torch.from_numpy(cover)[None, None].float(), size=(side, side), mode="nearest")
        cover = cover[0, 0].byte().numpy()
        objects[:, 1:] *= side / source
    if rng.random() < 0.5:  # mirror left-right
        image, cover = image[:, ::-1], cover[:, ::-1]
        objects[:, [1, 3]] = side - objects[:, [3, 1]]
    if rng.random() < 0.5:  # mirror top-bottom
        image, cover = image[::-1], cover[::-1]
        objects[:, [2, 4]] = side - objects[:, [4, 2]]
    if rng.random() < 0.5:  # transpose
        image, cover = image.transpose(1, 0, 2), cover.T
        objects = objects[:, [0, 2, 1, 4, 3]]
    return np.ascontiguousarray(image), np.ascontiguousarray(cover), objects


def targets(objects: np.ndarray, cover: np.ndarray, classes: int) -> dict[str, torch.Tensor]:
    """The maps the detector learns for one crop (:class:`~RSAObjectDetector`'s output size, 1/STRIDE of ``cover``):
    ``heat [K, h, w]`` (each object a Gaussian at its centre cell, sigma its size / 6 on each axis (TTFNet), the
    centre cell 1), ``size [2, h, w]`` and ``offset [2, h, w]`` at centre cells, ``centre [h, w]`` (1 at them) and
    ``inside [K, h, w]`` (each class's share of the cell's pixels)."""
    height, width = cover.shape[0] // STRIDE, cover.shape[1] // STRIDE
    heat = np.zeros((classes, height, width), np.float32)
    size = np.zeros((2, height, width), np.float32)
    offset = np.zeros((2, height, width), np.float32)
    centre = np.zeros((height, width), np.float32)
    order = np.argsort(-(objects[:, 3] - objects[:, 1]) * (objects[:, 4] - objects[:, 2]))  # small ones win a cell
    for k, x0, y0, x1, y1 in objects[order]:
        w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
        ix, iy = min(int(cx), width - 1), min(int(cy), height - 1)
        sx, sy = max(0.54 * w / STRIDE / 6, 0.5), max(0.54 * h / STRIDE / 6, 0.5)
        rx, ry = math.ceil(3 * sx), math.ceil(3 * sy)
        left, right, top, bottom = max(0, ix - rx), min(width, ix + rx + 1), max(0, iy - ry), min(height, iy + ry + 1)
        xs = np.arange(left, right) - ix
        ys = np.arange(top, bottom) - iy
        blob = np.exp(-(xs[None, :] ** 2) / (2 * sx**2) - (ys[:, None] ** 2) / (2 * sy**2))
        region = heat[int(k), top:bottom, left:right]
        np.maximum(region, blob, out=region)
        size[:, iy, ix] = (math.log(w), math.log(h))
        offset[:, iy, ix] = (cx - ix, cy - iy)
        centre[iy, ix] = 1.0
    one_hot = F.one_hot(torch.from_numpy(cover.astype(np.int64)), classes + 1).permute(2, 0, 1)[None].float()
    inside = F.avg_pool2d(one_hot, STRIDE)[0, 1:]
    return {
        "heat": torch.from_numpy(heat),
        "size": torch.from_numpy(size),
        "offset": torch.from_numpy(offset),
        "centre": torch.from_numpy(centre),
        "inside": inside,
    }


def detector_loss(logits: torch.Tensor, target: dict[str, torch.Tensor], classes: int) -> torch.Tensor:
    """CenterNet's focal loss on the centres (alpha 2, beta 4, per object), L1 on log sizes and offsets at the
    centres, and binary cross-entropy on the covered pixels, for a batch of the head's raw output."""
    k = classes
    heat = target["heat"]
    centres = logits[:, :k].sigmoid().clamp(1e-4, 1 - 1e-4)
    positive = heat.eq(1).float()
    focal = -(positive * (1 - centres) ** 2 * centres.log())
    focal -= (1 - positive) * (1 - heat) ** 4 * centres**2 * (1 - centres).log()
    objects = positive.sum().clamp(min=1)
    at = target["centre"][:, None]
    size = (F.l1_loss(logits[:, k : k + 2], target["size"], reduction="none") * at).sum() / objects
    offset = (F.l1_loss(logits[:, k + 2 : k + 4].sigmoid(), target["offset"], reduction="none") * at).sum() / objects
    inside = F.binary_cross_entropy_with_logits(logits[:, k + 4 :], target["inside"])
    return focal.sum() / objects + size + offset + 4 * inside


def fit(
    detector: RSAObjectDetector,
    examples: Sequence[Example],
    epochs: int = 10,
    lr: float = 3e-3,
    batch: int = 16,
    side: int = 256,
    seed: int = 0,
    min_pixel_m: float = 0.25,
    max_pixel_m: float | None = None,
) -> list[float]:
    """Trains ``detector`` on random crops of ``examples`` (made on the CPU, learned on the detector's device), one
    crop per example and epoch, each enlarged as the engine enlarges its window (:func:`zoom`); the mean loss of
    each epoch."""
    if not examples:
        raise ValueError("no examples to train the object detector on")
    rng = np.random.default_rng(seed)
    classes = detector.classes
    device = next(detector.parameters()).device

    def loss_of(chosen: list[Example]) -> torch.Tensor:
        crops = [augmented(e, side, rng, zoom(e, min_pixel_m, max_pixel_m)) for e in chosen]
        rgb = torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image, _, _ in crops]).to(device).float() / 255
        made = [targets(objects, cover, classes) for _, cover, objects in crops]
        target = {key: torch.stack([m[key] for m in made]).to(device) for key in made[0]}
        return detector_loss(detector.logits(rgb), target, classes)

    return train_epochs(detector, examples, loss_of, epochs, lr, batch, seed, "object detector")


def box_ap50(found: Sequence[Sequence[tuple[float, tuple]]], truths: Sequence[np.ndarray]) -> tuple[float, int]:
    """COCO-style box AP50 (training.eval.instances) of answers ``found`` per example against its truth boxes."""
    hits, total = [], 0
    for answers, boxes in zip(found, truths):
        hits += match(list(answers), [tuple(b) for b in boxes], box_iou)
        total += len(boxes)
    return average_precision(hits, total), total


@torch.no_grad()
def val_ap50(
    detector: RSAObjectDetector,
    examples: Sequence[Example],
    names: Sequence[str],
    min_pixel_m: float = 0.25,
    max_pixel_m: float | None = None,
    views: int | None = None,
) -> dict[str, dict]:
    """Each class's box AP50 and object count on ``examples``, read whole by the detector as the engine reads them
    (in ``views`` views, rsa_objects.read_maps; None: as many as the engine reads)."""
    detector.eval()
    found: dict[int, list] = {k: [] for k in range(len(names))}
    for e in examples:
        enlarge = zoom(e, min_pixel_m, max_pixel_m)
        rgb = rsa_objects.detector_input(e.image, enlarge).to(next(detector.parameters()).device)
        maps = rsa_objects.read_maps(detector, rgb, views)
        for k in found:
            found[k].append([(score, tuple(v / enlarge for v in box)) for score, box in rsa_objects.decode(maps, k)])
    results = {}
    for k, name in enumerate(names):
        truths = [e.objects[e.objects[:, 0] == k, 1:] for e in examples]
        ap, total = box_ap50(found[k], truths)
        results[name] = {"box_AP50": round(ap, 4) if total else None, "objects": total}
    return results


def train_detector(
    folder: Path,
    out: Path | None = None,
    scenes_count: int = 2000,
    val_count: int = 40,
    epochs: int = 10,
    channels: int = 20,
    min_pixel_m: float = 0.25,
    plain_share: float = 0.25,
    crop: int = 256,
    serve: Sequence[str] = ("vehicles", "trees"),
    join: Sequence[str] = ("buildings", "storage tanks"),
    size: int = 512,
    workers: int = 2,
    threads: int = 2,
    seed: int = 0,
    cache: Path | None = None,
    max_pixel_m: float | None = 0.5,
    lr: float = 3e-3,
    resume: bool = False,
) -> dict:
    """Adds a trained object detector to the checkpoint ``folder`` and saves it to ``out`` (default: ``folder``);
    with ``resume``, the folder's own detector (of the same width) trains on from its weights. It trains where the
    model was loaded: on CUDA when there is one (stages.load_frozen), else on the CPU."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    unknown = sorted((set(serve) | set(join)) - set(DETECTED))
    if unknown:
        raise ValueError(f"--serve, --join: the detector reads {', '.join(DETECTED)}, not {', '.join(unknown)}")
    if set(serve) & set(join):
        raise ValueError(f"--serve and --join share {', '.join(sorted(set(serve) & set(join)))}: name a class once")
    processor, model, saved_dtype = load_frozen(folder)
    config = model.config
    existing = model.object_detector if resume and config.object_detector_channels == channels else None
    if resume and existing is None:
        raise ValueError(f"{folder} has no object detector of width {channels} to resume")
    config.object_detector_channels, config.object_classes = channels, list(DETECTED)
    config.object_min_pixel_m, config.object_max_pixel_m = min_pixel_m, max_pixel_m
    config.object_served, config.object_joined = list(serve), list(join)

    def examples(split: str, count: int) -> list[Example]:
        name = f"objects-{split}-{count}-{size}-{min_pixel_m}-{plain_share}.pt"
        if cache is not None and (cache / name).exists():
            return torch.load(cache / name, weights_only=False)
        made = collect(
            split_seeds(split, count), size, min_pixel_m, plain_share, DETECTED, workers, f"detector ({split})"
        )
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            torch.save(made, cache / name)
        return made

    train = examples("train", scenes_count)
    val = examples("val", val_count) if val_count else []
    detector = (existing.float() if existing is not None else RSAObjectDetector(config)).to(model.device)
    losses = fit(detector, train, epochs, lr, side=crop, seed=seed, min_pixel_m=min_pixel_m, max_pixel_m=max_pixel_m)
    results = {"scenes": len(train), "losses": [round(x, 4) for x in losses]}
    if val:
        results["val"] = val_ap50(detector, val, DETECTED, min_pixel_m, max_pixel_m)
    model.object_detector = detector.to(model.device)
    results["seconds"] = round(time.perf_counter() - started, 1)
    target = write_back(model, processor, folder, out, saved_dtype)
    log.info("object detector written to %s", target)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "python -m training.recipes.default.objects", __doc__.splitlines()[0], scenes=2000, epochs=10, threads=2
    )
    parser.add_argument("--channels", type=int, default=20, help="the detector's first width (default 20)")
    parser.add_argument("--min-pixel", type=float, default=0.25, help="finest metres per pixel read (default 0.25)")
    parser.add_argument(
        "--max-pixel", type=float, default=0.5, help="coarser windows are enlarged towards this (up to 2x; default 0.5)"
    )
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 0.003)")
    parser.add_argument("--resume", action="store_true", help="train the folder's own detector on")
    parser.add_argument("--plain", type=float, default=0.25, help="share of scenes in the plain look (default 0.25)")
    parser.add_argument("--crop", type=int, default=256, help="training crop side in pixels (default 256)")
    parser.add_argument(
        "--serve",
        default="vehicles,trees",
        help="classes the detector answers, comma-separated (default vehicles,trees)",
    )
    parser.add_argument(
        "--join",
        default="buildings,storage tanks",
        help="classes the class map and the detector answer together (default buildings,storage tanks)",
    )
    parser.add_argument("--cache", type=Path, default=None, help="folder keeping the examples between runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.scenes < 1 or args.epochs < 1 or args.channels < 1 or args.crop % 8 or args.min_pixel <= 0:
        parser.error("--scenes, --epochs, --channels and --min-pixel must be positive and --crop a multiple of 8")
    results = train_detector(
        args.model,
        args.out,
        args.scenes,
        args.val,
        args.epochs,
        args.channels,
        args.min_pixel,
        args.plain,
        args.crop,
        [name.strip() for name in args.serve.split(",") if name.strip()],
        [name.strip() for name in args.join.split(",") if name.strip()],
        args.size,
        args.workers,
        args.threads,
        cache=args.cache,
        max_pixel_m=args.max_pixel,
        lr=args.lr,
        resume=args.resume,
    )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
