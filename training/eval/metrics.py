"""The metrics the seed papers report, computed the way their authors' evaluation code computes them.

Captioning uses pycocoevalcap's scorers (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D; METEOR needs Java);
SPICE is left out because it downloads models. What differs between papers is the tokenisation
in front of the scorers, so ``caption_scores`` takes ``tokenizer``:

- ``"ptb"`` (default): pycocoevalcap's PTB tokenizer (lower-cases, drops punctuation), what the
  COCO-style captioning papers (RSICD, UCM-Captions, Sydney-Captions, SkyEyeGPT's tables) report.
- ``"chg2cap"``: Chg2Cap / LEVIR-CC's own tokenisation (``preprocess_data.tokenize``: ``,`` and ``;``
  become words, ``.`` and ``?`` are removed, split on spaces, no lower-casing), no PTB.
- ``"split"``: the text split on white space as given (SECOND-CC / MModalCC score the JSON's
  ``tokens``; join them with spaces).

With ``vocabulary`` (word -> id, as Chg2Cap's ``vocab.json`` or RSICCformer's word map) every word is
replaced by its id before scoring, as the change-captioning authors do: rare words collapse into the
unknown id and METEOR then matches exact ids only (no stems, synonyms or paraphrases).

Grounding is Acc@0.5 on boxes already converted back to original pixels (TransVG / RSVG's rule:
IoU >= threshold, prediction clamped to the image when sizes are given); segmentation is mIoU (mean
of per-sample IoU, LISA's gIoU) and cIoU (cumulative intersection over cumulative union); retrieval
is R@1/5/10 and their mean, as GeoRSCLIP's ``retrieval_evaluation`` computes them.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from rs_assistant.engine.backends import boxes

log = logging.getLogger(__name__)

Box = Sequence[float]  # x0, y0, x1, y1
TOKENIZERS = ("ptb", "chg2cap", "split")

# The sentences the change-captioning authors' test scripts count as "no change" (compared with the
# tokenised reference, words joined by single spaces). LEVIR-CC: Chg2Cap's test.py, on the first
# reference. SECOND-CC: MModalCC's eval_MModalCC.py, on the second reference.
LEVIR_CC_UNCHANGED = (
    "the scene is the same as before",
    "there is no difference",
    "the two scenes seem identical",
    "no change has occurred",
    "almost nothing has changed",
)
SECOND_CC_UNCHANGED = (
    "the scene is the same as before",
    "there is no difference",
    "the two scenes seem identical",
    "no change is occurred",
    "almost nothing is changed",
)


# --- captioning --------------------------------------------------------------------------------


def chg2cap_tokenize(text: str) -> list[str]:
    """Chg2Cap's caption tokenisation: ``,``/``;`` split off as words, ``.``/``?`` removed, split on spaces.

    Case is kept (LEVIR-CC's captions are lower case already); empty words are dropped.
    """
    for mark in (",", ";"):
        text = text.replace(mark, " " + mark)
    for mark in ("?", "."):
        text = text.replace(mark, "")
    return [word for word in text.split(" ") if word]


def caption_vocabulary(
    token_lists: Iterable[Sequence[str]],
    min_count: int = 5,
    specials: Sequence[str] = ("<NULL>", "<UNK>", "<START>", "<END>"),
) -> dict[str, int]:
    """A word -> id map as Chg2Cap's ``build_vocab`` makes it: the special tokens first, then every word
    seen at least ``min_count`` times, in sorted order (Chg2Cap builds it over all LEVIR-CC captions
    with ``min_count`` 5)."""
    counts = Counter(word for tokens in token_lists for word in tokens)
    vocabulary = {token: i for i, token in enumerate(specials)}
    for word, count in sorted(counts.items()):
        if word not in vocabulary and count >= min_count:
            vocabulary[word] = len(vocabulary)
    return vocabulary


def _tokenize(texts: Mapping[str, Sequence[str]], tokenizer: str) -> dict[str, list[str]]:
    """Each key's texts as space-joined words, tokenised the way ``tokenizer`` says."""
    if tokenizer == "ptb":
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        return PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in texts.items()})
    split = chg2cap_tokenize if tokenizer == "chg2cap" else str.split
    return {k: [" ".join(split(c)) for c in v] for k, v in texts.items()}


def _to_ids(texts: dict[str, list[str]], vocabulary: Mapping[str, int], unknown: str) -> dict[str, list[str]]:
    if unknown not in vocabulary:
        raise ValueError(f"vocabulary has no unknown-word entry {unknown!r}; pass unknown= with its key")
    fallback = vocabulary[unknown]
    return {k: [" ".join(str(vocabulary.get(w, fallback)) for w in c.split()) for c in v] for k, v in texts.items()}


def caption_scores(
    references: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    metrics: Iterable[str] = ("BLEU", "METEOR", "ROUGE_L", "CIDEr"),
    *,
    tokenizer: str = "ptb",
    vocabulary: Mapping[str, int] | None = None,
    unknown: str = "<UNK>",
) -> dict[str, float]:
    """Corpus-level caption metrics over samples keyed by id (every prediction needs references).

    Returns keys Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr (those asked for), as fractions (CIDEr
    is not bounded by 1; papers print these x100). ``tokenizer`` and ``vocabulary``: see the module
    docstring.
    """
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, not {tokenizer!r}")
    missing = [k for k in predictions if not references.get(k)]
    if missing:
        raise ValueError(f"{len(missing)} prediction(s) have no reference caption, e.g. {missing[:3]}")
    if not predictions:
        raise ValueError("no predictions to score")
    keys = list(predictions)
    gts = _tokenize({k: list(references[k]) for k in keys}, tokenizer)
    res = _tokenize({k: [predictions[k] or ""] for k in keys}, tokenizer)
    if vocabulary is not None:
        gts, res = _to_ids(gts, vocabulary, unknown), _to_ids(res, vocabulary, unknown)
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


def is_unchanged_caption(caption: str | Sequence[str], sentences: Sequence[str] = LEVIR_CC_UNCHANGED) -> bool:
    """Whether a caption (text, or its words) is one of the authors' "no change" sentences, compared
    after Chg2Cap's tokenisation with words joined by single spaces, as their test scripts compare."""
    words = chg2cap_tokenize(caption) if isinstance(caption, str) else list(caption)
    return " ".join(words) in sentences


def change_caption_scores(
    references: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    metrics: Iterable[str] = ("BLEU", "METEOR", "ROUGE_L", "CIDEr"),
    *,
    reference_index: int = 0,
    unchanged: Sequence[str] = LEVIR_CC_UNCHANGED,
    tokenizer: str = "chg2cap",
    vocabulary: Mapping[str, int] | None = None,
    unknown: str = "<UNK>",
) -> dict[str, float]:
    """Change-captioning metrics as Chg2Cap (LEVIR-CC) and MModalCC (SECOND-CC) report them.

    The scores over every pair, then ``changed_*`` and ``unchanged_*`` over the pairs whose reference
    number ``reference_index`` is (not) one of the ``unchanged`` sentences (Chg2Cap: the first
    reference and LEVIR_CC_UNCHANGED; MModalCC: ``reference_index=1`` and SECOND_CC_UNCHANGED,
    ``tokenizer="split"`` on the JSON's tokens). ``changed_accuracy`` / ``unchanged_accuracy`` are
    the share of those pairs whose prediction falls in the same group, the authors' change_acc and
    nochange_acc.
    """
    kwargs = {"tokenizer": tokenizer, "vocabulary": vocabulary, "unknown": unknown}
    metrics = tuple(metrics)
    out = caption_scores(references, predictions, metrics, **kwargs)
    groups: dict[bool, list[str]] = {True: [], False: []}
    for key in predictions:
        refs = references[key]
        groups[is_unchanged_caption(refs[min(reference_index, len(refs) - 1)], unchanged)].append(key)
    for is_unchanged, keys in groups.items():
        if not keys:
            continue
        prefix = "unchanged_" if is_unchanged else "changed_"
        scores = caption_scores({k: references[k] for k in keys}, {k: predictions[k] for k in keys}, metrics, **kwargs)
        out.update({prefix + name: value for name, value in scores.items()})
        agree = [is_unchanged_caption(predictions[k] or "", unchanged) == is_unchanged for k in keys]
        out[prefix + "accuracy"] = float(np.mean(agree))
    return out


# --- grounding ---------------------------------------------------------------------------------


def box_iou(a: Box, b: Box, *, pixel_inclusive: bool = False) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes.

    Continuous coordinates by default (TransVG's ``bbox_iou``, the engine's ``boxes.iou``);
    ``pixel_inclusive`` counts both end pixels (width = x1 - x0 + 1), GeoChat's ``computeIoU``.
    """
    if not pixel_inclusive:
        return boxes.iou(a, b)
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def accuracy_at_iou(
    predictions: Sequence[Box | None],
    targets: Sequence[Box],
    threshold: float = 0.5,
    *,
    image_sizes: Sequence[tuple[float, float]] | None = None,
    pixel_inclusive: bool = False,
) -> float:
    """Acc@threshold for referring grounding: one predicted box per target; None counts as a miss.

    A hit is IoU >= ``threshold`` (TransVG's ``trans_vg_eval_test``, which DIOR-RSVG's MGVLF builds
    on). With ``image_sizes`` ((width, height) per target) each prediction is first clamped to its
    image, as TransVG clamps to [0, 1].
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    if not targets:
        raise ValueError("no targets to score")
    if image_sizes is not None and len(image_sizes) != len(targets):
        raise ValueError(f"{len(image_sizes)} image sizes for {len(targets)} targets")
    hits = 0
    for i, (p, t) in enumerate(zip(predictions, targets)):
        if p is None:
            continue
        if image_sizes is not None:
            w, h = image_sizes[i]
            p = (min(max(p[0], 0), w), min(max(p[1], 0), h), min(max(p[2], 0), w), min(max(p[3], 0), h))
        hits += box_iou(p, t, pixel_inclusive=pixel_inclusive) >= threshold
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


def rsvqa_accuracies(
    predictions: Sequence[str], answers: Sequence[str], question_types: Sequence[str]
) -> dict[str, float]:
    """RSVQA's two headline numbers (syvlo/RSVQA ``train.py``): ``OA``, the share of questions answered
    right, and ``AA``, the mean of the per-type accuracies (so a rare type weighs as much as a common
    one), plus each type's accuracy. Answers are compared as :func:`vqa_accuracy` compares them.

    The authors divide the sum by 4 (LR: presence, comp, count, rural_urban; HR: presence, comp,
    count, area); here the mean is over the types present, the same when all four are.
    """
    out = vqa_accuracy(predictions, answers, question_types)
    per_type = {k.removeprefix("accuracy_"): v for k, v in out.items() if k.startswith("accuracy_")}
    return {"OA": out["accuracy"], "AA": float(np.mean(list(per_type.values()))), **per_type}


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
    similarity: np.ndarray, text_image: Sequence[int | set[int]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Cross-modal retrieval as RSICD/RSITMD papers (and GeoRSCLIP) report it.

    ``similarity`` is images x texts; ``text_image[j]`` is the image that text j describes (each image
    has several texts), or the set of images it describes when texts were de-duplicated, as
    SkyScript's retrieval notebook does (``text2img_path``). Text retrieval (an image queries the
    texts, a hit when any of its own texts is in the top K) gives ``i2t_R@K``; image retrieval (a text
    queries the images, a hit when any of its images is in the top K) gives ``t2i_R@K``; ``mR`` is the
    mean of all six recalls (GeoRSCLIP's "retrieval-mean-recall", also written mR or R_mean).
    """
    sim = np.asarray(similarity, dtype=np.float64)
    owners = [set(int(i) for i in o) if isinstance(o, (set, frozenset, list, tuple)) else {int(o)} for o in text_image]
    if sim.ndim != 2 or sim.shape[1] != len(owners):
        raise ValueError(f"similarity {sim.shape} does not match {len(owners)} texts")
    outside = [j for j, o in enumerate(owners) if not o or min(o) < 0 or max(o) >= sim.shape[0]]
    if outside:
        raise ValueError(f"text_image names images outside 0..{sim.shape[0] - 1} (or none) for text {outside[0]}")
    texts_of: list[set[int]] = [set() for _ in range(sim.shape[0])]
    for j, images in enumerate(owners):
        for i in images:
            texts_of[i].add(j)
    i2t = recall_at_k(sim, texts_of, ks)
    t2i = recall_at_k(sim.T, owners, ks)
    out = {f"i2t_R@{k}": i2t[f"R@{k}"] for k in ks}
    out.update({f"t2i_R@{k}": t2i[f"R@{k}"] for k in ks})
    out["mR"] = float(np.mean([out[f"{d}_R@{k}"] for d in ("i2t", "t2i") for k in ks]))
    return out
