"""python -m training.eval.instances --model resources/models/rsa-default [--split test] [--count 100] [--out FILE]

What people ask first: every object of a class. On ``count`` scenes of a split, through the engine's own
``rsa`` backend, for each class counted object by object (buildings, storage tanks, vehicles, trees) and
present in the scene:

- ``find the <class>``: box AP50 (COCO-style: the answers of every scene pooled and ranked by score,
  precision interpolated at 101 recall points, a box a hit at IoU >= 0.5 with an object not yet matched)
  and recall at the served score threshold (0.3: what is drawn);
- ``segment the <class>``: mask AP50 (the same, by mask IoU), and the mIoU of the union of the masks drawn
  (at the served threshold) against the class's pixels (what the class-level mask gave before: it must not
  fall);
- ``how many <class> are there?``: count accuracy (the answer's number within 10% or 1 of the truth) and
  whether the number in the answer equals the features drawn.

Truth: the generator's own objects (every object of the class visible in the scene). Every figure is given
per class, overall (the mean over classes) and per GSD band. Prints the tables and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rs_assistant.core.protocol import FeatureKind, Options, Task
from rs_assistant.engine.backends.base import BackendCall, Detection
from rs_assistant.engine.backends.rsa import RSABackend
from training.data.synthetic import CLASSES, generate_scene, split_seeds
from training.eval.metrics import box_iou, mask_iou
from training.eval.rsa import (
    GSD_BANDS,
    eval_arguments,
    generator_arguments,
    gsd_band,
    parse_eval_arguments,
    write_results,
)

log = logging.getLogger(__name__)

#: The classes counted object by object (the engine's rsa_instances.CROP_SIDE), by class id.
COUNTED = (1, 5, 4, 6)
#: Goals of the issue that asked for instances, on the synthetic test split.
AP50_GOALS = {"buildings": 0.6, "storage tanks": 0.6, "vehicles": 0.6, "trees": 0.4}
COUNT_GOAL = 0.7
SERVED_THRESHOLD = 0.3
_NUMBER = re.compile(r"\b(\d+)\b")


def average_precision(hits: Sequence[tuple[float, bool]], truths: int) -> float:
    """COCO-style AP: ``hits`` (score, matched) of every answer pooled, ``truths`` the objects to find; precision
    made monotone and read at 101 recall points 0, 0.01, ..., 1."""
    if truths == 0:
        return float("nan")
    ranked = sorted(hits, key=lambda h: -h[0])
    matched = np.cumsum([h[1] for h in ranked], dtype=float)
    precision = matched / np.arange(1, len(ranked) + 1) if ranked else np.zeros(0)
    recall = matched / truths if ranked else np.zeros(0)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    points = []
    for level in np.linspace(0, 1, 101):
        above = np.flatnonzero(recall >= level - 1e-12)
        points.append(float(precision[above[0]]) if len(above) else 0.0)
    return float(np.mean(points))


def match(found: Sequence[tuple[float, object]], truths: Sequence[object], iou) -> list[tuple[float, bool]]:
    """``(score, matched)`` for each answer, best score first, each matched to the unmatched truth it overlaps most
    at ``iou(answer, truth) >= 0.5`` (COCO's greedy matching)."""
    ranked = sorted(found, key=lambda f: -f[0])
    overlaps = np.zeros((len(ranked), len(truths)))
    for row, (_, answer) in enumerate(ranked):
        overlaps[row] = [iou(answer, truth) for truth in truths]
    return match_matrix([score for score, _ in ranked], overlaps)


def match_matrix(scores: Sequence[float], overlaps: np.ndarray) -> list[tuple[float, bool]]:
    """:func:`match` for answers already ranked by ``scores`` (best first), given their IoU with every truth
    (``overlaps [answers, truths]``)."""
    used = np.zeros(overlaps.shape[1], bool)
    out = []
    for score, row in zip(scores, overlaps):
        row = np.where(used, -1.0, row)
        chosen = int(row.argmax()) if row.size else -1
        hit = chosen >= 0 and row[chosen] >= 0.5
        if hit:
            used[chosen] = True
        out.append((score, hit))
    return out


def mask_overlaps(masks: Sequence[np.ndarray], instance_map: np.ndarray, ids: Sequence[int]) -> np.ndarray:
    """``[masks, ids]``: the IoU of each mask with each object ``ids`` of ``instance_map``, from the instance ids under
    each mask (one pass over each mask, not one per pair)."""
    sizes = np.bincount(instance_map.ravel(), minlength=int(instance_map.max()) + 1)
    out = np.zeros((len(masks), len(ids)))
    for row, mask in enumerate(masks):
        under = np.bincount(instance_map[mask], minlength=len(sizes))
        inter = under[list(ids)]
        out[row] = inter / np.maximum(mask.sum() + sizes[list(ids)] - inter, 1)
    return out


def count_correct(answer: int | None, truth: int) -> bool:
    """The issue's count accuracy: within 10% or 1 of the truth."""
    return answer is not None and abs(answer - truth) <= max(1.0, 0.1 * truth)


def answered_count(text: str) -> int | None:
    """The number an answer gives ("There are 13 buildings." -> 13, "There are no trees." -> 0)."""
    found = _NUMBER.search(text)
    if found:
        return int(found.group(1))
    return 0 if re.search(r"\bno\b", text) else None


def evaluate(
    model: Path,
    split: str = "test",
    count: int = 100,
    size: int = 512,
    threads: int = 2,
    pixel_size: bool = True,
    looks: bool = True,
) -> dict:
    """The figures (see the module's doc) of checkpoint folder ``model`` on ``count`` scenes of ``split``;
    ``pixel_size`` and ``looks`` as for training.eval.rsa.evaluate."""
    torch.set_num_threads(threads)
    backend = RSABackend("eval", {"path": str(model)}, device="cuda" if torch.cuda.is_available() else "cpu")
    backend.ensure_loaded()
    options = Options(score_threshold=SERVED_THRESHOLD)
    gsd: float | None = None  # the scene's pixel size

    def ask(task: Task, image: np.ndarray, prompt: str) -> tuple[str, list[Detection]]:
        call = BackendCall(task=task, images=[image], prompt=prompt, options=options, pixel_size_m=gsd)
        result = backend.run(call)
        return result.text, result.detections

    # per (band or "all", class name): pooled box hits, mask hits, truths, served hits, union IoUs, counts
    stats: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    started = time.perf_counter()
    for seed in tqdm(split_seeds(split, count), desc=f"instances ({split})", dynamic_ncols=True):
        scene = generate_scene(seed, size=size, looks=looks)
        gsd = scene.gsd if pixel_size else None
        band = gsd_band(scene.gsd)
        for cls in COUNTED:
            name = CLASSES[cls].plural
            objects = [o for o in scene.objects if int(o.cls) == cls]
            rows = [stats[("all", name)], stats[(band, name)]]
            text, answers = ask(Task.CHAT, scene.image, f"How many {name} are there?")
            drawn = [d for d in answers if d.score >= SERVED_THRESHOLD]
            said = answered_count(text)
            for row in rows:
                row["count_correct"].append(count_correct(said, len(objects)))
                row["count_agrees"].append(said == len(drawn))
            if not objects:
                continue
            _, boxes = ask(Task.GROUND, scene.image, f"find the {name}")
            found = [(d.score, d.box) for d in boxes if d.kind is FeatureKind.BOX]
            box_hits = match(found, [o.box for o in objects], box_iou)
            served = match([f for f in found if f[0] >= SERVED_THRESHOLD], [o.box for o in objects], box_iou)
            _, masks = ask(Task.SEGMENT, scene.image, f"segment the {name}")
            found_masks = sorted(((d.score, d.mask) for d in masks if d.mask is not None), key=lambda f: -f[0])
            overlaps = mask_overlaps([m for _, m in found_masks], scene.instance_map, [o.id for o in objects])
            mask_hits = match_matrix([score for score, _ in found_masks], overlaps)
            drawn_masks = [m for score, m in found_masks if score >= SERVED_THRESHOLD]
            union = np.logical_or.reduce(drawn_masks) if drawn_masks else np.zeros_like(scene.class_map)
            for row in rows:
                row["box_hits"] += box_hits
                row["mask_hits"] += mask_hits
                row["truths"].append(len(objects))
                row["served_found"].append(sum(h for _, h in served))
                row["union_iou"].append(mask_iou(union, scene.class_map == cls))
    seconds = time.perf_counter() - started

    def figures(row: dict[str, list]) -> dict[str, float | int]:
        truths = sum(row["truths"])
        return {
            "objects": truths,
            "box_AP50": average_precision(row["box_hits"], truths),
            "served_recall": sum(row["served_found"]) / truths if truths else float("nan"),
            "mask_AP50": average_precision(row["mask_hits"], truths),
            "class_mIoU": float(np.mean(row["union_iou"])) if row["union_iou"] else float("nan"),
            "count_accuracy": float(np.mean(row["count_correct"])) if row["count_correct"] else float("nan"),
            "count_agrees": float(np.mean(row["count_agrees"])) if row["count_agrees"] else float("nan"),
        }

    results: dict = {"model": str(model), "split": split, "count": count, "size": size, "pixel_size": pixel_size}
    results |= {"looks": looks, "seconds": round(seconds, 1)}
    for group in ["all", *(name for name, _, _ in GSD_BANDS)]:
        per_class = {CLASSES[c].plural: figures(stats[(group, CLASSES[c].plural)]) for c in COUNTED}
        per_class = {k: v for k, v in per_class.items() if v["objects"] or group == "all"}
        if not per_class:
            continue
        keys = ("box_AP50", "served_recall", "mask_AP50", "class_mIoU", "count_accuracy", "count_agrees")
        per_class["overall"] = {
            "objects": sum(int(v["objects"]) for v in per_class.values()),
            **{k: float(np.nanmean([v[k] for v in per_class.values()])) for k in keys},
        }
        results[group] = per_class
    return results


def table(results: dict, group: str = "all") -> str:
    """One group's figures (``all`` or a GSD band) as a table, with the goals and whether they are met."""
    keys = ("box_AP50", "served_recall", "mask_AP50", "class_mIoU", "count_accuracy", "count_agrees")
    lines = [f"{group}: {'class':<15}{'objects':>8}" + "".join(f"{k:>15}" for k in keys) + "  goal", "-" * 128]
    for name, row in results.get(group, {}).items():
        goal = AP50_GOALS.get(name)
        status = "" if goal is None else f"AP50>={goal:g} {'met' if row['box_AP50'] >= goal else 'not met'}"
        if name == "overall":
            met = row["count_accuracy"] >= COUNT_GOAL
            status = f"count>={COUNT_GOAL:g} {'met' if met else 'not met'}"
        lines.append(
            f"{'':<{len(group) + 2}}{name:<15}{row['objects']:>8}"
            + "".join(f"{float(row[k]):>15.3f}" for k in keys)
            + f"  {status}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.eval.instances", description=__doc__.splitlines()[0])
    eval_arguments(parser, "scenes", "_instances")
    args = parse_eval_arguments(parser, argv)
    results = evaluate(args.model, args.split, args.count, args.size, args.threads, **generator_arguments(args))
    for group in ["all", *(name for name, _, _ in GSD_BANDS)]:
        if group in results:
            print(table(results, group))
    write_results(results, args, "_instances")
    return 0


if __name__ == "__main__":
    sys.exit(main())
