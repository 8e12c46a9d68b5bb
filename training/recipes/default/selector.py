"""python -m training.recipes.default.selector --model FOLDER [--scenes 2000] [--epochs 8] [--out FOLDER]

The RSA model's last training stage: its region selector (RSARegionSelector, regions.py), trained
on the frozen rest of the model, then written back into the checkpoint folder (``--out``, by
default the same folder) with ``region_selector_dim`` in its config.

For every referring expression of ``scenes`` train scenes (seeds disjoint from val and test), drawn
as the engine reads a window of ``size`` pixels, it asks the model once as a grounding and once as
a segmentation, each teacher-forced up to the answer's noun: the candidates are the regions of the
target's class that regions.candidate_regions proposes from the class head's map (connected,
joined across one-cell gaps, and straight bands; ClassRegions, as served), the query the
hidden state that writes the box or the ``[SEG]`` with the mean state of the user's turn, and the
target the candidate whose extent (grounding) or pixels (segmentation) best match the object's,
when that IoU reaches ``MIN_TARGET_IOU``. The selector learns to pick it (cross-entropy over the
candidates), with a progress bar; nothing else in the model changes.

On the shipped v11 weights (2 CPU cores): 2000 scenes give 30,412 examples, and with 8 epochs the
whole stage takes 28 minutes (README).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

# Before torch starts OpenMP (as training/__main__): idle threads sleep rather than spin, so the processes
# that generate scenes on the same cores are not starved.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from rs_assistant.core.protocol import Task  # noqa: E402
from rs_assistant.engine.backends.boxes import iou as box_iou  # noqa: E402
from rs_assistant.engine.backends.rsa import ClassRegions  # noqa: E402
from rs_assistant.engine.models.rsa import RSAForConditionalGeneration, RSAProcessor  # noqa: E402
from rs_assistant.engine.models.rsa.modeling_rsa import RSARegionSelector  # noqa: E402
from training.data.synthetic import generate_scene, split_seeds  # noqa: E402
from training.eval.metrics import mask_iou  # noqa: E402
from training.recipes.default.stages import load_frozen, stage_parser, train_epochs, write_back  # noqa: E402

log = logging.getLogger(__name__)

#: A candidate counts as the target only from this IoU with the object on (else the example is left out).
MIN_TARGET_IOU = 0.3


@dataclass(frozen=True)
class Example:
    """One question for the selector: ``query [Q]``, candidate ``features [K, F]``, the IoU of each
    candidate with the object (of its extent for ``ground``, of its pixels for ``segment``) and the
    instruction's token embeddings ``words [L, D]``."""

    task: str
    rule: str
    query: torch.Tensor
    features: torch.Tensor
    ious: torch.Tensor
    words: torch.Tensor

    @property
    def target(self) -> int:
        return int(self.ious.argmax())

    @property
    def usable(self) -> bool:
        return float(self.ious.max()) >= MIN_TARGET_IOU


def _scene(args: tuple[int, int]):
    seed, size = args
    scene = generate_scene(seed, size=size)
    return (
        scene.image,
        scene.class_map,
        scene.instance_map,
        [(r.text, r.target, r.box, r.noun, r.rule) for r in scene.referring],
    )


def scenes(seeds: Sequence[int], size: int, workers: int) -> Iterator[tuple]:
    """``(image, class map, instance map, referring)`` of each seed, generated in ``workers`` processes."""
    if workers <= 1:
        yield from map(_scene, ((s, size) for s in seeds))
        return
    with get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_scene, [(s, size) for s in seeds])


@torch.inference_mode()
def examples_of_scene(
    model: RSAForConditionalGeneration,
    processor: RSAProcessor,
    image: np.ndarray,
    class_map: np.ndarray,
    instance_map: np.ndarray,
    referring: Sequence[tuple],
) -> list[Example]:
    """The selector's examples for one scene's referring expressions (two each: ground and segment)."""
    if not referring:
        return []
    height, width = class_map.shape
    pixels = processor.pixel_values([image]).to(model.device, model.dtype)
    visual = model.encode_images(pixels)
    regions = ClassRegions(model, visual, 0, (height, width), image)
    texts = []
    for text, _, box, noun, _ in referring:
        texts.append(
            processor.format_prompt(
                Task.GROUND, f"find {text}", answer=processor.ground_answer([(noun, box)], (width, height))
            )
        )
        texts.append(processor.format_prompt(Task.SEGMENT, f"segment {text}", answer=f"{noun} [SEG]"))
    batch = processor(texts, [image] * len(texts))
    ids = batch["input_ids"].to(model.device)
    repeated = type(visual)(tokens=visual.tokens.expand(len(texts), -1, -1))
    hidden = model.language_model(
        inputs_embeds=model.embed(ids, repeated),
        attention_mask=batch["attention_mask"].to(model.device),
        output_hidden_states=True,
        use_cache=False,
    ).hidden_states[-1]
    instructions = model.instructions(ids, hidden)
    queries = model.box_queries(ids)
    queries[:, :-1] |= ids[:, 1:] == model.config.seg_token_id
    found = []
    for j, (_, target, box, noun, rule) in enumerate(referring):
        cls = regions.class_of(noun)
        if cls is None:
            continue
        count = len(regions.candidates(cls)[0])
        if not count:
            continue
        features = regions.region_features(cls).half().cpu()
        target_mask = torch.from_numpy(instance_map == target).to(model.device)
        for row, task in ((2 * j, "ground"), (2 * j + 1, "segment")):
            position = int(queries[row].nonzero()[0, 0])
            query = torch.cat([hidden[row, position], instructions[row].state]).float().half().cpu()
            if task == "ground":
                ious = [box_iou(regions.region_box(cls, k), box) for k in range(1, count + 1)]
            else:
                ious = [mask_iou(regions.candidate_pixels(cls, k), target_mask) for k in range(1, count + 1)]
            found.append(
                Example(
                    task,
                    rule,
                    query,
                    features,
                    torch.tensor(ious, dtype=torch.float32),
                    instructions[row].words.float().half().cpu(),
                )
            )
    return found


def collect(
    model: RSAForConditionalGeneration,
    processor: RSAProcessor,
    seeds: Sequence[int],
    size: int = 512,
    workers: int = 2,
    desc: str = "selector examples",
) -> list[Example]:
    """The examples of every referring expression of the scenes ``seeds``."""
    found: list[Example] = []
    for image, class_map, instance_map, referring in tqdm(
        scenes(seeds, size, workers), total=len(seeds), desc=desc, dynamic_ncols=True
    ):
        found += examples_of_scene(model, processor, image, class_map, instance_map, referring)
    return found


def fit(
    selector: RSARegionSelector,
    examples: Sequence[Example],
    epochs: int = 6,
    lr: float = 1e-3,
    batch: int = 32,
    seed: int = 0,
) -> list[float]:
    """Trains ``selector`` (standardised by the examples' statistics first) on the usable examples; the mean
    loss of each epoch."""
    usable = [e for e in examples if e.usable]
    if not usable:
        raise ValueError("no example has a candidate region that matches its object: is the class head trained?")
    selector.set_statistics(
        torch.cat([e.features.float() for e in usable]), torch.stack([e.query.float() for e in usable])
    )

    def loss_of(chosen: list[Example]) -> torch.Tensor:
        return torch.stack(
            [
                F.cross_entropy(
                    selector(e.query.float(), e.features.float(), e.words.float())[None], torch.tensor([e.target])
                )
                for e in chosen
            ]
        ).mean()

    return train_epochs(selector, usable, loss_of, epochs, lr, batch, seed, "selector")


@torch.no_grad()
def accuracy(selector: RSARegionSelector, examples: Sequence[Example]) -> dict[str, float]:
    """Over all ``examples`` (usable or not): grounding Acc@0.5 and mean mask IoU of the picked regions,
    and the same for the best candidate (what a perfect selector would reach)."""
    picked = {"ground": [], "segment": []}
    best = {"ground": [], "segment": []}
    for e in examples:
        iou = float(e.ious[int(selector(e.query.float(), e.features.float(), e.words.float()).argmax())])
        picked[e.task].append(iou >= 0.5 if e.task == "ground" else iou)
        best[e.task].append(float(e.ious.max()) >= 0.5 if e.task == "ground" else float(e.ious.max()))
    mean = lambda values: float(np.mean(values)) if values else float("nan")  # noqa: E731
    return {
        "ground_acc@0.5": mean(picked["ground"]),
        "segment_mean_iou": mean(picked["segment"]),
        "best_ground_acc@0.5": mean(best["ground"]),
        "best_segment_mean_iou": mean(best["segment"]),
    }


def train_selector(
    folder: Path,
    out: Path | None = None,
    scenes_count: int = 2000,
    val_count: int = 40,
    epochs: int = 8,
    dim: int = 128,
    size: int = 512,
    workers: int = 2,
    threads: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Adds a trained region selector to the checkpoint ``folder`` and saves it to ``out`` (default: ``folder``)."""
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    started = time.perf_counter()
    processor, model, saved_dtype = load_frozen(folder, region_selector_dim=dim)
    if model.config.pixel_class_loss_weight <= 0 or not model.config.class_nouns:
        raise ValueError(f"{folder}: the region selector needs a model with the per-pixel class head and class_nouns")
    selector = RSARegionSelector(model.config)  # fresh, whatever the folder held
    train = collect(model, processor, split_seeds("train", scenes_count), size, workers, "selector examples (train)")
    val = (
        collect(model, processor, split_seeds("val", val_count), size, workers, "selector examples (val)")
        if val_count
        else []
    )
    losses = fit(selector, train, epochs, seed=seed)
    model.region_selector = selector.to(model.device)
    results = {
        "examples": len(train),
        "usable": sum(e.usable for e in train),
        "final_loss": losses[-1],
        **{f"val_{k}": v for k, v in accuracy(selector, val).items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    target = write_back(model, processor, folder, out, saved_dtype)
    log.info("region selector written to %s: %s", target, results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(
        "python -m training.recipes.default.selector", __doc__.splitlines()[0], scenes=2000, epochs=8, threads=1
    )
    parser.add_argument("--dim", type=int, default=128, help="the selector's width (default 128)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.scenes < 1 or args.epochs < 1 or args.dim < 1:
        parser.error("--scenes, --epochs and --dim must be positive")
    results = train_selector(
        args.model, args.out, args.scenes, args.val, args.epochs, args.dim, args.size, args.workers, args.threads
    )
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
