"""python -m training.eval --model resources/models/rsa-default --split test [--count N] [--size 512] [--out FILE]

Evaluates an RSA checkpoint folder on a held-out split of the Synthetic Earth (seeds disjoint
from training), through the engine's own ``rsa`` backend (RSABackend: the same prompt
formatting, resize, generation and answer parsing that serve a request), each scene being the
window: ``size`` pixels at its drawn pixel size, as the engine reads a region of that size.

Per scene: a caption (BLEU-4 and CIDEr against its five captions), a referring expression to
ground (Acc@0.5 of the first box, in the scene's pixels), a segment prompt (alternately a class
and a referring expression; mIoU and cIoU of the union of the returned masks), and a question
(VQA accuracy, exact match, also per question type). Per pair (every other one changed): the
change caption (BLEU-4 against its five change captions) and the changed/unchanged verdict.

Prints a table against the goals of the shipped default model and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rs_assistant.core.protocol import FeatureKind, Options, Task
from rs_assistant.engine.backends.base import BackendCall, BackendResult
from rs_assistant.engine.backends.rsa import RSABackend
from training.data.synthetic import CLASSES, generate_pair, generate_scene, split_seeds
from training.eval.metrics import accuracy_at_iou, binary_accuracy, caption_scores, mask_ious, vqa_accuracy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Goal:
    key: str
    minimum: float


#: The issue's goals for the shipped default model on the test split.
GOALS = (
    Goal("caption_CIDEr", 1.0),
    Goal("ground_acc@0.5", 0.6),
    Goal("segment_mIoU", 0.5),
    Goal("change_accuracy", 0.9),
)
METRIC_KEYS = (
    "caption_BLEU-4",
    "caption_CIDEr",
    "ground_acc@0.5",
    "segment_mIoU",
    "segment_cIoU",
    "change_BLEU-4",
    "change_accuracy",
    "vqa_accuracy",
)


#: Ground sampling distance bands (metres per pixel) the metrics are also reported in.
GSD_BANDS: tuple[tuple[str, float, float], ...] = (
    ("0.1-0.3 m", 0.1, 0.3),
    ("0.3-0.7 m", 0.3, 0.7),
    ("0.7-2 m", 0.7, 2.0),
)


def gsd_band(gsd: float) -> str:
    """The name of the GSD band ``gsd`` falls in (the last band includes its upper end and beyond)."""
    for name, low, high in GSD_BANDS:
        if gsd < high:
            return name if gsd >= low else GSD_BANDS[0][0]
    return GSD_BANDS[-1][0]


def evaluate(
    model: Path,
    split: str = "test",
    count: int = 100,
    size: int = 512,
    threads: int = 2,
    max_new_tokens: int = 64,
    pixel_size: bool = True,
    looks: bool = True,
) -> dict[str, float | int | str]:
    """The metrics of the checkpoint folder ``model`` on ``count`` scenes and ``count`` pairs of ``split``.

    ``pixel_size``: each call carries its scene's pixel size, as the engine's carry their window's (False: none,
    so the backend feeds every window as read); ``looks``: generator v2's looks (False: the plain look of v1)."""
    torch.set_num_threads(threads)
    backend = RSABackend("eval", {"path": str(model)}, device="cuda" if torch.cuda.is_available() else "cpu")
    backend.ensure_loaded()
    options = Options(max_new_tokens=max_new_tokens)
    gsd: float | None = None  # the pixel size of the scene or pair being asked about

    def ask(task: Task, images: Sequence[np.ndarray], prompt: str = "") -> BackendResult:
        call = BackendCall(
            task=task, images=list(images), prompt=prompt, options=options, pixel_size_m=gsd if pixel_size else None
        )
        return backend.run(call)

    refs: dict[str, list[str]] = {}
    caps: dict[str, str] = {}
    boxes_pred: list[tuple[float, float, float, float] | None] = []
    boxes_true: list[tuple[int, int, int, int]] = []
    masks_pred: list[np.ndarray] = []
    masks_true: list[np.ndarray] = []
    vqa_pred: list[str] = []
    vqa_true: list[str] = []
    vqa_kind: list[str] = []
    bands: dict[str, list[str]] = {"caption": [], "ground": [], "segment": [], "change": []}  # each sample's GSD band
    started = time.perf_counter()
    for i, seed in enumerate(tqdm(split_seeds(split, count), desc=f"eval scenes ({split})", dynamic_ncols=True)):
        scene = generate_scene(seed, size=size, looks=looks)
        gsd = scene.gsd
        rng = np.random.default_rng(seed)
        window = [scene.image]
        band = gsd_band(scene.gsd)
        refs[str(seed)] = list(scene.captions)
        caps[str(seed)] = ask(Task.CAPTION, window).text
        bands["caption"].append(band)
        ref = grounding_case(scene, rng)
        if ref is not None:
            found = [d for d in ask(Task.GROUND, window, f"find {ref.text}").detections if d.kind is FeatureKind.BOX]
            boxes_pred.append(found[0].box if found else None)
            boxes_true.append(ref.box)
            bands["ground"].append(band)
        prompt, target = segment_case(scene, i, rng)
        masks_pred.append(mask_union(ask(Task.SEGMENT, window, prompt), target))
        masks_true.append(target)
        bands["segment"].append(band)
        if scene.qa:
            qa = scene.qa[int(rng.integers(len(scene.qa)))]
            vqa_pred.append(ask(Task.CHAT, window, qa.question).text)
            vqa_true.append(qa.answer)
            vqa_kind.append(qa.kind)
    change_refs: dict[str, list[str]] = {}
    change_caps: dict[str, str] = {}
    verdicts: list[bool] = []
    truths: list[bool] = []
    for seed in tqdm(split_seeds(split, count), desc=f"eval pairs ({split})", dynamic_ncols=True):
        pair = generate_pair(seed, size=size, changed=seed % 2 == 1, looks=looks)
        gsd = pair.before.gsd
        text = ask(Task.CHANGE, [pair.before.image, pair.after.image]).text
        verdict, _, caption = text.partition(": ")
        verdicts.append(verdict.startswith("changed"))
        truths.append(pair.changed)
        bands["change"].append(gsd_band(pair.before.gsd))
        change_refs[str(seed)] = list(pair.captions)
        change_caps[str(seed)] = caption
    seconds = time.perf_counter() - started

    captions = caption_scores(refs, caps, metrics=("BLEU", "CIDEr"))
    change = caption_scores(change_refs, change_caps, metrics=("BLEU",))
    segments = mask_ious(masks_pred, masks_true)
    vqa = vqa_accuracy(vqa_pred, vqa_true, vqa_kind)
    results: dict[str, float | int | str] = {
        "model": str(model),
        "split": split,
        "count": count,
        "size": size,
        "pixel_size": pixel_size,
        "looks": looks,
        "caption_BLEU-4": captions["Bleu_4"],
        "caption_CIDEr": captions["CIDEr"],
        "ground_acc@0.5": accuracy_at_iou(boxes_pred, boxes_true, 0.5) if boxes_true else float("nan"),
        "segment_mIoU": segments["mIoU"],
        "segment_cIoU": segments["cIoU"],
        "change_BLEU-4": change["Bleu_4"],
        "change_accuracy": binary_accuracy(verdicts, truths),
        "vqa_accuracy": vqa.pop("accuracy"),
        **{f"vqa_{k}": v for k, v in vqa.items()},
        "seconds": round(seconds, 1),
    }
    by_gsd: dict[str, dict[str, float | int]] = {}
    seeds, nan = list(refs), float("nan")
    for name, _, _ in GSD_BANDS:
        mine = {task: [i for i, b in enumerate(found) if b == name] for task, found in bands.items()}
        if not any(mine.values()):
            continue

        def pick(values: Sequence, task: str, mine: dict = mine) -> list:
            return [values[i] for i in mine[task]]

        band_seeds = pick(seeds, "caption")
        band_caps = {s: refs[s] for s in band_seeds}, {s: caps[s] for s in band_seeds}
        by_gsd[name] = {
            "scenes": len(mine["caption"]),
            "pairs": len(mine["change"]),
            "caption_CIDEr": caption_scores(*band_caps, metrics=("CIDEr",))["CIDEr"] if band_seeds else nan,
            "ground_acc@0.5": accuracy_at_iou(pick(boxes_pred, "ground"), pick(boxes_true, "ground"), 0.5)
            if mine["ground"]
            else nan,
            "segment_mIoU": mask_ious(pick(masks_pred, "segment"), pick(masks_true, "segment"))["mIoU"]
            if mine["segment"]
            else nan,
            "change_accuracy": binary_accuracy(pick(verdicts, "change"), pick(truths, "change"))
            if mine["change"]
            else nan,
        }
    results["by_gsd"] = by_gsd  # type: ignore[assignment]
    return results


def band_table(results: dict) -> str:
    """The main metrics per GSD band (the bands the split has samples in)."""
    keys = ("caption_CIDEr", "ground_acc@0.5", "segment_mIoU", "change_accuracy")
    lines = [f"{'GSD band':<11}{'scenes':>7}{'pairs':>6}" + "".join(f"{k:>17}" for k in keys), "-" * 92]
    for name, row in results.get("by_gsd", {}).items():
        lines.append(
            f"{name:<11}{row['scenes']:>7}{row['pairs']:>6}" + "".join(f"{float(row[k]):>17.3f}" for k in keys)
        )
    return "\n".join(lines)


def grounding_case(scene, rng: np.random.Generator):
    """The referring expression grounded in ``scene`` (the next draw of ``rng``; the calibration and the
    breakdown draw it first from ``default_rng(seed)``, as :func:`evaluate` does), or None without any."""
    if not scene.referring:
        return None
    return scene.referring[int(rng.integers(len(scene.referring)))]


def mask_union(result: BackendResult, like: np.ndarray) -> np.ndarray:
    """The union of the masks a result holds, or an empty mask shaped like ``like``."""
    masks = [d.mask for d in result.detections if d.mask is not None]
    return np.logical_or.reduce(masks) if masks else np.zeros_like(like)


def segment_case(scene, index: int, rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """The segment prompt of the ``index``-th scene and its target mask: a referring expression
    for odd scenes that have one, else a class present in the scene."""
    if index % 2 and scene.referring:
        ref = scene.referring[int(rng.integers(len(scene.referring)))]
        return f"segment {ref.text}", scene.mask(ref.target)
    present = sorted({int(c) for c in np.unique(scene.class_map)} - {0})
    cls = present[int(rng.integers(len(present)))]
    return f"segment the {CLASSES[cls].plural}", scene.class_map == cls


def table(results: dict[str, float | int | str]) -> str:
    """The metrics, with the goals of the shipped model and whether each is met."""
    goals = {g.key: g.minimum for g in GOALS}
    lines = [f"{'metric':<18}{'value':>8}  {'goal':>6}  status", "-" * 44]
    for key in METRIC_KEYS:
        value = float(results[key])
        goal = goals.get(key)
        status = "" if goal is None else ("met" if value >= goal else "not met")
        lines.append(f"{key:<18}{value:>8.3f}  {'' if goal is None else f'>={goal:g}':>6}  {status}")
    return "\n".join(lines)


def eval_arguments(parser: argparse.ArgumentParser, counted: str, suffix: str = "") -> None:
    """The arguments every evaluation of a checkpoint on the Synthetic Earth takes (``counted``: what --count counts;
    ``suffix``: of the default JSON file's name)."""
    parser.add_argument(
        "--model", type=Path, default=Path("resources/models/rsa-default"), help="RSA checkpoint folder"
    )
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--count", type=int, default=100, help=f"{counted} (default 100)")
    parser.add_argument("--size", type=int, default=512, help="window side in pixels (default 512)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--pixel-size",
        choices=("scene", "none"),
        default="scene",
        help="scene: each call carries its scene's pixel size, as the engine's carry their window's, so the backend "
        "may feed a fine window at the scale its model was trained at; none: no pixel size (every window fed as read)",
    )
    parser.add_argument(
        "--plain", action="store_true", help="the plain look of generator v1 (looks=False), which the shipped model saw"
    )
    parser.add_argument("--out", type=Path, default=None, help=f"JSON file (default out/eval/MODEL_SPLIT{suffix}.json)")


def generator_arguments(args: argparse.Namespace) -> dict[str, bool]:
    """``pixel_size`` and ``looks`` for an ``evaluate`` from the arguments of :func:`eval_arguments`."""
    return {"pixel_size": args.pixel_size == "scene", "looks": not args.plain}


def parse_eval_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The parsed arguments of :func:`eval_arguments` (a --count under 1 refused), logging set up."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.count < 1:
        parser.error("--count must be at least 1")
    return args


def write_results(results: dict, args: argparse.Namespace, suffix: str = "") -> None:
    """The figures as JSON in --out (default out/eval/MODEL_SPLIT{suffix}.json)."""
    out = args.out or Path("out/eval") / f"{args.model.name}_{args.split}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"written to {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.eval", description=__doc__.splitlines()[0])
    eval_arguments(parser, "scenes, and as many pairs")
    args = parse_eval_arguments(parser, argv)
    results = evaluate(args.model, args.split, args.count, args.size, args.threads, **generator_arguments(args))
    print(table(results))
    print(band_table(results))
    write_results(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
