"""What a ``/search`` shows: the relevant tiles, each with a rank, a similarity in percent and a place.

    ranking = rank_search(ranked, scores, area=(xmin, ymin, xmax, ymax), top_k=5)
    for hit in ranking.hits:
        hit.rank, hit.percent, hit.place      # 1, 100, Place.NORTH_WEST

The engine ranks tiles by a raw score whose scale depends on the model (a CLIP cosine near
0.3, a captioner's mean log-probability near -6), which means nothing to a person. Here the
score becomes a **similarity relative to the searched area**: 100% for its best tile, 0% for its
worst (min-max over every tile the job scored, from the tile events' ``pending`` candidates).
Only the relevant tiles are kept:

- at most ``top_k``, and at most half of the searched tiles (a region of 4 tiles gives at most 2,
  so a search never returns the whole region), the best always;
- none under ``SIMILARITY_FLOOR`` (50%: closer to the worst tile than to the best).

A tile's place is where its centre lies in the searched area, in thirds each way: north-west,
north, ..., centre. Pure standard library (the plugin translates the texts).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

SIMILARITY_FLOOR = 0.5
MAX_SHARE = 0.5  # of the searched tiles


class Place(Enum):
    NORTH_WEST = "north-west"
    NORTH = "north"
    NORTH_EAST = "north-east"
    WEST = "west"
    CENTRE = "centre"
    EAST = "east"
    SOUTH_WEST = "south-west"
    SOUTH = "south"
    SOUTH_EAST = "south-east"


_PLACES = (
    (Place.SOUTH_WEST, Place.SOUTH, Place.SOUTH_EAST),
    (Place.WEST, Place.CENTRE, Place.EAST),
    (Place.NORTH_WEST, Place.NORTH, Place.NORTH_EAST),
)  # [row from the south][column from the west]


def place_in(area: tuple[float, float, float, float], x: float, y: float) -> Place:
    """Where (x, y) lies in ``area`` (xmin, ymin, xmax, ymax), in thirds each way."""
    xmin, ymin, xmax, ymax = area
    if not xmax > xmin or not ymax > ymin:
        raise ValueError(f"the searched area must have a positive width and height, got {area}")

    def third(value: float, low: float, high: float) -> int:
        return min(2, max(0, int(3 * (value - low) / (high - low))))

    return _PLACES[third(y, ymin, ymax)][third(x, xmin, xmax)]


@dataclass(frozen=True)
class SearchHit:
    rank: int  # 1 = the best
    similarity: float  # 0-1, relative to the searched area
    place: Place
    feature: Mapping[str, Any]  # the engine's GeoJSON feature

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"a rank starts at 1, got {self.rank}")
        if not 0.0 <= self.similarity <= 1.0:
            raise ValueError(f"a similarity lies in 0-1, got {self.similarity}")

    @property
    def percent(self) -> int:
        return round(100 * self.similarity)

    def properties(self) -> dict[str, Any]:
        """The feature's properties for its layer: ``score`` is the similarity (0-1, 2 decimals)."""
        props = {k: v for k, v in (self.feature.get("properties") or {}).items() if k not in ("tile", "text")}
        return {
            **props,
            "rank": self.rank,
            "score": round(self.similarity, 2),
            "similarity": self.percent,
            "place": self.place.value,
        }


@dataclass(frozen=True)
class SearchRanking:
    hits: tuple[SearchHit, ...]
    searched: int  # tiles the job scored
    ranked: int  # tiles the engine returned
    limit: int  # the most that could be kept
    floor: float = SIMILARITY_FLOOR
    below_floor: int = 0  # returned tiles left out for being under the floor

    def features(self) -> list[dict[str, Any]]:
        """The kept tiles as GeoJSON features with rank, score (similarity 0-1), similarity (%) and place."""
        return [{**hit.feature, "properties": hit.properties()} for hit in self.hits]


def _points(geometry: Mapping[str, Any] | None) -> list[Sequence[float]]:
    points: list[Sequence[float]] = []

    def walk(coordinates: Any) -> None:
        if coordinates and isinstance(coordinates[0], (int, float)):
            points.append(coordinates)
        else:
            for part in coordinates or ():
                walk(part)

    walk((geometry or {}).get("coordinates"))
    return points


def _box(points: Sequence[Sequence[float]]) -> tuple[float, float, float, float] | None:
    if not points:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _centre(geometry: Mapping[str, Any] | None) -> tuple[float, float] | None:
    box = _box(_points(geometry))
    return None if box is None else ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def features_bounds(features: Sequence[Mapping[str, Any]]) -> tuple[float, float, float, float]:
    """The bounding box of GeoJSON features (the searched area when the job did not say it); a unit box when empty."""
    box = _box([p for f in features for p in _points(f.get("geometry"))])
    if box is None or not (box[2] > box[0] and box[3] > box[1]):
        return (0.0, 0.0, 1.0, 1.0) if box is None else (box[0], box[1], box[0] + 1.0, box[1] + 1.0)
    return box


def rank_search(
    ranked: Sequence[Mapping[str, Any]],
    scores: Mapping[int, float],
    area: tuple[float, float, float, float],
    top_k: int,
    searched: int = 0,
    floor: float = SIMILARITY_FLOOR,
) -> SearchRanking:
    """The relevant tiles among the engine's ``ranked`` ones (best first).

    ``scores`` maps every scored tile id to its raw score (the ranked ones are added to it);
    ``searched`` is the job's tile count when known; ``area`` the searched extent in the
    features' CRS.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    all_scores = {int(k): float(v) for k, v in scores.items() if math.isfinite(float(v))}
    for feature in ranked:
        props = feature.get("properties") or {}
        if props.get("tile") is not None and props.get("score") is not None:
            all_scores.setdefault(int(props["tile"]), float(props["score"]))
    count = max(searched, len(all_scores), len(ranked))
    limit = max(1, min(top_k, int(count * MAX_SHARE)))
    low = min(all_scores.values(), default=0.0)
    high = max(all_scores.values(), default=0.0)
    hits: list[SearchHit] = []
    below = 0
    ordered = sorted(ranked, key=lambda f: int((f.get("properties") or {}).get("rank", 0)))
    for feature in ordered:
        score = float((feature.get("properties") or {}).get("score", high))
        similarity = 1.0 if high <= low else min(1.0, max(0.0, (score - low) / (high - low)))
        if hits and similarity < floor:
            below += 1
            continue
        if len(hits) >= limit:
            continue
        centre = _centre(feature.get("geometry"))
        place = place_in(area, *centre) if centre is not None else Place.CENTRE
        hits.append(SearchHit(len(hits) + 1, similarity, place, feature))
    return SearchRanking(tuple(hits), count, len(ranked), limit, floor, below)
