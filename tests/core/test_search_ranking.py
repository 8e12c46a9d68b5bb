"""How a /search's ranked tiles become what the person sees: few relevant tiles, a similarity in
percent relative to the searched area, a rank and a place.

    .venv/bin/python -m pytest -p no:pytest_qgis -p no:pytest-qt tests/core/test_search_ranking.py -q
"""

from __future__ import annotations

import pytest

from rs_assistant.core.search_ranking import Place, SearchHit, place_in, rank_search

AREA = (0.0, 0.0, 300.0, 300.0)


def tile(tile_id: int, rank: int, score: float, x0: float, y0: float, size: float = 100.0) -> dict:
    ring = [[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size], [x0, y0]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "kind": "tile",
            "label": "a parking lot",
            "score": score,
            "rank": rank,
            "tile": tile_id,
            "text": None,
        },
    }


def test_the_screenshot_case_four_log_probabilities_keep_only_the_clear_winner():
    """Issue 21: “tile 0 (-6.09), tile 3 (-6.27)” and all 4 tiles of the region returned."""
    ranked = [
        tile(0, 1, -6.09, 0, 200),
        tile(3, 2, -6.27, 200, 0),
        tile(1, 3, -6.34, 200, 200),
        tile(2, 4, -6.37, 0, 0),
    ]
    ranking = rank_search(ranked, {}, AREA, top_k=5, searched=4)
    assert [(h.rank, h.percent, h.place) for h in ranking.hits] == [(1, 100, Place.NORTH_WEST)]
    assert ranking.searched == 4 and ranking.limit == 2 and ranking.below_floor == 3
    [feature] = ranking.features()
    assert feature["properties"] == {
        "kind": "tile",
        "label": "a parking lot",
        "score": 1.0,
        "rank": 1,
        "similarity": 100,
        "place": "north-west",
    }  # no tile id, no empty text, no raw score


def test_similarity_is_relative_to_every_scored_tile_not_only_the_returned_ones():
    ranked = [tile(7, 1, 0.31, 100, 100), tile(8, 2, 0.29, 200, 100)]
    scores = {i: 0.20 for i in range(20)} | {7: 0.31, 8: 0.29, 9: 0.26}
    ranking = rank_search(ranked, scores, AREA, top_k=5, searched=20)
    assert [(h.rank, h.percent, h.place) for h in ranking.hits] == [(1, 100, Place.CENTRE), (2, 82, Place.EAST)]
    assert ranking.limit == 5


def test_at_most_half_the_searched_tiles_and_at_most_top_k():
    ranked = [tile(i, i + 1, 1.0 - 0.01 * i, 0, 0) for i in range(8)]
    assert len(rank_search(ranked, {}, AREA, top_k=10, searched=8).hits) == 4
    assert len(rank_search(ranked, {}, AREA, top_k=3, searched=100).hits) == 3


def test_one_tile_or_equal_scores_is_one_hit_at_100_percent():
    assert [(h.rank, h.percent) for h in rank_search([tile(0, 1, -5.0, 0, 0)], {}, AREA, top_k=5, searched=1).hits] == [
        (1, 100)
    ]
    ranked = [tile(0, 1, 0.3, 0, 0), tile(1, 2, 0.3, 100, 0)]
    assert [h.percent for h in rank_search(ranked, {}, AREA, top_k=5, searched=4).hits] == [100, 100]
    assert rank_search([], {}, AREA, top_k=5).hits == ()


@pytest.mark.parametrize(
    ("x", "y", "place"),
    [
        (10, 290, Place.NORTH_WEST),
        (150, 290, Place.NORTH),
        (290, 290, Place.NORTH_EAST),
        (10, 150, Place.WEST),
        (150, 150, Place.CENTRE),
        (290, 150, Place.EAST),
        (10, 10, Place.SOUTH_WEST),
        (150, 10, Place.SOUTH),
        (300, 0, Place.SOUTH_EAST),
    ],
)
def test_places_are_thirds_of_the_area(x, y, place):
    assert place_in(AREA, x, y) is place


def test_bad_input_says_what_is_wrong():
    with pytest.raises(ValueError, match="positive width"):
        place_in((0, 0, 0, 10), 0, 0)
    with pytest.raises(ValueError, match="top_k"):
        rank_search([], {}, AREA, top_k=0)
    with pytest.raises(ValueError, match="0-1"):
        SearchHit(1, 1.5, Place.CENTRE, {})
