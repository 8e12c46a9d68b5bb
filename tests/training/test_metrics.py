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


# --- published examples and the papers' own conventions ----------------------------------------

JAVA = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's PTB tokenizer and METEOR need Java")

# Papineni et al.'s example as NLTK's bleu_score documentation prints it: sentence_bleu of
# HYPOTHESIS_1 against REFERENCES_1 is 0.5045666840058485, corpus_bleu of both pairs 0.5920778868801042.
HYPOTHESIS_1 = "It is a guide to action which ensures that the military always obeys the commands of the party"
REFERENCES_1 = [
    "It is a guide to action that ensures that the military will forever heed Party commands",
    "It is the guiding principle which guarantees the military forces always being under the command of the Party",
    "It is the practical guide for the army always to heed the directions of the party",
]
HYPOTHESIS_2 = "he read the book because he was interested in world history"
REFERENCES_2 = ["he was interested in world history because he read the book"]


def test_bleu_reproduces_the_published_nltk_examples():
    one = metrics.caption_scores({"a": REFERENCES_1}, {"a": HYPOTHESIS_1}, ("BLEU",), tokenizer="split")
    assert one["Bleu_4"] == pytest.approx(0.5045666840058485, abs=1e-8)
    both = metrics.caption_scores(
        {"a": REFERENCES_1, "b": REFERENCES_2}, {"a": HYPOTHESIS_1, "b": HYPOTHESIS_2}, ("BLEU",), tokenizer="split"
    )
    assert both["Bleu_4"] == pytest.approx(0.5920778868801042, abs=1e-8)  # corpus BLEU, not a mean of sentences


@JAVA
def test_bleu_through_the_ptb_tokenizer_gives_the_same_published_number():
    # PTB lower-cases; the example's only capitals ("It", "Party") match either way, so the number holds.
    out = metrics.caption_scores({"a": REFERENCES_1}, {"a": HYPOTHESIS_1}, ("BLEU",))
    assert out["Bleu_4"] == pytest.approx(0.5045666840058485, abs=1e-8)


def test_rouge_l_is_lin_f_measure_with_beta_1_2():
    # LCS("a b c d", "a c d e f") = 3 ("a c d"): P = 3/4, R = 3/5, F = (1 + 1.2^2) P R / (R + 1.2^2 P).
    out = metrics.caption_scores({"a": ["a c d e f"]}, {"a": "a b c d"}, ("ROUGE_L",), tokenizer="split")
    p, r, b2 = 3 / 4, 3 / 5, 1.2**2
    assert out["ROUGE_L"] == pytest.approx((1 + b2) * p * r / (r + b2 * p))


def test_chg2cap_tokenisation_keeps_commas_drops_full_stops_and_keeps_case():
    assert metrics.chg2cap_tokenize(" many houses , roads appear ; Trees are cut .") == [
        "many", "houses", ",", "roads", "appear", ";", "Trees", "are", "cut",
    ]  # fmt: skip
    # under PTB the comma would vanish: the two tokenisations give different BLEU for the same pair
    refs, pred = {"a": ["a road , a house ."]}, {"a": "a road a house"}
    chg2cap = metrics.caption_scores(refs, pred, ("BLEU",), tokenizer="chg2cap")
    split = metrics.caption_scores({"a": ["a road a house"]}, pred, ("BLEU",), tokenizer="split")
    assert split["Bleu_4"] == pytest.approx(1.0) and chg2cap["Bleu_4"] < 0.9


def test_caption_vocabulary_follows_chg2cap_build_vocab():
    vocabulary = metrics.caption_vocabulary([["a", "road"], ["a", "house"], ["a", "road"]], min_count=2)
    assert vocabulary == {"<NULL>": 0, "<UNK>": 1, "<START>": 2, "<END>": 3, "a": 4, "road": 5}
    # rare words collapse into <UNK>: "house" and "barn" then match each other, as in the authors' scores
    with_ids = metrics.caption_scores(
        {"x": ["a road a house"]}, {"x": "a road a barn"}, ("BLEU",), tokenizer="split", vocabulary=vocabulary
    )
    words = metrics.caption_scores({"x": ["a road a house"]}, {"x": "a road a barn"}, ("BLEU",), tokenizer="split")
    assert with_ids["Bleu_4"] == pytest.approx(1.0) and words["Bleu_4"] < 0.9
    with pytest.raises(ValueError, match="unknown-word"):
        metrics.caption_scores({"x": ["a"]}, {"x": "a"}, ("BLEU",), vocabulary={"a": 0})


@JAVA
def test_meteor_on_word_ids_matches_exact_words_only():
    refs, pred = {"x": ["many buildings are built"]}, {"x": "many building is built"}
    words = metrics.caption_scores(refs, pred, ("METEOR",), tokenizer="split")
    vocabulary = metrics.caption_vocabulary([s.split() for s in (*refs["x"], pred["x"])], min_count=1)
    ids = metrics.caption_scores(refs, pred, ("METEOR",), tokenizer="split", vocabulary=vocabulary)
    assert ids["METEOR"] < words["METEOR"]  # "building"/"buildings" match by stem as words, not as ids


def test_change_caption_scores_split_changed_and_unchanged_as_chg2cap():
    refs = {
        "p1": [" a road is built .", " a new road appears ."],
        "p2": [" there is no difference .", " the scene is the same as before ."],
        "p3": [" many houses appear .", " houses are built ."],
    }
    preds = {"p1": "a road is built", "p2": "there is no difference", "p3": "there is no difference"}
    out = metrics.change_caption_scores(refs, preds, ("BLEU",))
    assert out["unchanged_Bleu_4"] == pytest.approx(1.0)
    assert out["unchanged_accuracy"] == 1.0 and out["changed_accuracy"] == 0.5  # p3 was called unchanged
    alone = metrics.caption_scores(
        {k: refs[k] for k in ("p1", "p3")}, {k: preds[k] for k in ("p1", "p3")}, ("BLEU",), tokenizer="chg2cap"
    )
    assert out["changed_Bleu_4"] == pytest.approx(alone["Bleu_4"])
    assert metrics.is_unchanged_caption(" almost nothing is changed .", metrics.SECOND_CC_UNCHANGED)
    assert not metrics.is_unchanged_caption(" almost nothing is changed .", metrics.LEVIR_CC_UNCHANGED)


def test_acc_at_iou_conventions_pixel_inclusive_and_clamping():
    # (0,0)-(9,9) vs (0,0)-(4,9): continuous IoU 36/81 < 0.5; counting end pixels (GeoChat) 50/100 = 0.5
    assert metrics.accuracy_at_iou([(0, 0, 4, 9)], [(0, 0, 9, 9)]) == 0.0
    assert metrics.accuracy_at_iou([(0, 0, 4, 9)], [(0, 0, 9, 9)], pixel_inclusive=True) == 1.0
    # a prediction running off a 10 x 10 image: IoU 100/300 as given, 1 once clamped (TransVG clamps)
    assert metrics.accuracy_at_iou([(-20, 0, 10, 10)], [(0, 0, 10, 10)]) == 0.0
    assert metrics.accuracy_at_iou([(-20, 0, 10, 10)], [(0, 0, 10, 10)], image_sizes=[(10, 10)]) == 1.0
    assert metrics.accuracy_at_iou([(0, 0, 10, 5)], [(0, 0, 10, 10)]) == 1.0  # exactly 0.5 counts (>=)


def test_image_text_retrieval_with_texts_shared_by_several_images():
    # SkyScript de-duplicates texts: text 0 describes images 0 and 1, text 1 image 2.
    sim = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])  # images x texts
    out = metrics.image_text_retrieval(sim, [{0, 1}, 2], ks=(1,))
    # image 0 ranks text 1 first (miss), image 1 text 0 (hit), image 2 text 1 (hit)
    assert out["i2t_R@1"] == pytest.approx(2 / 3)
    # text 0 ranks image 1 first (one of its two: hit); text 1 ranks image 0 first (miss)
    assert out["t2i_R@1"] == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="for text 1"):
        metrics.image_text_retrieval(sim, [0, set()])


def test_rsvqa_overall_and_average_accuracy():
    # 3 presence questions (all right) and 1 count question (wrong): OA = 3/4, AA = (1 + 0) / 2
    preds, answers = ["yes", "no", "yes", "5"], ["yes", "no", "yes", "between 1 and 10"]
    out = metrics.rsvqa_accuracies(preds, answers, ["presence", "presence", "presence", "count"])
    assert out == {"OA": 0.75, "AA": 0.5, "count": 0.0, "presence": 1.0}
