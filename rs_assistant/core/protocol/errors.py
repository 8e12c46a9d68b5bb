"""How the protocol says no: stable :class:`ErrorCode` values, their HTTP statuses and :class:`ProtocolError`,
with the shared checks (a CRS, an extent, a JSON body, unknown fields) that raise it; the UI turns codes into
translated text, the engine into HTTP statuses."""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from typing import Any


class ErrorCode(str, enum.Enum):
    """Stable error codes. The first group are the caller's mistakes (HTTP 4xx): 400 for a request that
    breaks the published schema (/openapi.json), 422 for one that is valid by it but cannot be answered as it
    stands (an extent of zero area, a CRS PROJ does not know, a task given the wrong number of images)."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_TASK = "unknown_task"
    UNKNOWN_MODEL = "unknown_model"
    UNSUPPORTED_TASK = "unsupported_task"
    BAD_IMAGE_COUNT = "bad_image_count"
    BAD_EXTENT = "bad_extent"
    BAD_CRS = "bad_crs"
    SOURCE_NOT_FOUND = "source_not_found"
    UNREADABLE_SOURCE = "unreadable_source"
    REMOTE_SOURCE_REFUSED = "remote_source_refused"  # a URL or GDAL virtual path; the engine lacks --allow-remote
    EXTENT_OUTSIDE = "extent_outside"
    MOSTLY_OUTSIDE = "mostly_outside"  # the raster covers less of the region than options.min_coverage
    REGION_TOO_LARGE = "region_too_large"
    PROMPT_TOO_LONG = "prompt_too_long"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # PROMPT_TOO_LONG in OpenAI's words (/v1/chat/completions)
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_VALUE = "invalid_value"  # well formed (valid by /openapi.json), but the values do not fit together
    BUSY = "busy"  # the engine's queue is full: retry after the Retry-After header's seconds
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    # The engine's own faults (HTTP 5xx).
    MODEL_LOAD_FAILED = "model_load_failed"
    NOT_IMPLEMENTED = "not_implemented"
    INTERNAL = "internal"
    # Client side only: the engine could not be reached or answered garbage.
    ENGINE_UNREACHABLE = "engine_unreachable"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNKNOWN_TASK: 400,
    ErrorCode.UNKNOWN_MODEL: 404,
    ErrorCode.UNSUPPORTED_TASK: 422,
    ErrorCode.BAD_IMAGE_COUNT: 422,
    ErrorCode.BAD_EXTENT: 422,
    ErrorCode.BAD_CRS: 422,
    ErrorCode.SOURCE_NOT_FOUND: 404,
    ErrorCode.UNREADABLE_SOURCE: 422,
    ErrorCode.REMOTE_SOURCE_REFUSED: 403,
    ErrorCode.EXTENT_OUTSIDE: 422,
    ErrorCode.MOSTLY_OUTSIDE: 422,
    ErrorCode.REGION_TOO_LARGE: 413,
    ErrorCode.PROMPT_TOO_LONG: 422,
    ErrorCode.CONTEXT_LENGTH_EXCEEDED: 422,  # valid by the schema: 422 here (OpenAI answers 400)
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.INVALID_VALUE: 422,
    ErrorCode.BUSY: 429,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.CANCELLED: 499,
    ErrorCode.MODEL_LOAD_FAILED: 500,
    ErrorCode.NOT_IMPLEMENTED: 501,
    ErrorCode.INTERNAL: 500,
    ErrorCode.ENGINE_UNREACHABLE: 503,
}


class ProtocolError(Exception):
    """A typed error: ``code`` is stable, ``message`` is for people (English, engine side)."""

    def __init__(self, code: ErrorCode, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.param = param  # the request field at fault ("options.max_side"), when one is

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    @property
    def error_type(self) -> str:
        """The kind of error in OpenAI's words (its clients read ``error.type``)."""
        status = self.http_status
        if status == 401:
            return "authentication_error"
        if status == 404:
            return "not_found_error"
        if status == 429:
            return "rate_limit_error"
        return "server_error" if status >= 500 else "invalid_request_error"

    def to_dict(self) -> dict[str, Any]:
        """``{"error": {"code", "message", "type", "param"}}``: this protocol's code and message, and the
        fields OpenAI's error objects have."""
        return {
            "error": {"code": self.code.value, "message": self.message, "type": self.error_type, "param": self.param}
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProtocolError:
        err = data.get("error") if isinstance(data, Mapping) else None
        if not isinstance(err, Mapping):
            return cls(ErrorCode.INTERNAL, f"malformed error body: {data!r}"[:500])
        try:
            code = ErrorCode(err.get("code"))
        except ValueError:
            code = ErrorCode.INTERNAL
        param = err.get("param")
        return cls(code, str(err.get("message", "")), param=param if isinstance(param, str) else None)

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.value!r}, {self.message!r})"


# --- small validators --------------------------------------------------------------------------

_CRS_RE = re.compile(r"^(EPSG|ESRI|IGNF|OGC|CRS):[A-Za-z0-9_.]+$", re.IGNORECASE)


def validate_crs(crs: Any) -> str:
    """Accept an authority:code string ("EPSG:3857") or a WKT/PROJ string; return it stripped.

    The engine checks that the CRS is known to PROJ; here only the shape is checked so that
    the plugin can validate without pyproj.
    """
    if not isinstance(crs, str) or not crs.strip():
        raise ProtocolError(ErrorCode.BAD_CRS, f"CRS must be a non-empty string such as 'EPSG:3857', got {crs!r}")
    crs = crs.strip()
    if _CRS_RE.match(crs):
        return crs
    upper = crs.upper()
    if upper.startswith(
        ("PROJCS[", "GEOGCS[", "PROJCRS[", "GEOGCRS[", "GEODCRS[", "COMPD_CS[", "COMPOUNDCRS[", "BOUNDCRS[")
    ):
        return crs
    if crs.startswith("+proj="):
        return crs
    raise ProtocolError(
        ErrorCode.BAD_CRS, f"unknown CRS {crs!r}: use an authority code such as 'EPSG:3857', WKT or a PROJ string"
    )


def validate_extent(extent: Any) -> tuple[float, float, float, float]:
    if not isinstance(extent, (list, tuple)) or len(extent) != 4:
        raise ProtocolError(ErrorCode.BAD_EXTENT, f"extent must be [xmin, ymin, xmax, ymax], got {extent!r}")
    try:
        xmin, ymin, xmax, ymax = (float(v) for v in extent)
    except (TypeError, ValueError):
        raise ProtocolError(ErrorCode.BAD_EXTENT, f"extent values must be numbers, got {extent!r}") from None
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
        raise ProtocolError(ErrorCode.BAD_EXTENT, f"extent values must be finite, got {extent!r}")
    if xmax <= xmin or ymax <= ymin:
        raise ProtocolError(ErrorCode.BAD_EXTENT, f"extent has zero or negative area: {extent!r}")
    return (xmin, ymin, xmax, ymax)


def parse_json(text: str | bytes) -> Any:
    """The JSON value of a request or response body; BAD_REQUEST when it is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"body is not valid JSON: {exc}") from None


def reject_unknown_fields(data: Mapping[str, Any], allowed: set[str], what: str) -> None:
    """BAD_REQUEST naming the fields of ``data`` (a ``what``) that are not in ``allowed``."""
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown field(s) in {what}: {', '.join(unknown)}")
