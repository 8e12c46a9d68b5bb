"""Coordinate reference systems as the engine reads them: one parse, cached, with the protocol's error.

Used by imagery (reading windows) and geo (writing features), so neither imports the other for it.
"""

from __future__ import annotations

import functools

import pyproj
from pyproj.exceptions import CRSError

from rs_assistant.core.protocol import ErrorCode, ProtocolError


def parse_crs(crs: str) -> pyproj.CRS:
    """The pyproj CRS for an authority code, WKT or PROJ string; ProtocolError(BAD_CRS) if PROJ does not know it."""
    if not isinstance(crs, str) or not crs.strip():
        raise ProtocolError(ErrorCode.BAD_CRS, f"CRS must be a non-empty string such as 'EPSG:3857', got {crs!r}")
    return _parse_crs(crs.strip())


@functools.lru_cache(maxsize=64)
def _parse_crs(crs: str) -> pyproj.CRS:
    try:
        return pyproj.CRS.from_user_input(crs)
    except CRSError as exc:
        raise ProtocolError(ErrorCode.BAD_CRS, f"unknown CRS {crs!r}: PROJ cannot interpret it ({exc})") from None
