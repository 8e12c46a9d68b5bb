"""training.eval.paper_metrics: change-captioning predictions scored as Chg2Cap (LEVIR-CC) and MModalCC
(SECOND-CC) score them, on the loaders' fixtures."""

from __future__ import annotations

import json

import pytest

from tests.training import fixtures
from training.data.formats import DataFormatError
from training.eval.paper_metrics import main, score_change_predictions


def test_levir_cc_predictions_scored_per_changed_and_unchanged_pairs(tmp_path):
    root = fixtures.write_levir_cc(tmp_path)
    predictions = {
        "train_000001.png": "A road is built.",  # capitals and full stop: lower-cased, '.' dropped, as Chg2Cap
        "train_000002.png": "there is no difference",
        "val_000001.png": "there is no difference",  # a changed pair called unchanged
        "test_000001.png": "there is no difference",
    }
    out = score_change_predictions("levir-cc", root, None, predictions, ("BLEU",), min_count=1)
    assert out["unchanged_Bleu_4"] == pytest.approx(1.0) and out["unchanged_accuracy"] == 1.0
    assert out["changed_accuracy"] == 0.5 and out["changed_Bleu_1"] < 1.0
    # with the paper's threshold (5) every word of this tiny set is <UNK>: all captions look alike
    assert score_change_predictions("levir-cc", root, None, predictions, ("BLEU",))["Bleu_1"] == pytest.approx(1.0)
    test = score_change_predictions("levir-cc", root, "test", predictions, ("BLEU",), min_count=1)
    assert "changed_Bleu_4" not in test and test["Bleu_4"] == pytest.approx(1.0)


def test_second_cc_uses_the_json_tokens_and_the_second_reference(tmp_path):
    root = fixtures.write_second_cc(tmp_path)
    predictions = {
        "00001.png": "The low vegetation turned into buildings.",
        "00002.png": "Almost nothing is changed.",
        "00003.png": "a playground is built",
    }
    out = score_change_predictions("second-cc", root, None, predictions, ("BLEU",), min_count=1)
    assert out["Bleu_4"] == pytest.approx(1.0)
    assert out["unchanged_accuracy"] == 1.0 and out["changed_accuracy"] == 1.0


def test_cli_writes_scores_and_names_the_first_missing_pair(tmp_path, capsys):
    root = fixtures.write_levir_cc(tmp_path / "levir")
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({"test_000001.png": "there is no difference ."}), encoding="utf-8")
    out = tmp_path / "scores.json"
    args = ["levir-cc", "--root", str(root), "--split", "test", "--predictions", str(preds), "--metrics", "BLEU"]
    assert main([*args, "--min-word-count", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["Bleu_4"] == pytest.approx(1.0)
    assert "Bleu_4: 100.00" in capsys.readouterr().out
    assert main([*args[:-4], "--split", "train", "--predictions", str(preds)]) == 2
    assert "no caption for 2 of the 2 pairs of split 'train' (first: train_000001.png)" in capsys.readouterr().err
    with pytest.raises(DataFormatError, match="first: train_000001.png"):
        score_change_predictions("levir-cc", root, "train", {}, ("BLEU",))
