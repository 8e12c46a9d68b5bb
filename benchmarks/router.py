"""python benchmarks/router.py [--data tests/engine/router_phrasings.jsonl] [--errors]

The instruction router (rs_assistant.engine.router) on its labelled phrasings: accuracy of the
intent per language and per intent, how often the object passed on as the prompt is the expected
one, and the confusion pairs (expected -> routed, with how many). ``--errors`` lists every miss.
Pure Python: runs in well under a second, no model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rs_assistant.core.protocol import Intent  # noqa: E402
from rs_assistant.engine.router import route_text  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "tests" / "engine" / "router_phrasings.jsonl"


def load(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        Intent(row["intent"])  # a typo in the data file fails loudly
    return rows


def evaluate(rows: list[dict]) -> list[dict]:
    """Each row with what the router answered (``got``, ``got_prompt``)."""
    out = []
    for row in rows:
        result = route_text(row["text"], [tuple(m) for m in row.get("history", [])], row.get("images", 1))
        out.append({**row, "got": result.intent.value, "got_prompt": result.prompt, "assumed": result.assumed})
    return out


def accuracy(results: list[dict]) -> float:
    return sum(r["got"] == r["intent"] for r in results) / len(results) if results else 0.0


def prompt_accuracy(results: list[dict]) -> tuple[int, int]:
    with_prompt = [r for r in results if "prompt" in r and r["got"] == r["intent"]]
    return sum(r["got_prompt"].lower() == r["prompt"].lower() for r in with_prompt), len(with_prompt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--errors", action="store_true", help="list every miss")
    args = parser.parse_args(argv)
    results = evaluate(load(args.data))
    print(f"{len(results)} phrasings from {args.data.name}")
    by_lang: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_lang[r["lang"]].append(r)
    print(f"{'':10}" + "".join(f"{lang:>14}" for lang in sorted(by_lang)) + f"{'all':>14}")
    for intent in Intent:
        cells = []
        for lang in sorted(by_lang):
            rows = [r for r in by_lang[lang] if r["intent"] == intent.value]
            cells.append(f"{accuracy(rows):8.3f} ({len(rows):3d})" if rows else f"{'-':>14}")
        rows = [r for r in results if r["intent"] == intent.value]
        print(f"{intent.value:10}" + "".join(cells) + f"{accuracy(rows):8.3f} ({len(rows):3d})")
    print(
        f"{'intent':10}"
        + "".join(f"{accuracy(by_lang[lang]):8.3f} ({len(by_lang[lang]):3d})" for lang in sorted(by_lang))
        + f"{accuracy(results):8.3f} ({len(results):3d})"
    )
    context = [r for r in results if r.get("history")]
    print(f"with context (history): {accuracy(context):.3f} of {len(context)}")
    for lang in sorted(by_lang):
        right, total = prompt_accuracy(by_lang[lang])
        print(f"object passed on as expected ({lang}): {right}/{total} = {right / max(total, 1):.3f}")
    confusion = Counter((r["intent"], r["got"]) for r in results if r["got"] != r["intent"])
    print("confusion pairs (expected -> routed: count):")
    for (expected, got), count in confusion.most_common():
        print(f"  {expected} -> {got}: {count}")
    if args.errors:
        print("misses:")
        for r in results:
            if r["got"] != r["intent"] or ("prompt" in r and r["got_prompt"].lower() != r["prompt"].lower()):
                print(
                    f"  [{r['lang']}] {r['text']!r} (images {r.get('images', 1)}): expected {r['intent']} "
                    f"{r.get('prompt', '')!r}, "
                    f"got {r['got']} {r['got_prompt']!r}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
