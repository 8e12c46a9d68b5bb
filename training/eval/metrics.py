"""The metrics the seed papers report, computed the way they compute them.

Captioning uses pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr; PTB tokenisation, which needs
Java); SPICE is left out because it downloads models. Grounding is Acc@0.5 on boxes already
converted back to original pixels; segmentation is mIoU (mean of per-sample IoU) and cIoU
(cumulative intersection over cumulative union); retrieval is R@1/5/10 and their mean.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from rs_assistant.engine.backends import boxes

log = logging.getLogger(__name__)

Box = Sequence[float]  # x0, y0, x1, y1


# --- captioning --------------------------------------------------------------------------------


def caption_scores(
    references: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    metrics: Iterable[str] = ("BLEU", "METEOR", "ROUGE_L", "CIDEr"),
) -> dict[str, float]:
    """Corpus-level caption metrics over samples keyed by id (every prediction needs references).

    Returns keys Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr (those asked for), as fractions (CIDEr
    is not bounded by 1; papers often print these x100).
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise ValueError(f"{len(missing)} prediction(s) have no reference caption, e.g. {missing[:3]}")
    if not predictions:
        raise ValueError("no predictions to score")
    keys = list(predictions)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in references[k]] for k in keys})
    res = tokenizer.tokenize({k: [{"caption": predictions[k] or ""}] for k in keys})
    wanted = set(metrics)
    out: dict[str, float] = {}
    if "BLEU" in wanted:
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"Bleu_{i + 1}": float(v) for i, v in enumerate(bleu)})
    if "METEOR" in wanted:
        from pycocoevalcap.meteor.meteor import Meteor

        out["METEOR"] = float(Meteor().compute_score(gts, res)[0])
    if "ROUGE_L" in wanted:
        from pycocoevalcap.rouge.rouge import Rouge

        out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    if "CIDEr" in wanted:
        from pycocoevalcap.cider.cider import Cider

        out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return out


# --- grounding ---------------------------------------------------------------------------------


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes, as the engine computes it (rs_assistant.engine.backends.boxes.iou)."""
    return boxes.iou(a, b)


def accuracy_at_iou(predictions: Sequence[Box | None], targets: Sequence[Box], threshold: float = 0.5) -> float:
    """Acc@threshold for referring grounding: one predicted box per target; None counts as a miss."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        raise ValueError("no targets to score")
    hits = sum(1 for p, t in zip(predictions, targets) if p is not None and box_iou(p, t) >= threshold)
    return hits / len(targets)


# --- segmentation ------------------------------------------------------------------------------


def mask_iou(a, b) -> float:
    """The IoU of two bool masks (numpy arrays or torch tensors of one shape); 1 when both are empty, as in
    :func:`mask_ious`."""
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 1.0


def mask_ious(predictions: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> dict[str, float]:
    """mIoU (mean of per-sample IoU; an empty prediction for an empty target scores 1) and cIoU."""
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predicted masks for {len(targets)} targets")
    if not targets:
        raise ValueError("no masks to score")
    per_sample, inter_sum, union_sum = [], 0, 0
    for pred, target in zip(predictions, targets):
        pred, target = np.asarray(pred, bool), np.asarray(target, bool)
        if pred.shape != target.shape:
            raise ValueError(f"mask shapes differ: {pred.shape} vs {target.shape}")
        inter = int(np.logical_and(pred, target).sum())
        union = int(np.logical_or(pred, target).sum())
        per_sample.append(inter / union if union else 1.0)
        inter_sum += inter
        union_sum += union
    return {"mIoU": float(np.mean(per_sample)), "cIoU": inter_sum / union_sum if union_sum else 1.0}


# --- classification-like answers -----------------------------------------------------------------


def normalise_answer(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


def vqa_accuracy(
    predictions: Sequence[str], answers: Sequence[str], question_types: Sequence[str] | None = None
) -> dict[str, float]:
    """Exact-match accuracy after normalisation, overall and per question type (RSVQA style)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("no answers to score")
    types = question_types or ["all"] * len(answers)
    per_type: dict[str, list[bool]] = defaultdict(list)
    for pred, ans, qtype in zip(predictions, answers, types):
        per_type[qtype].append(normalise_answer(pred) == normalise_answer(ans))
    out = {f"accuracy_{k}": float(np.mean(v)) for k, v in sorted(per_type.items())}
    out["accuracy"] = float(np.mean([x for v in per_type.values() for x in v]))
    return out


def binary_accuracy(predictions: Sequence[bool], targets: Sequence[bool]) -> float:
    """E.g. changed/unchanged accuracy for change captioning."""
    if len(predictions) != len(targets) or not targets:
        raise ValueError("predictions and targets must be non-empty and of equal length")
    return float(np.mean([bool(p) == bool(t) for p, t in zip(predictions, targets)]))


# --- retrieval ---------------------------------------------------------------------------------


def recall_at_k(
    similarity: np.ndarray, ground_truth: Sequence[set[int] | int], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """R@K for queries (rows) against a gallery (columns); ``ground_truth[i]`` lists row i's matches.

    Returns R@1, R@5, R@10 and their mean ``mR`` (the papers' "mean recall" averages the R@K of
    both directions: call this twice, once transposed, and average).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != len(ground_truth):
        raise ValueError(f"similarity {sim.shape} does not match {len(ground_truth)} queries")
    order = np.argsort(-sim, axis=1)
    out = {}
    for k in ks:
        hits = [
            bool({int(x) for x in order[i, :k]} & (gt if isinstance(gt, set) else {int(gt)}))
            for i, gt in enumerate(ground_truth)
        ]
        out[f"R@{k}"] = float(np.mean(hits))
    out["mR"] = float(np.mean([out[f"R@{k}"] for k in ks]))
    return out


def image_text_retrieval(
    similarity: np.ndarray, text_image: Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Cross-modal retrieval as RSICD/RSITMD papers (and GeoRSCLIP) report it.

    ``similarity`` is images x texts; ``text_image[j]`` is the image that text j describes (each image
    has several texts). Text retrieval (an image queries the texts, a hit when any of its own texts
    is in the top K) gives ``i2t_R@K``; image retrieval (a text queries the images) gives ``t2i_R@K``;
    ``mR`` is the mean of all six recalls (the papers' "mean recall", also written mR or R_mean).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    owners = np.asarray(text_image, dtype=np.int64)
    if sim.ndim != 2 or sim.shape[1] != len(owners):
        raise ValueError(f"similarity {sim.shape} does not match {len(owners)} texts")
    if len(owners) and (owners.min() < 0 or owners.max() >= sim.shape[0]):
        raise ValueError(f"text_image names images outside 0..{sim.shape[0] - 1}")
    texts_of = [set(np.flatnonzero(owners == i).tolist()) for i in range(sim.shape[0])]
    i2t = recall_at_k(sim, texts_of, ks)
    t2i = recall_at_k(sim.T, owners.tolist(), ks)
    out = {f"i2t_R@{k}": i2t[f"R@{k}"] for k in ks}
    out.update({f"t2i_R@{k}": t2i[f"R@{k}"] for k in ks})
    out["mR"] = float(np.mean([out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks]))
    return out
