"""python -m training.eval.calibrate --model FOLDER [--split val] [--count 60] [--pairs 200] [--captions N] [--write]

Chooses an RSA checkpoint's serving thresholds on the validation split, never on the test
split the goals are measured on:

- ``mask_threshold`` (the probability above which a pixel belongs to a ``[SEG]`` mask): each
  scene's segment prompt (as training.eval asks it) is answered once per candidate threshold, and
  the threshold with the best mIoU wins;
- ``change_threshold`` (the changed/unchanged head's probability from which a pair counts as
  changed): the head's probability for ``--pairs`` pairs, every other one changed as in
  training.eval, and the candidate with the best accuracy wins (ties: the one nearest 0.5), if it
  beats 0.5 by more than the noise of that many pairs (else 0.5 stays).

- ``class_aware_masks`` and ``class_region_masks`` (models with a per-pixel class head only): the
  mask thresholds are tried with class-aware masks off, on, and on with referring masks snapped to
  the class region they overlap best, and the best mIoU of the three wins (ties: the plainer way).
  A checkpoint without ``class_names``/``class_nouns`` gets them from the objects of 100 train scenes.

- ``class_mask_bars`` (the same models, when class-aware masks win): for every class, the mean IoU
  over ``--count`` scenes of its pixels in the class head's map (those where it is the most
  probable class, and those whose probability reaches each bar in ``CLASS_BARS``) with the class's
  true pixels; a class keeps the bar that beats the most probable pixels most, if it does so by
  more than ``MIN_BAR_GAIN``.

- ``class_aware_boxes`` (the same models): each scene's referring expression is grounded with
  boxes snapped to the class head's regions and without, and snapping stays on only if its Acc@0.5
  is higher.

- ``box_mask_threshold`` (models with ``box_from_mask`` only: the probability above which a
  pixel belongs to a box's region): each scene's referring expression (as training.eval grounds
  it) is grounded once per candidate, and the best Acc@0.5 wins (ties: the one nearest 0.5).

- ``caption_num_beams`` and ``caption_length_penalty`` (how captions are decoded), only when
  ``--captions N`` asks: the captions of N scenes, decoded each way in ``CAPTION_DECODINGS``, and
  the best CIDEr wins (ties: fewer beams). Off by default: on the shipped v4, 100 val scenes
  preferred 3 beams without length normalisation (CIDEr 0.988 -> 1.087), and on the test scenes
  that decoding lost (0.961 -> 0.944).

With ``--write`` they go into the folder's config.json; the engine then serves with them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rs_assistant.core.protocol import FeatureKind, Options, Task
from rs_assistant.engine.backends.base import BackendCall
from rs_assistant.engine.backends.rsa import ClassRegions, RSABackend
from training.data.synthetic import generate_pair, generate_scene, split_seeds
from training.data.synthetic.classes import class_vocabulary
from training.eval.metrics import accuracy_at_iou, caption_scores, mask_iou, mask_ious
from training.eval.rsa import grounding_case, mask_union, segment_case

THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
CHANGE_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))
BOX_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: The class probabilities tried as a class's mask bar (class_mask_bars).
CLASS_BARS = (0.5, 0.4, 0.3, 0.2, 0.15, 0.1)
#: ... and a bar is kept only if its mean IoU beats the most probable pixels' by more than this (not by noise).
MIN_BAR_GAIN = 0.005
#: (beams, length penalty): greedy, beam search normalised by length, and by total log-probability.
CAPTION_DECODINGS = ((1, 1.0), (3, 1.0), (3, 0.0), (5, 1.0), (5, 0.0))


def load_backend(model: Path, split: str) -> RSABackend:
    """The checkpoint folder ``model`` through the engine's backend, refused for the test split."""
    if split == "test":
        raise ValueError("calibrate on the train or val split: the test split is what the goals are measured on")
    backend = RSABackend("calibrate", {"path": str(model)}, device="cuda" if torch.cuda.is_available() else "cpu")
    backend.ensure_loaded()
    return backend


def calibrate(
    backend: RSABackend, split: str = "val", count: int = 60, size: int = 512, thresholds: Sequence[float] = THRESHOLDS
) -> dict[float, float]:
    """mIoU of the segment prompts of ``count`` scenes of ``split`` for each threshold."""
    predicted: dict[float, list[np.ndarray]] = {t: [] for t in thresholds}
    targets: list[np.ndarray] = []
    for i, seed in enumerate(tqdm(split_seeds(split, count), desc=f"calibrate ({split})", dynamic_ncols=True)):
        scene = generate_scene(seed, size=size)
        prompt, target = segment_case(scene, i, np.random.default_rng(seed))
        targets.append(target)
        for threshold in thresholds:
            backend.model.config.mask_threshold = threshold
            call = BackendCall(task=Task.SEGMENT, images=[scene.image], prompt=prompt, options=Options())
            predicted[threshold].append(mask_union(backend.run(call), target))
    return {t: mask_ious(predicted[t], targets)["mIoU"] for t in thresholds}


def class_mask_ious(
    backend: RSABackend, split: str = "val", count: int = 60, size: int = 512, bars: Sequence[float] = CLASS_BARS
) -> dict[str, dict[float | None, float]]:
    """Per class present in ``count`` scenes of ``split``: the mean IoU of its pixels in the class head's map
    with its true pixels, for the most probable pixels (key None) and for each probability ``bars``."""
    model = backend.model
    ious: dict[str, dict[float | None, list[float]]] = {}
    with torch.inference_mode():
        for seed in tqdm(split_seeds(split, count), desc=f"class mask bars ({split})", dynamic_ncols=True):
            scene = generate_scene(seed, size=size)
            visual = model.encode_images(backend.processor.pixel_values([scene.image]).to(model.device, model.dtype))
            regions = ClassRegions(model, visual, 0, scene.class_map.shape, scene.image)
            probabilities, classes = regions.probabilities(), regions.classes()
            for cls in sorted(set(np.unique(scene.class_map).tolist()) - {0}):
                truth = torch.from_numpy(scene.class_map == cls).to(classes.device)
                row = ious.setdefault(str(model.config.class_names[cls]), {bar: [] for bar in (None, *bars)})
                for bar in row:
                    mask = classes == cls if bar is None else probabilities[cls] >= bar
                    row[bar].append(mask_iou(mask, truth))
    return {name: {bar: float(np.mean(values)) for bar, values in row.items()} for name, row in ious.items()}


def best_class_bars(ious: dict[str, dict[float | None, float]]) -> dict[str, float]:
    """Each class's bar whose IoU beats its most probable pixels' most, by more than :data:`MIN_BAR_GAIN`
    (classes where none does are left out)."""
    chosen = {}
    for name, row in ious.items():
        bar = max((b for b in row if b is not None), key=lambda b: (row[b], b))
        if row[bar] > row[None] + MIN_BAR_GAIN:
            chosen[name] = bar
    return chosen


def box_accuracies(
    backend: RSABackend,
    split: str = "val",
    count: int = 60,
    size: int = 512,
    thresholds: Sequence = BOX_THRESHOLDS,
    key: str = "box_mask_threshold",
) -> dict:
    """Acc@0.5 of the referring expressions of ``count`` scenes of ``split`` (the one training.eval
    grounds in each) for each value of the config's ``key`` (``box_mask_threshold``, or ``class_aware_boxes``)."""
    predicted: dict = {t: [] for t in thresholds}
    targets = []
    for seed in tqdm(split_seeds(split, count), desc=f"box regions ({split})", dynamic_ncols=True):
        scene = generate_scene(seed, size=size)
        ref = grounding_case(scene, np.random.default_rng(seed))
        if ref is None:
            continue
        targets.append(ref.box)
        for threshold in thresholds:
            setattr(backend.model.config, key, threshold)
            call = BackendCall(task=Task.GROUND, images=[scene.image], prompt=f"find {ref.text}", options=Options())
            found = [d.box for d in backend.run(call).detections if d.kind is FeatureKind.BOX]
            predicted[threshold].append(found[0] if found else None)
    return {t: accuracy_at_iou(predicted[t], targets, 0.5) if targets else 0.0 for t in thresholds}


def caption_cider(
    backend: RSABackend,
    split: str = "val",
    count: int = 100,
    size: int = 512,
    decodings: Sequence[tuple[int, float]] = CAPTION_DECODINGS,
) -> dict[tuple[int, float], float]:
    """CIDEr of the captions of ``count`` scenes of ``split`` for each (beams, length penalty)."""
    refs: dict[str, list[str]] = {}
    captions: dict[tuple[int, float], dict[str, str]] = {d: {} for d in decodings}
    config = backend.model.config
    for seed in tqdm(split_seeds(split, count), desc=f"captions ({split})", dynamic_ncols=True):
        scene = generate_scene(seed, size=size)
        refs[str(seed)] = list(scene.captions)
        for beams, penalty in decodings:
            config.caption_num_beams, config.caption_length_penalty = beams, penalty
            call = BackendCall(task=Task.CAPTION, images=[scene.image], options=Options())
            captions[(beams, penalty)][str(seed)] = backend.run(call).text
    return {d: caption_scores(refs, captions[d], metrics=("CIDEr",))["CIDEr"] for d in decodings}


def change_probabilities(
    backend: RSABackend, split: str = "val", count: int = 200, size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """The changed/unchanged head's probability for ``count`` pairs of ``split`` (odd seeds changed), and the truth."""
    probabilities, truths = [], []
    for seed in tqdm(split_seeds(split, count), desc=f"change pairs ({split})", dynamic_ncols=True):
        pair = generate_pair(seed, size=size, changed=seed % 2 == 1)
        pixels = backend.processor.pixel_values([(pair.before.image, pair.after.image)])
        with torch.inference_mode():
            logits = backend.model.encode_images(pixels.to(backend.device, backend.model.dtype)).change_logits
        probabilities.append(float(torch.sigmoid(logits.float()).reshape(-1)[0]))
        truths.append(pair.changed)
    return np.array(probabilities), np.array(truths, bool)


def train_vocabulary(count: int = 100, size: int = 256) -> tuple[list[str], dict[str, int]]:
    """``class_names`` and ``class_nouns`` from the objects' kinds in ``count`` train scenes (for a checkpoint
    trained before the recipe wrote them)."""
    named = []
    for seed in split_seeds("train", count):
        named += [(o.kind, int(o.cls)) for o in generate_scene(seed, size=size).objects]
    return class_vocabulary(named)


def best_change_threshold(
    probabilities: np.ndarray, truths: np.ndarray, thresholds: Sequence[float] = CHANGE_THRESHOLDS
) -> tuple[float, dict[float, float]]:
    """The threshold with the best accuracy (ties: nearest 0.5), and every candidate's accuracy.

    0.5 stays unless the best beats it by ``1 / sqrt(n)`` (about two standard errors of an accuracy
    on ``n`` pairs): on the shipped v3 model, 200 validation pairs preferred 0.15 by 0.035, and
    that choice lost 0.06 on the test pairs. A threshold fitted to noise is worse than none.
    """
    accuracy = {t: float(np.mean((probabilities >= t) == truths)) for t in thresholds}
    best = max(accuracy, key=lambda t: (accuracy[t], -abs(t - 0.5)))
    neutral = float(np.mean((probabilities >= 0.5) == truths))
    if accuracy[best] - neutral < 1 / np.sqrt(max(len(truths), 1)):
        best = 0.5
    return best, accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.eval.calibrate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="RSA checkpoint folder")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--pairs", type=int, default=200, help="pairs for the change threshold (0: leave it)")
    parser.add_argument(
        "--captions", type=int, default=0, help="scenes to choose the caption decoding on (default 0: leave it)"
    )
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--write", action="store_true", help="write the best threshold into the folder's config.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    config_file = args.model / "config.json"
    if not config_file.is_file():
        parser.error(f"{args.model} holds no config.json: not an RSA checkpoint folder")
    backend = load_backend(args.model, args.split)
    model_config = backend.model.config
    chosen: dict = {}
    modes = ((False, False),)  # (class_aware_masks, class_region_masks)
    if model_config.pixel_class_loss_weight > 0:
        modes = ((False, False), (True, False), (True, True))
        if not model_config.class_nouns:
            names, nouns = train_vocabulary()
            model_config.class_names, model_config.class_nouns = names, nouns
            chosen.update(class_names=names, class_nouns=nouns)
    scores = {}
    for aware, region in modes:
        model_config.class_aware_masks, model_config.class_region_masks = aware, region
        scores.update(
            {(aware, region, t): miou for t, miou in calibrate(backend, args.split, args.count, args.size).items()}
        )
    best = max(scores, key=lambda k: (scores[k], not k[0], not k[1], k[2]))  # ties: the plainer way
    for (aware, region, threshold), miou in scores.items():
        mode = "class-region masks  " if region else "class-aware masks  " if aware else ""
        mark = "  <- best" if (aware, region, threshold) == best else ""
        print(f"{mode}mask_threshold {threshold:.2f}  mIoU {miou:.3f}{mark}")
    model_config.class_aware_masks, model_config.class_region_masks, model_config.mask_threshold = best
    chosen["mask_threshold"] = best[2]
    if len(modes) > 1:
        chosen["class_aware_masks"], chosen["class_region_masks"] = best[0], best[1]
    if best[0]:  # class-aware masks: a bar per class for its own name's mask
        ious = class_mask_ious(backend, args.split, args.count, args.size)
        bars = best_class_bars(ious)
        for name, row in sorted(ious.items()):
            picked = bars.get(name)
            print(
                f"class_mask_bars {name}: "
                + "  ".join(
                    f"{'argmax' if b is None else b}: {v:.3f}{'*' if b == picked else ''}" for b, v in row.items()
                )
            )
        chosen["class_mask_bars"] = model_config.class_mask_bars = bars or None
    if len(modes) > 1:  # a per-pixel class head: boxes snapped to its regions, or not
        accuracy = box_accuracies(backend, args.split, args.count, args.size, (False, True), "class_aware_boxes")
        snap = accuracy[True] > accuracy[False]
        for value, acc in accuracy.items():
            print(f"class_aware_boxes {value}  Acc@0.5 {acc:.3f}{'  <- best' if value == snap else ''}")
        chosen["class_aware_boxes"] = model_config.class_aware_boxes = snap
    if backend.model.config.box_from_mask:
        accuracy = box_accuracies(backend, args.split, args.count, args.size)
        box = max(accuracy, key=lambda t: (accuracy[t], -abs(t - 0.5)))
        for threshold, value in accuracy.items():
            print(f"box_mask_threshold {threshold:.2f}  Acc@0.5 {value:.3f}{'  <- best' if threshold == box else ''}")
        chosen["box_mask_threshold"] = box
    if args.captions > 0:
        cider = caption_cider(backend, args.split, args.captions, args.size)
        decoding = max(cider, key=lambda d: (cider[d], -d[0]))
        for (beams, penalty), value in cider.items():
            mark = "  <- best" if (beams, penalty) == decoding else ""
            print(f"caption_num_beams {beams} caption_length_penalty {penalty:.1f}  CIDEr {value:.3f}{mark}")
        chosen["caption_num_beams"], chosen["caption_length_penalty"] = decoding
    if args.pairs > 0:
        change, accuracy = best_change_threshold(*change_probabilities(backend, args.split, args.pairs, args.size))
        for threshold, value in accuracy.items():
            print(f"change_threshold {threshold:.2f}  accuracy {value:.3f}{'  <- best' if threshold == change else ''}")
        chosen["change_threshold"] = change
    if args.write:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config.update(chosen)
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {', '.join(f'{k} {v}' for k, v in chosen.items())} to {config_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
