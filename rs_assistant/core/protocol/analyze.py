"""One question about one region and its answer (``POST /v1/analyze``): the images, the conversation so far and
the options that make an :class:`AnalyzeRequest`, and the :class:`AnalyzeResponse` with its GeoJSON features."""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, cast

from rs_assistant.core.protocol.errors import (
    ErrorCode,
    ProtocolError,
    parse_json,
    reject_unknown_fields,
    validate_crs,
    validate_extent,
)
from rs_assistant.core.protocol.schema import Limits
from rs_assistant.core.protocol.vocabulary import FeatureKind, Role, Task

# Bounds on what a request may hold (written into /openapi.json and checked against it before any work).
MAX_PROMPT_CHARS = 8000
MAX_MESSAGE_CHARS = 8000  # each earlier message of the conversation
MAX_HISTORY = 100  # earlier messages sent with a request (a model's context holds far fewer)
MAX_IMAGES = 64  # retrieve ranks up to this many; every other task takes one or two
MAX_SIDE_LIMIT = 4096  # engine-wide ceiling on the resampled window's longer side
MAX_CRS_CHARS = 20000  # a WKT CRS can be long
MAX_PATH_CHARS = 4096
MAX_LABELS = 256
MAX_LABEL_CHARS = 200
MAX_TOP_K = 1000
#: options.min_coverage by default: refuse a region the raster covers less than 5 % of (MOSTLY_OUTSIDE).
DEFAULT_MIN_COVERAGE = 0.05
#: A response's ``land_cover`` names the classes covering at least this share of the window.
LAND_COVER_SHARE = 0.05

#: Requests refuse fields they do not know (additionalProperties: false in /openapi.json).
FORBID_EXTRA: dict[str, Any] = {"extra": "forbid"}

# --- requests ----------------------------------------------------------------------------------

#: How many images each task takes.
IMAGE_COUNT: dict[Task, tuple[int, int]] = {
    Task.CAPTION: (1, 1),
    Task.GROUND: (1, 1),
    Task.SEGMENT: (1, 1),
    Task.CHANGE: (2, 2),
    Task.CHAT: (1, 2),
    Task.CLASSIFY: (1, 1),
    Task.RETRIEVE: (1, 64),
}


@dataclass(frozen=True)
class ImageRef:
    """One image: a raster the engine reads itself (``source``) or a rendered PNG (``png_base64``).

    ``extent`` and ``crs`` give the region: for a source, the window to read (in ``crs``);
    for a PNG, where the picture lies on the map.
    """

    extent: tuple[float, float, float, float]
    crs: Annotated[str, Limits(min_length=1, max_length=MAX_CRS_CHARS)]
    source: Annotated[str, Limits(min_length=1, max_length=MAX_PATH_CHARS)] | None = None
    png_base64: Annotated[str, Limits(min_length=1)] | None = None
    bands: Annotated[tuple[Annotated[int, Limits(ge=1)], ...], Limits(min_length=1, max_length=3)] | None = None

    __pydantic_config__ = FORBID_EXTRA

    def __post_init__(self) -> None:
        object.__setattr__(self, "extent", validate_extent(self.extent))
        object.__setattr__(self, "crs", validate_crs(self.crs))
        has_source = bool(self.source)
        has_png = bool(self.png_base64)
        if has_source == has_png:
            raise ProtocolError(ErrorCode.INVALID_VALUE, "each image needs exactly one of 'source' or 'png_base64'")
        if self.source is not None and not isinstance(self.source, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"'source' must be a path string, got {self.source!r}")
        if self.png_base64 is not None and not isinstance(self.png_base64, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'png_base64' must be a base64 string")
        if self.bands is not None:
            try:
                bands = tuple(int(b) for b in self.bands)
            except (TypeError, ValueError):
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST, f"'bands' must be band numbers, got {self.bands!r}"
                ) from None
            if len(bands) not in (1, 3) or any(b < 1 for b in bands):
                raise ProtocolError(
                    ErrorCode.INVALID_VALUE, f"'bands' must list 1 or 3 band numbers starting at 1, got {self.bands!r}"
                )
            object.__setattr__(self, "bands", bands)

    def png_bytes(self) -> bytes:
        if self.png_base64 is None:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "image has no png_base64")
        try:
            return base64.b64decode(self.png_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError(ErrorCode.UNREADABLE_SOURCE, "png_base64 is not valid base64") from None

    @classmethod
    def from_png(cls, data: bytes, extent: Sequence[float], crs: str) -> ImageRef:
        box = cast(tuple[float, float, float, float], tuple(extent))  # __post_init__ checks that it has four numbers
        return cls(extent=box, crs=crs, png_base64=base64.b64encode(data).decode("ascii"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"extent": list(self.extent), "crs": self.crs}
        if self.source is not None:
            out["source"] = self.source
        if self.png_base64 is not None:
            out["png_base64"] = self.png_base64
        if self.bands is not None:
            out["bands"] = list(self.bands)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> ImageRef:
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"each image must be an object, got {type(data).__name__}")
        if "extent" not in data:
            raise ProtocolError(ErrorCode.BAD_EXTENT, "image is missing 'extent'")
        if "crs" not in data:
            raise ProtocolError(ErrorCode.BAD_CRS, "image is missing 'crs'")
        reject_unknown_fields(data, {"extent", "crs", "source", "png_base64", "bands"}, "image")
        return cls(
            extent=data["extent"],
            crs=data["crs"],
            source=data.get("source"),
            png_base64=data.get("png_base64"),
            bands=data.get("bands"),
        )


@dataclass(frozen=True)
class Message:
    role: Role
    content: Annotated[str, Limits(max_length=MAX_MESSAGE_CHARS)]

    __pydantic_config__ = FORBID_EXTRA

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "role", Role(self.role))
        except ValueError:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown role {self.role!r}") from None
        if not isinstance(self.content, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "message content must be a string")

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role.value, "content": self.content}

    @classmethod
    def from_dict(cls, data: Any) -> Message:
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "history entries must be objects with role and content")
        role: Any = data.get("role")  # checked by __post_init__
        content: Any = data.get("content")
        return cls(role=role, content=content)


@dataclass(frozen=True)
class Options:
    max_new_tokens: Annotated[int, Limits(ge=1, le=4096)] = 128
    score_threshold: Annotated[float, Limits(ge=0.0, le=1.0)] = 0.3
    max_side: Annotated[int, Limits(ge=16, le=MAX_SIDE_LIMIT)] = 1024
    # classify: candidate labels
    labels: Annotated[
        tuple[Annotated[str, Limits(min_length=1, max_length=MAX_LABEL_CHARS)], ...], Limits(max_length=MAX_LABELS)
    ] = ()
    top_k: Annotated[int, Limits(ge=1, le=MAX_TOP_K)] = 5  # retrieve
    # the least share of the region the raster must cover (with data); below it: MOSTLY_OUTSIDE
    min_coverage: Annotated[float, Limits(ge=0.0, le=1.0)] = DEFAULT_MIN_COVERAGE

    MAX_SIDE_LIMIT = MAX_SIDE_LIMIT
    __pydantic_config__ = FORBID_EXTRA

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "max_new_tokens", int(self.max_new_tokens))
            object.__setattr__(self, "score_threshold", float(self.score_threshold))
            object.__setattr__(self, "max_side", int(self.max_side))
            object.__setattr__(self, "top_k", int(self.top_k))
            object.__setattr__(self, "min_coverage", float(self.min_coverage))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"bad option value: {exc}") from None
        if isinstance(self.labels, str) or not all(isinstance(x, str) for x in self.labels):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'labels' must be a list of strings")
        object.__setattr__(self, "labels", tuple(self.labels))
        if not 1 <= self.max_new_tokens <= 4096:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "max_new_tokens must be between 1 and 4096")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "score_threshold must be between 0 and 1")
        if not 16 <= self.max_side <= self.MAX_SIDE_LIMIT:
            raise ProtocolError(
                ErrorCode.REGION_TOO_LARGE,
                f"max_side must be between 16 and {self.MAX_SIDE_LIMIT} pixels, got {self.max_side}",
            )
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"top_k must be between 1 and {MAX_TOP_K}")
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "min_coverage must be between 0 and 1")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "score_threshold": self.score_threshold,
            "max_side": self.max_side,
            "top_k": self.top_k,
        }
        if self.labels:
            out["labels"] = list(self.labels)
        if self.min_coverage != DEFAULT_MIN_COVERAGE:  # only when set: engines that predate it refuse the field
            out["min_coverage"] = self.min_coverage
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Options:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'options' must be an object")
        reject_unknown_fields(
            data, {"max_new_tokens", "score_threshold", "max_side", "labels", "top_k", "min_coverage"}, "options"
        )
        values: dict[str, Any] = {
            k: (tuple(v) if k == "labels" and isinstance(v, list) else v) for k, v in data.items()
        }
        return cls(**values)


def _output_crs_optional(schema: dict[str, Any], _kind: Any) -> None:
    """In the published schema, ``output_crs`` may be left out: the first image's CRS (from_dict fills it in)."""
    schema["required"] = [name for name in schema.get("required", []) if name != "output_crs"]


@dataclass(frozen=True)
class AnalyzeRequest:
    task: Task
    images: Annotated[tuple[ImageRef, ...], Limits(min_length=1, max_length=MAX_IMAGES, code="bad_image_count")]
    output_crs: Annotated[str, Limits(min_length=1, max_length=MAX_CRS_CHARS)]
    model: Annotated[str, Limits(min_length=1, max_length=200)] = "default"
    prompt: Annotated[str, Limits(max_length=MAX_PROMPT_CHARS, code="prompt_too_long")] = ""
    history: Annotated[tuple[Message, ...], Limits(max_length=MAX_HISTORY)] = ()
    options: Options = field(default_factory=Options)

    MAX_PROMPT_CHARS = MAX_PROMPT_CHARS
    __pydantic_config__ = FORBID_EXTRA | {"json_schema_extra": _output_crs_optional}

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "task", Task(self.task))
        except ValueError:
            known = ", ".join(t.value for t in Task)
            raise ProtocolError(ErrorCode.UNKNOWN_TASK, f"unknown task {self.task!r}; known tasks: {known}") from None
        if not isinstance(self.model, str) or not self.model:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'model' must be a non-empty string")
        if not isinstance(self.prompt, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'prompt' must be a string")
        if len(self.prompt) > self.MAX_PROMPT_CHARS:
            raise ProtocolError(
                ErrorCode.PROMPT_TOO_LONG,
                f"prompt has {len(self.prompt)} characters; the limit is {self.MAX_PROMPT_CHARS}",
            )
        images = tuple(self.images)
        object.__setattr__(self, "output_crs", validate_crs(self.output_crs))
        history = tuple(self.history)
        if len(history) > MAX_HISTORY:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"the conversation has {len(history)} earlier messages; the limit is {MAX_HISTORY} (send the latest)",
            )
        if not all(isinstance(i, ImageRef) for i in images):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "images must be ImageRef objects")
        lo, hi = IMAGE_COUNT[self.task]
        if not lo <= len(images) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise ProtocolError(
                ErrorCode.BAD_IMAGE_COUNT,
                f"task '{self.task.value}' takes {want} image(s), got {len(images)}"
                + (" (give the before and the after image)" if self.task is Task.CHANGE else ""),
            )
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "history", history)
        if not isinstance(self.options, Options):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "options must be an Options object")
        if self.task is Task.CLASSIFY and not self.options.labels and not self.prompt.strip():
            raise ProtocolError(
                ErrorCode.INVALID_VALUE, "classify needs candidate labels (options.labels or a comma-separated prompt)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.value,
            "model": self.model,
            "prompt": self.prompt,
            "images": [i.to_dict() for i in self.images],
            "history": [m.to_dict() for m in self.history],
            "output_crs": self.output_crs,
            "options": self.options.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> AnalyzeRequest:
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "request body must be a JSON object")
        reject_unknown_fields(
            data, {"task", "model", "prompt", "images", "history", "output_crs", "options"}, "request"
        )
        if "task" not in data:
            raise ProtocolError(ErrorCode.UNKNOWN_TASK, "request is missing 'task'")
        images = data.get("images")
        if not isinstance(images, list):
            raise ProtocolError(ErrorCode.BAD_IMAGE_COUNT, "request needs 'images', a list of one or two images")
        history = data.get("history") or []
        if not isinstance(history, list):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'history' must be a list")
        parsed_images = tuple(ImageRef.from_dict(i) for i in images)
        output_crs = data.get("output_crs")
        if output_crs is None and parsed_images:
            output_crs = parsed_images[0].crs
        return cls(
            task=data["task"],
            model=data.get("model", "default"),
            prompt=data.get("prompt", "") if data.get("prompt") is not None else "",
            images=parsed_images,
            history=tuple(Message.from_dict(m) for m in history),
            output_crs=output_crs if output_crs is not None else "",
            options=Options.from_dict(data.get("options")),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> AnalyzeRequest:
        return cls.from_dict(parse_json(text))


# --- responses ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    read: float = 0.0
    infer: float = 0.0
    post: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {"read": round(self.read, 3), "infer": round(self.infer, 3), "post": round(self.post, 3)}


@dataclass(frozen=True)
class AnalyzeResponse:
    """``features`` is a GeoJSON FeatureCollection (a plain dict) in ``crs``.

    ``held_back`` (same shape, or None from engines that predate it) holds the detections under
    ``options.score_threshold``: not drawn, but the person may ask for them ("show 14 more below 0.3").
    ``coverage`` (one number per image, in the request's order; None from engines that predate it) is the
    share (0..1) of the window read for the image that the raster covers with data (not outside it, not nodata).
    ``pixel_size_m`` is the (first) window's ground metres per pixel at its centre (geodesic), and
    ``model_pixel_size_m`` the ground metres per pixel of what the model was fed when its backend resampled
    the window to the scale the model was trained at (a window finer than any it saw); each None when not
    known or not resampled, and from engines that predate them.
    ``land_cover`` (captions of a model with a class map; None otherwise and from engines that predate it) is
    what covers the window: ``(class name, share 0..1)`` pairs (JSON: ``[["grass areas", 0.47], ...]``), the
    largest first, each at least :data:`LAND_COVER_SHARE` of the window.
    """

    text: str
    features: dict[str, Any]
    crs: str
    model: str
    request_id: str
    timing_ms: Timing = field(default_factory=Timing)
    held_back: dict[str, Any] | None = None
    coverage: tuple[float, ...] | None = None
    pixel_size_m: float | None = None
    model_pixel_size_m: float | None = None
    land_cover: tuple[tuple[str, float], ...] | None = None

    def __post_init__(self) -> None:
        _check_features("features", self.features)
        if self.land_cover is not None:
            object.__setattr__(self, "land_cover", _land_cover(self.land_cover))
        if self.held_back is not None:
            _check_features("held_back", self.held_back)
        if self.coverage is not None:
            try:
                coverage = tuple(float(c) for c in self.coverage)
            except (TypeError, ValueError):
                raise ProtocolError(ErrorCode.INTERNAL, f"coverage must be numbers, got {self.coverage!r}") from None
            if not all(0.0 <= c <= 1.0 for c in coverage):
                raise ProtocolError(ErrorCode.INTERNAL, f"coverage must lie between 0 and 1, got {coverage!r}")
            object.__setattr__(self, "coverage", coverage)
        for name in ("pixel_size_m", "model_pixel_size_m"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                size = float(value)
            except (TypeError, ValueError):
                raise ProtocolError(ErrorCode.INTERNAL, f"{name} must be a number, got {value!r}") from None
            if isinstance(value, bool) or not math.isfinite(size) or size <= 0:
                raise ProtocolError(ErrorCode.INTERNAL, f"{name} must be a positive number of metres, got {value!r}")
            object.__setattr__(self, name, size)

    @property
    def feature_list(self) -> list[dict[str, Any]]:
        return list(self.features.get("features", []))

    @property
    def held_back_list(self) -> list[dict[str, Any]]:
        """The detections under the score threshold (none from an engine that does not send them)."""
        return list((self.held_back or {}).get("features", []))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "text": self.text,
            "features": self.features,
            "crs": self.crs,
            "model": self.model,
            "request_id": self.request_id,
            "timing_ms": self.timing_ms.to_dict(),
        }
        if self.held_back is not None:
            data["held_back"] = self.held_back
        if self.coverage is not None:
            data["coverage"] = list(self.coverage)
        if self.pixel_size_m is not None:
            data["pixel_size_m"] = self.pixel_size_m
        if self.model_pixel_size_m is not None:
            data["model_pixel_size_m"] = self.model_pixel_size_m
        if self.land_cover is not None:
            data["land_cover"] = [[name, share] for name, share in self.land_cover]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> AnalyzeResponse:
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.INTERNAL, "response must be a JSON object")
        if "error" in data:
            raise ProtocolError.from_dict(data)
        try:
            timing = data.get("timing_ms") or {}
            return cls(
                text=str(data.get("text", "")),
                features=data["features"],
                crs=str(data["crs"]),
                model=str(data["model"]),
                request_id=str(data["request_id"]),
                timing_ms=Timing(**{k: float(timing.get(k, 0.0)) for k in ("read", "infer", "post")}),
                held_back=data.get("held_back"),
                coverage=data.get("coverage"),
                pixel_size_m=data.get("pixel_size_m"),
                model_pixel_size_m=data.get("model_pixel_size_m"),
                land_cover=data.get("land_cover"),
            )
        except KeyError as exc:
            raise ProtocolError(ErrorCode.INTERNAL, f"response is missing {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> AnalyzeResponse:
        return cls.from_dict(parse_json(text))


def _land_cover(pairs: Any) -> tuple[tuple[str, float], ...]:
    """INTERNAL unless ``pairs`` are (class name, share 0..1) pairs; as a tuple of tuples."""
    try:
        if isinstance(pairs, (str, bytes)) or not all(isinstance(name, str) for name, _ in pairs):
            raise TypeError
        checked = tuple((name, float(share)) for name, share in pairs)
    except (TypeError, ValueError):
        raise ProtocolError(ErrorCode.INTERNAL, f"land_cover must be (class, share) pairs, got {pairs!r}") from None
    if not all(name and 0.0 <= share <= 1.0 for name, share in checked):
        raise ProtocolError(ErrorCode.INTERNAL, f"land_cover shares must lie between 0 and 1, got {pairs!r}")
    return checked


def _check_features(name: str, collection: Any) -> None:
    """INTERNAL unless ``collection`` is a FeatureCollection whose features have a known kind, a label and a score."""
    if not isinstance(collection, Mapping) or collection.get("type") != "FeatureCollection":
        raise ProtocolError(ErrorCode.INTERNAL, f"{name} must be a GeoJSON FeatureCollection")
    for feat in collection.get("features", []):
        props = feat.get("properties") or {}
        try:
            FeatureKind(props.get("kind"))
        except ValueError:
            raise ProtocolError(
                ErrorCode.INTERNAL, f"feature kind {props.get('kind')!r} is not one of box|mask|change|point|tile"
            ) from None
        if "label" not in props or "score" not in props:
            raise ProtocolError(ErrorCode.INTERNAL, f"every feature of {name} needs properties 'label' and 'score'")


def feature_collection(features: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": [dict(f) for f in features]}
