"""Train, validation and test splits as disjoint ranges of seeds.

Split ``s`` owns seeds ``[SPLITS[s], SPLITS[s] + SPLIT_SPAN)``; scene ``i`` of a split written with
``--seed-base B`` has seed ``SPLITS[s] + B + i``. Scenes and pairs draw from separate random
streams, so a scene and a pair with the same seed are unrelated.
"""

from __future__ import annotations

SPLIT_SPAN = 100_000_000
SPLITS: dict[str, int] = {"train": 0, "val": SPLIT_SPAN, "test": 2 * SPLIT_SPAN}


def split_seeds(split: str, count: int, base: int = 0) -> range:
    """The seeds of ``count`` items of ``split`` starting at offset ``base`` within the split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if count < 0 or base < 0 or base + count > SPLIT_SPAN:
        raise ValueError(f"seeds {base}..{base + count} do not fit a split of {SPLIT_SPAN}")
    return range(SPLITS[split] + base, SPLITS[split] + base + count)
