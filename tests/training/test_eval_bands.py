"""training.eval reports every metric per ground sampling distance band too (docs/model-card.md)."""

from __future__ import annotations

import pytest

from training.eval.rsa import GSD_BANDS, band_table, gsd_band

CASES = [(0.05, "0.1-0.3 m"), (0.1, "0.1-0.3 m"), (0.3, "0.3-0.7 m"), (0.69, "0.3-0.7 m"), (0.7, "0.7-2 m")]


@pytest.mark.parametrize(("gsd", "band"), [*CASES, (2.0, "0.7-2 m"), (3.0, "0.7-2 m")])
def test_each_gsd_falls_in_one_band(gsd, band):
    assert gsd_band(gsd) == band and band in [name for name, _, _ in GSD_BANDS]


def test_the_band_table_lists_only_bands_with_samples():
    row = {
        "scenes": 4,
        "pairs": 3,
        "caption_CIDEr": 0.6,
        "ground_acc@0.5": 0.5,
        "segment_mIoU": 0.34,
        "change_accuracy": 1.0,
    }
    lines = band_table({"by_gsd": {"0.3-0.7 m": row}}).splitlines()
    assert len(lines) == 3 and lines[2].split()[:3] == ["0.3-0.7", "m", "4"] and lines[2].endswith("1.000")
