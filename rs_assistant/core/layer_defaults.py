"""Which rasters the dock picks when a project opens and names none: the image is the top raster;
before/after are two rasters put in time order by the dates in their names (2021-06-03, 20210603,
2021), else by words that say which is which (before/after, pre/post, avant/après, old/new), else
by name.

    pick_before_after(["site 2023", "site 2019"]) == (1, 0)     # indexes into the list given
"""

from __future__ import annotations

import re

_DATE = re.compile(r"(?<!\d)((?:19|20)\d{2})(?:[-_./ ]?(0[1-9]|1[0-2])(?:[-_./ ]?(0[1-9]|[12]\d|3[01]))?)?(?!\d)")
_EARLY = re.compile(r"\b(before|pre|avant|old|t0|earlier)\b", re.IGNORECASE)
_LATE = re.compile(r"\b(after|post|apr[eè]s|new|t1|later)\b", re.IGNORECASE)


def name_date(name: str) -> tuple[int, int, int] | None:
    """The first date in a layer's name as (year, month, day) (0 where absent), else None."""
    match = _DATE.search(name.replace("_", " "))
    if match is None:
        match = _DATE.search(name)
    if match is None:
        return None
    year, month, day = match.groups()
    return int(year), int(month or 0), int(day or 0)


def pick_before_after(names: list[str]) -> tuple[int, int] | None:
    """Indexes (before, after) of two of ``names`` in time order; None with fewer than two names."""
    if len(names) < 2:
        return None
    dated = [(name_date(n), i) for i, n in enumerate(names)]
    dated = [(d, i) for d, i in dated if d is not None]
    if len({d for d, _ in dated}) >= 2:
        dated.sort()
        return dated[0][1], dated[-1][1]
    early = [i for i, n in enumerate(names) if _EARLY.search(n.replace("_", " "))]
    late = [i for i, n in enumerate(names) if _LATE.search(n.replace("_", " "))]
    if early and late and early[0] != late[0]:
        return early[0], late[0]
    order = sorted(range(len(names)), key=lambda i: (names[i].casefold(), i))
    return order[0], order[1]
