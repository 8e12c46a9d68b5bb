"""Change-captioning predictions scored the way the LEVIR-CC and SECOND-CC papers score them.

    python -m training.eval.paper_metrics levir-cc  --root /data/LEVIR-CC      --split test --predictions preds.json
    python -m training.eval.paper_metrics second-cc --root /data/SECOND-CC-AUG --split test --predictions preds.json

``preds.json`` maps each pair's file name (``test_000001.png``) to the predicted caption. The
references come from the data set's own JSON, read by the project's loaders.

- **levir-cc** (Chg2Cap): the captions go through Chg2Cap's tokenisation, then its vocabulary.
  The vocabulary holds the words seen at least 5 times over all the data set's captions; other
  words become ``<UNK>``. Pairs are split into changed and unchanged by whether the first
  reference is a no-change sentence.
- **second-cc** (MModalCC): the references are the JSON's ``tokens``. The vocabulary holds the words
  seen more than 10 times (``min_word_freq`` 10); other words become ``<unk>``. Pairs are split by
  the second reference.

Predictions are lower-cased first: both data sets' captions are lower case, and the authors'
decoders can only produce vocabulary words. For SECOND-CC the predictions are also cut into words
at non-alphanumerics, as the Karpathy ``tokens`` are. Scores are printed as the papers print them
(x100) and written as fractions with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from training.data.formats import DataFormatError, LevirCC, SecondCC
from training.eval.metrics import (
    LEVIR_CC_UNCHANGED,
    SECOND_CC_UNCHANGED,
    caption_vocabulary,
    change_caption_scores,
    chg2cap_tokenize,
)

DATASETS = ("levir-cc", "second-cc")
DEFAULT_MIN_COUNT = {"levir-cc": 5, "second-cc": 11}  # Chg2Cap: count >= 5; MModalCC: count > 10
UNKNOWN = {"levir-cc": "<UNK>", "second-cc": "<unk>"}


def _karpathy_words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def score_change_predictions(
    dataset: str,
    root: str | Path,
    split: str | Sequence[str] | None,
    predictions: Mapping[str, str],
    metrics: Sequence[str] = ("BLEU", "METEOR", "ROUGE_L", "CIDEr"),
    min_count: int | None = None,
) -> dict[str, float]:
    """The papers' change-captioning scores of ``predictions`` (pair file name -> caption) on ``split``; with
    ``split`` None, on the pairs ``predictions`` names (a training run's evaluation of part of a split)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, not {dataset!r}")
    loader = LevirCC if dataset == "levir-cc" else SecondCC
    every = loader(root, None, check_images=False)  # the vocabulary is built over all splits, as the authors do
    wanted = set(predictions) if split is None else {s.name for s in loader(root, split, check_images=False)}
    samples = [s for s in every if s.name in wanted]
    missing = [s.name for s in samples if s.name not in predictions]
    if missing:
        raise DataFormatError(
            f"predictions: no caption for {len(missing)} of the {len(samples)} pairs of split {split!r} "
            f"(first: {missing[0]}); expected a JSON object mapping every pair's file name to its caption"
        )
    count = DEFAULT_MIN_COUNT[dataset] if min_count is None else min_count
    if dataset == "levir-cc":
        vocabulary = caption_vocabulary((chg2cap_tokenize(c) for s in every for c in s.captions), count)
        references = {s.name: list(s.captions) for s in samples}
        hypotheses = {s.name: str(predictions[s.name]).lower() for s in samples}
        kwargs = {"tokenizer": "chg2cap", "unchanged": LEVIR_CC_UNCHANGED, "reference_index": 0}
    else:
        specials = ("<pad>", "<unk>", "<start>", "<end>")
        vocabulary = caption_vocabulary((t for s in every for t in s.tokens), count, specials)
        references = {s.name: [" ".join(t) for t in s.tokens] for s in samples}
        hypotheses = {s.name: _karpathy_words(str(predictions[s.name])) for s in samples}
        kwargs = {"tokenizer": "split", "unchanged": SECOND_CC_UNCHANGED, "reference_index": 1}
    return change_caption_scores(
        references, hypotheses, metrics, vocabulary=vocabulary, unknown=UNKNOWN[dataset], **kwargs
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.eval.paper_metrics", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--root", required=True, help="the data set folder (LevirCCcaptions.json / SECOND-CC-AUG.json)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--predictions", required=True, help="JSON object: pair file name -> predicted caption")
    parser.add_argument("--metrics", default="BLEU,METEOR,ROUGE_L,CIDEr", help="comma-separated; METEOR needs Java")
    parser.add_argument("--min-word-count", type=int, default=None, help="vocabulary threshold (default: the paper's)")
    parser.add_argument("--out", help="write the scores (fractions) as JSON here")
    args = parser.parse_args(argv)
    try:
        predictions = json.loads(Path(args.predictions).read_text(encoding="utf-8"))
        if not isinstance(predictions, dict):
            raise DataFormatError(f"{args.predictions}: not a JSON object; expected pair file name -> caption")
        scores = score_change_predictions(
            args.dataset, args.root, args.split, predictions, args.metrics.split(","), args.min_word_count
        )
    except (OSError, ValueError) as error:  # DataFormatError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, value in scores.items():
        print(f"{name}: {value * (1 if name.endswith('accuracy') else 100):.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(scores, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
