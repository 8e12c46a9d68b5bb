"""The evaluation metrics on hand-checkable cases."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from training.eval import metrics


def test_box_iou_and_accuracy():
    assert metrics.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert metrics.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert metrics.box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    preds = [(0, 0, 10, 10), (5, 0, 15, 10), None]
    targets = [(0, 0, 10, 10), (0, 0, 10, 10), (0, 0, 4, 4)]
    assert metrics.accuracy_at_iou(preds, targets) == pytest.approx(1 / 3)
    assert metrics.accuracy_at_iou(preds, targets, threshold=0.3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        metrics.accuracy_at_iou(preds, targets[:2])


def test_mask_ious_mean_and_cumulative():
    a = np.zeros((4, 4), bool)
    a[:2] = True  # 8 px
    b = np.zeros((4, 4), bool)
    b[:1] = True  # 4 px inside a
    empty = np.zeros((4, 4), bool)
    out = metrics.mask_ious([b, empty, a], [a, empty, empty])
    assert out["mIoU"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert out["cIoU"] == pytest.approx(4 / (8 + 8))


def test_vqa_accuracy_per_type_with_normalisation():
    out = metrics.vqa_accuracy(["Yes.", "3", "no"], ["yes", "4", "no"], ["presence", "count", "presence"])
    assert out == {"accuracy_count": 0.0, "accuracy_presence": 1.0, "accuracy": pytest.approx(2 / 3)}


def test_recall_at_k():
    sim = np.array([[0.9, 0.1, 0.2], [0.1, 0.2, 0.9], [0.3, 0.2, 0.1]])
    out = metrics.recall_at_k(sim, [0, 1, {2}], ks=(1, 2))
    assert out["R@1"] == pytest.approx(1 / 3)
    assert out["R@2"] == pytest.approx(2 / 3)
    assert out["mR"] == pytest.approx(0.5)


def test_image_text_retrieval_both_directions():
    # 3 images, 5 texts: texts 0, 1 describe image 0; 2, 3 image 1; 4 image 2.
    sim = np.array(
        [
            [0.9, 0.1, 0.8, 0.0, 0.2],  # image 0: ranks texts 0, 2, 4, 1, 3 -> own text first: hit at 1
            [0.7, 0.2, 0.1, 0.3, 0.0],  # image 1: ranks 0, 3, 1, 2, 4 -> first own (3) at rank 2
            [0.1, 0.25, 0.3, 0.4, 0.5],  # image 2: ranks 4 first -> hit at 1
        ]
    )
    out = metrics.image_text_retrieval(sim, [0, 0, 1, 1, 2], ks=(1, 2))
    assert out["i2t_R@1"] == pytest.approx(2 / 3)
    assert out["i2t_R@2"] == pytest.approx(1.0)
    # text queries: t0 -> image 0 (0.9): hit at 1; t1 -> image 2 (0.25), image 1 (0.2): miss at 1 and 2;
    # t2 -> image 0 (0.8), image 2 (0.3): miss; t3 -> image 2 (0.4), image 1 (0.3): hit at 2; t4 -> image 2: hit at 1.
    assert out["t2i_R@1"] == pytest.approx(2 / 5)
    assert out["t2i_R@2"] == pytest.approx(3 / 5)
    assert out["mR"] == pytest.approx((2 / 3 + 1.0 + 2 / 5 + 3 / 5) / 4)
    with pytest.raises(ValueError):
        metrics.image_text_retrieval(sim, [0, 0, 1, 1])


@pytest.mark.skipif(
    shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer needs Java (default-jre-headless)"
)
def test_caption_scores_perfect_and_poor():
    refs = {
        "1": ["a red roof next to a road", "a house with a red roof by the road"],
        "2": ["two storage tanks near the water", "a pair of tanks by a pond"],
    }
    perfect = metrics.caption_scores(
        refs,
        {"1": "a red roof next to a road", "2": "two storage tanks near the water"},
        metrics=("BLEU", "CIDEr", "ROUGE_L"),
    )
    poor = metrics.caption_scores(refs, {"1": "green field", "2": "a car"}, metrics=("BLEU", "CIDEr", "ROUGE_L"))
    assert perfect["Bleu_4"] > 0.9 and perfect["ROUGE_L"] > 0.9
    assert perfect["CIDEr"] > poor["CIDEr"] and poor["Bleu_4"] < 0.1
    with pytest.raises(ValueError):
        metrics.caption_scores(refs, {"3": "x"})
