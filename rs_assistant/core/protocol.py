"""The wire protocol between the plugin and the engine (docs/architecture.md, "Protocol").

One definition serves both sides: the plugin builds requests from these dataclasses, the engine
validates incoming JSON into the same classes. Pure standard library: no qgis, no Qt, no torch.

Every validation failure raises :class:`ProtocolError` with a stable :class:`ErrorCode`; the UI
turns codes into translated text, the engine into HTTP statuses.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

PROTOCOL_VERSION = "1"


class Task(str, enum.Enum):
    CAPTION = "caption"
    GROUND = "ground"
    SEGMENT = "segment"
    CHANGE = "change"
    CHAT = "chat"
    CLASSIFY = "classify"
    RETRIEVE = "retrieve"


class FeatureKind(str, enum.Enum):
    BOX = "box"
    MASK = "mask"
    CHANGE = "change"
    POINT = "point"
    TILE = "tile"  # batch jobs only: a tile of the grid (describe, search, per-tile change captions)


class Role(str, enum.Enum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"


class ErrorCode(str, enum.Enum):
    """Stable error codes. The first group are the caller's mistakes (HTTP 4xx)."""

    BAD_REQUEST = "bad_request"
    UNKNOWN_TASK = "unknown_task"
    UNKNOWN_MODEL = "unknown_model"
    UNSUPPORTED_TASK = "unsupported_task"
    BAD_IMAGE_COUNT = "bad_image_count"
    BAD_EXTENT = "bad_extent"
    BAD_CRS = "bad_crs"
    SOURCE_NOT_FOUND = "source_not_found"
    UNREADABLE_SOURCE = "unreadable_source"
    EXTENT_OUTSIDE = "extent_outside"
    REGION_TOO_LARGE = "region_too_large"
    PROMPT_TOO_LONG = "prompt_too_long"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    PAYLOAD_TOO_LARGE = "payload_too_large"
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
    ErrorCode.UNSUPPORTED_TASK: 400,
    ErrorCode.BAD_IMAGE_COUNT: 400,
    ErrorCode.BAD_EXTENT: 400,
    ErrorCode.BAD_CRS: 400,
    ErrorCode.SOURCE_NOT_FOUND: 404,
    ErrorCode.UNREADABLE_SOURCE: 422,
    ErrorCode.EXTENT_OUTSIDE: 422,
    ErrorCode.REGION_TOO_LARGE: 413,
    ErrorCode.PROMPT_TOO_LONG: 422,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.CANCELLED: 499,
    ErrorCode.MODEL_LOAD_FAILED: 500,
    ErrorCode.NOT_IMPLEMENTED: 501,
    ErrorCode.INTERNAL: 500,
    ErrorCode.ENGINE_UNREACHABLE: 503,
}


class ProtocolError(Exception):
    """A typed error: ``code`` is stable, ``message`` is for people (English, engine side)."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code.value, "message": self.message}}

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
        return cls(code, str(err.get("message", "")))

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
    crs: str
    source: str | None = None
    png_base64: str | None = None
    bands: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "extent", validate_extent(self.extent))
        object.__setattr__(self, "crs", validate_crs(self.crs))
        has_source = bool(self.source)
        has_png = bool(self.png_base64)
        if has_source == has_png:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "each image needs exactly one of 'source' or 'png_base64'")
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
                    ErrorCode.BAD_REQUEST, f"'bands' must list 1 or 3 band numbers starting at 1, got {self.bands!r}"
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
        _reject_unknown(data, {"extent", "crs", "source", "png_base64", "bands"}, "image")
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
    content: str

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
    max_new_tokens: int = 128
    score_threshold: float = 0.3
    max_side: int = 1024
    labels: tuple[str, ...] = ()  # classify: candidate labels
    top_k: int = 5  # retrieve

    MAX_SIDE_LIMIT = 4096  # engine-wide ceiling on the resampled window's longer side

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "max_new_tokens", int(self.max_new_tokens))
            object.__setattr__(self, "score_threshold", float(self.score_threshold))
            object.__setattr__(self, "max_side", int(self.max_side))
            object.__setattr__(self, "top_k", int(self.top_k))
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
        if self.top_k < 1:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "top_k must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "score_threshold": self.score_threshold,
            "max_side": self.max_side,
            "top_k": self.top_k,
        }
        if self.labels:
            out["labels"] = list(self.labels)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Options:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'options' must be an object")
        _reject_unknown(data, {"max_new_tokens", "score_threshold", "max_side", "labels", "top_k"}, "options")
        values: dict[str, Any] = {
            k: (tuple(v) if k == "labels" and isinstance(v, list) else v) for k, v in data.items()
        }
        return cls(**values)


@dataclass(frozen=True)
class AnalyzeRequest:
    task: Task
    images: tuple[ImageRef, ...]
    output_crs: str
    model: str = "default"
    prompt: str = ""
    history: tuple[Message, ...] = ()
    options: Options = field(default_factory=Options)

    MAX_PROMPT_CHARS = 8000

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
        object.__setattr__(self, "output_crs", validate_crs(self.output_crs))
        images = tuple(self.images)
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
        object.__setattr__(self, "history", tuple(self.history))
        if not isinstance(self.options, Options):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "options must be an Options object")
        if self.task is Task.CLASSIFY and not self.options.labels and not self.prompt.strip():
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "classify needs candidate labels (options.labels or a comma-separated prompt)"
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
        _reject_unknown(data, {"task", "model", "prompt", "images", "history", "output_crs", "options"}, "request")
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
        return cls.from_dict(_loads(text))


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
    """

    text: str
    features: dict[str, Any]
    crs: str
    model: str
    request_id: str
    timing_ms: Timing = field(default_factory=Timing)
    held_back: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_features("features", self.features)
        if self.held_back is not None:
            _check_features("held_back", self.held_back)

    @property
    def feature_list(self) -> list[dict[str, Any]]:
        return list(self.features.get("features", []))

    @property
    def held_back_list(self) -> list[dict[str, Any]]:
        """The detections under the score threshold (none from an engine that does not send them)."""
        return list((self.held_back or {}).get("features", []))

    def to_dict(self) -> dict[str, Any]:
        data = {
            "text": self.text,
            "features": self.features,
            "crs": self.crs,
            "model": self.model,
            "request_id": self.request_id,
            "timing_ms": self.timing_ms.to_dict(),
        }
        if self.held_back is not None:
            data["held_back"] = self.held_back
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
            )
        except KeyError as exc:
            raise ProtocolError(ErrorCode.INTERNAL, f"response is missing {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> AnalyzeResponse:
        return cls.from_dict(_loads(text))


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


@dataclass(frozen=True)
class ModelInfo:
    name: str
    backend: str
    tasks: tuple[Task, ...]
    loaded: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "tasks": [t.value for t in self.tasks],
            "loaded": self.loaded,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        return cls(
            name=str(data["name"]),
            backend=str(data["backend"]),
            tasks=tuple(Task(t) for t in data.get("tasks", [])),
            loaded=bool(data.get("loaded", False)),
        )


def model_list_to_dict(models: Sequence[ModelInfo]) -> dict[str, Any]:
    """The body of ``GET /v1/models``: ``models``, and the same entries as ``data`` in OpenAI's list shape.

    Each entry is a ModelInfo dict plus OpenAI's ``id`` (the name), ``object`` and ``owned_by``,
    so that both the plugin and OpenAI-compatible tools can list the engine's models.
    """
    entries = [{"id": m.name, "object": "model", "owned_by": "rs_assistant", **m.to_dict()} for m in models]
    return {"object": "list", "data": entries, "models": entries}


def model_list_from_dict(data: Any) -> list[ModelInfo]:
    """The models of a ``GET /v1/models`` body."""
    entries = data.get("models", data.get("data")) if isinstance(data, Mapping) else None
    if not isinstance(entries, list):
        raise ProtocolError(ErrorCode.INTERNAL, "the model list must be an object with a 'models' list")
    try:
        return [ModelInfo.from_dict(entry) for entry in entries]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(ErrorCode.INTERNAL, f"malformed model list entry: {exc}") from None


class DeviceType(str, enum.Enum):
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


@dataclass(frozen=True)
class DeviceInfo:
    """What the engine computes on (``device_info`` of ``GET /v1/health``, and ``engine selftest``).

    ``memory_gb`` is the GPU's memory on CUDA, the machine's on MPS/CPU (None where unknown);
    ``dtype`` the compute dtype ("bfloat16", "float32"); ``torch`` torch's version; ``cuda`` the CUDA
    version torch was built for (None for a CPU-only build); ``warning`` says what is wrong and what
    to do when the engine runs on the CPU although the machine has an NVIDIA GPU ("" when all is well).
    """

    type: DeviceType
    name: str
    memory_gb: float | None
    dtype: str
    torch: str
    cuda: str | None = None
    warning: str = ""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "type", DeviceType(self.type))
        except ValueError:
            raise ProtocolError(ErrorCode.INTERNAL, f"device type {self.type!r} is not one of cpu|cuda|mps") from None
        for name in ("name", "dtype", "torch", "warning"):
            if not isinstance(getattr(self, name), str):
                raise ProtocolError(
                    ErrorCode.INTERNAL, f"device_info.{name} must be a string, got {getattr(self, name)!r}"
                )
        if self.cuda is not None and not isinstance(self.cuda, str):
            raise ProtocolError(ErrorCode.INTERNAL, f"device_info.cuda must be a string or null, got {self.cuda!r}")
        if self.memory_gb is not None:
            try:
                memory = float(self.memory_gb)
            except (TypeError, ValueError):
                raise ProtocolError(
                    ErrorCode.INTERNAL, f"device_info.memory_gb must be a number or null, got {self.memory_gb!r}"
                ) from None
            if not (math.isfinite(memory) and memory >= 0):
                raise ProtocolError(
                    ErrorCode.INTERNAL, f"device_info.memory_gb must be 0 or more, got {self.memory_gb!r}"
                )
            object.__setattr__(self, "memory_gb", memory)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "name": self.name,
            "memory_gb": self.memory_gb,
            "dtype": self.dtype,
            "torch": self.torch,
            "cuda": self.cuda,
            "warning": self.warning,
        }

    @classmethod
    def from_dict(cls, data: Any) -> DeviceInfo:
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.INTERNAL, f"device_info must be an object, got {type(data).__name__}")
        missing = sorted({"type", "name", "dtype", "torch"} - set(data))
        if missing:
            raise ProtocolError(ErrorCode.INTERNAL, f"device_info is missing {', '.join(missing)}")
        return cls(
            type=data["type"],
            name=data["name"],
            memory_gb=data.get("memory_gb"),
            dtype=data["dtype"],
            torch=data["torch"],
            cuda=data.get("cuda"),
            warning=data.get("warning") or "",
        )


@dataclass(frozen=True)
class Health:
    """``GET /v1/health``: ``device`` is a short description ("cuda (NVIDIA H100, bfloat16)"),
    ``device_info`` the details (None from engines older than it)."""

    status: str
    version: str
    device: str
    device_info: DeviceInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "version": self.version, "device": self.device}
        if self.device_info is not None:
            out["device_info"] = self.device_info.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Health:
        if not isinstance(data, Mapping) or "status" not in data:
            raise ProtocolError(ErrorCode.INTERNAL, "health must be an object with a 'status'")
        info = data.get("device_info")
        return cls(
            status=str(data["status"]),
            version=str(data.get("version", "")),
            device=str(data.get("device", "")),
            device_info=DeviceInfo.from_dict(info) if info is not None else None,
        )


# --- routing a free-text turn (POST /v1/route) --------------------------------------------------


class Intent(str, enum.Enum):
    """What a free-text turn asks for. ``count`` runs ``ground``; its number is the features drawn."""

    CAPTION = "caption"
    GROUND = "ground"
    SEGMENT = "segment"
    CHANGE = "change"
    COUNT = "count"
    RETRIEVE = "retrieve"
    CHAT = "chat"


@dataclass(frozen=True)
class RouteRequest:
    """``POST /v1/route``: the typed text, the conversation so far (as typed: slash commands included)
    and how many images are chosen (2: a before and an after). ``model`` is the model the person chose
    ("auto": each task's own); the router checks the object against its class list when it has one."""

    prompt: str
    history: tuple[Message, ...] = ()
    images: int = 1
    model: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'prompt' must be a string")
        if not self.prompt.strip():
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "the prompt is empty: type a request such as 'find the buildings'"
            )
        if len(self.prompt) > AnalyzeRequest.MAX_PROMPT_CHARS:
            raise ProtocolError(
                ErrorCode.PROMPT_TOO_LONG,
                f"prompt has {len(self.prompt)} characters; the limit is {AnalyzeRequest.MAX_PROMPT_CHARS}",
            )
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images not in (1, 2):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"'images' must be 1 or 2 (2: a before and an after are chosen), got {self.images!r}",
            )
        if not isinstance(self.model, str) or not self.model:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'model' must be a non-empty string")
        history = tuple(self.history)
        if not all(isinstance(m, Message) for m in history):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "history must be Message objects")
        object.__setattr__(self, "history", history)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "history": [m.to_dict() for m in self.history],
            "images": self.images,
            "model": self.model,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> RouteRequest:
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "request body must be a JSON object")
        _reject_unknown(data, {"prompt", "history", "images", "model"}, "route request")
        history = data.get("history") or []
        if not isinstance(history, list):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'history' must be a list")
        return cls(
            prompt=data.get("prompt", ""),
            history=tuple(Message.from_dict(m) for m in history),
            images=data.get("images", 1),
            model=data.get("model") or "auto",
        )


@dataclass(frozen=True)
class RouteResult:
    """``POST /v1/route``'s answer. ``prompt`` is what to pass on as the task's prompt ("buildings" for
    "how many buildings are there?"); ``assumed`` is "" when the router is sure, else one short English
    sentence saying what it assumed; ``known_classes`` is set (and the task should not run) when the
    object is not one of the classes of a model with a fixed class list: it lists them."""

    intent: Intent
    prompt: str
    assumed: str = ""
    confidence: float = 1.0
    known_classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "intent", Intent(self.intent))
        except ValueError:
            known = ", ".join(i.value for i in Intent)
            raise ProtocolError(ErrorCode.INTERNAL, f"unknown intent {self.intent!r}; known: {known}") from None
        if not isinstance(self.prompt, str) or not isinstance(self.assumed, str):
            raise ProtocolError(ErrorCode.INTERNAL, "'prompt' and 'assumed' must be strings")
        try:
            confidence = float(self.confidence)
        except (TypeError, ValueError):
            raise ProtocolError(ErrorCode.INTERNAL, f"'confidence' must be a number, got {self.confidence!r}") from None
        if not 0.0 <= confidence <= 1.0:
            raise ProtocolError(ErrorCode.INTERNAL, f"'confidence' must be between 0 and 1, got {confidence}")
        object.__setattr__(self, "confidence", confidence)
        if isinstance(self.known_classes, str) or not all(isinstance(c, str) for c in self.known_classes):
            raise ProtocolError(ErrorCode.INTERNAL, "'known_classes' must be a list of strings")
        object.__setattr__(self, "known_classes", tuple(self.known_classes))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "intent": self.intent.value,
            "prompt": self.prompt,
            "assumed": self.assumed,
            "confidence": round(self.confidence, 3),
        }
        if self.known_classes:
            out["known_classes"] = list(self.known_classes)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> RouteResult:
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.INTERNAL, "route response must be a JSON object")
        if "error" in data:
            raise ProtocolError.from_dict(data)
        if "intent" not in data:
            raise ProtocolError(ErrorCode.INTERNAL, "route response is missing 'intent'")
        return cls(
            intent=data["intent"],
            prompt=str(data.get("prompt", "")),
            assumed=str(data.get("assumed") or ""),
            confidence=data.get("confidence", 1.0),
            known_classes=tuple(data.get("known_classes") or ()),
        )


#: The contract's name for the route response.
RouteResponse = RouteResult


# --- batch jobs (whole layers, tiled; POST /v1/batch) -------------------------------------------

#: Tasks a batch job runs, and how many rasters each takes (change: before, after).
BATCH_SOURCES: dict[Task, int] = {
    Task.CAPTION: 1,  # "describe tiles": one caption per tile, as a tile polygon
    Task.GROUND: 1,  # "find objects": boxes, duplicates across tiles merged
    Task.SEGMENT: 1,  # masks, objects crossing a tile seam merged into one polygon
    Task.CHANGE: 2,  # change polygons (merged across seams) and a change caption per tile
    Task.RETRIEVE: 1,  # "search by text": tiles ranked by similarity to the prompt
}


class BatchEvent(str, enum.Enum):
    """The ``event`` field of each NDJSON line that ``POST /v1/batch`` streams back.

    - ``start``: ``job_id``, ``model`` (the model that answers: ``auto`` resolved), ``tiles`` (tiles in the
      grid), ``todo`` (tiles this run will do, after ``skip_tiles``), ``crs`` (of every feature), ``tile_size``,
    ``overlap``, ``batch_size`` (in force).
    - ``tile``: ``tile`` (its id), ``done`` / ``todo`` (progress of this run), ``text`` (caption, may be
      empty), ``features`` (final GeoJSON features for the output layer, each with ``properties.tile``),
      ``pending`` (pieces that touch the tile's seam: not final; keep them to resume, wait for ``merged``).
    - ``merged``: ``features``: the pending pieces of the whole job (this run's and the request's),
      merged across seams; final. Sent once, after the last tile.
    - ``ranked``: ``features``: retrieve only, the ``top_k`` tiles as polygons with ``properties.rank``
      (1 = best) and ``score``. Sent once, after the last tile.
    - ``done``: ``tiles_done``, ``features`` (count written by the job), ``timing_ms`` ({read, infer, post}).
    - ``error``: ``error`` ({code, message}) as in :class:`ProtocolError`; the job stops. What was
      already streamed stays valid; a rerun with ``skip_tiles`` and ``pending`` resumes.
    """

    START = "start"
    TILE = "tile"
    MERGED = "merged"
    RANKED = "ranked"
    DONE = "done"
    ERROR = "error"


@dataclass(frozen=True)
class BatchRequest:
    """A whole-layer job: the engine tiles ``sources`` (local raster paths), reads each tile by window,
    batches tiles through the model and streams :class:`BatchEvent` lines back.

    ``tile_size`` and ``overlap`` are in pixels of the first source at full resolution; the grid
    steps by ``tile_size - overlap`` and each tile owns the central part of its window, so that
    every map point belongs to exactly one tile. ``extent`` (in ``extent_crs``, default the first
    source's CRS) limits the job to part of the raster. ``skip_tiles`` and ``pending`` (the seam
    pieces an interrupted run streamed) resume a job: the same request with them gives the same
    result as an uninterrupted run. ``batch_size`` is the tiles per model call; 0 (the default)
    leaves it to the model (its backend's ``tile_batch_size``: 16 for the built-in model), and the
    start event says the one in force.
    """

    task: Task
    sources: tuple[str, ...]
    output_crs: str
    model: str = "default"
    prompt: str = ""
    extent: tuple[float, float, float, float] | None = None
    extent_crs: str | None = None
    tile_size: int = 512
    overlap: int = 64
    batch_size: int = 0
    bands: tuple[int, ...] | None = None
    skip_tiles: tuple[int, ...] = ()
    pending: tuple[dict[str, Any], ...] = ()
    options: Options = field(default_factory=Options)

    MAX_TILE_SIZE = 2048
    MAX_BATCH_SIZE = 64

    def __post_init__(self) -> None:
        try:
            task = Task(self.task)
        except ValueError:
            raise ProtocolError(ErrorCode.UNKNOWN_TASK, f"unknown task {self.task!r}") from None
        if task not in BATCH_SOURCES:
            known = ", ".join(t.value for t in BATCH_SOURCES)
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_TASK, f"a batch job does not run '{task.value}'; it runs: {known}"
            )
        object.__setattr__(self, "task", task)
        sources = (self.sources,) if isinstance(self.sources, str) else tuple(self.sources)
        if len(sources) != BATCH_SOURCES[task] or not all(isinstance(s, str) and s for s in sources):
            want = BATCH_SOURCES[task]
            raise ProtocolError(
                ErrorCode.BAD_IMAGE_COUNT,
                f"batch '{task.value}' takes {want} raster path(s), got {len(sources)}"
                + (" (give the before and the after raster)" if task is Task.CHANGE else ""),
            )
        object.__setattr__(self, "sources", sources)
        object.__setattr__(self, "output_crs", validate_crs(self.output_crs))
        if not isinstance(self.model, str) or not self.model:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'model' must be a non-empty string")
        if not isinstance(self.prompt, str) or len(self.prompt) > AnalyzeRequest.MAX_PROMPT_CHARS:
            raise ProtocolError(
                ErrorCode.PROMPT_TOO_LONG,
                f"'prompt' must be a string of at most {AnalyzeRequest.MAX_PROMPT_CHARS} characters",
            )
        if task is Task.RETRIEVE and not self.prompt.strip():
            raise ProtocolError(ErrorCode.BAD_REQUEST, "a search needs a description to rank the tiles by (the prompt)")
        if self.extent is not None:
            object.__setattr__(self, "extent", validate_extent(self.extent))
        if self.extent_crs is not None:
            object.__setattr__(self, "extent_crs", validate_crs(self.extent_crs))
        try:
            tile, overlap, batch = int(self.tile_size), int(self.overlap), int(self.batch_size)
            skip = tuple(sorted({int(t) for t in self.skip_tiles}))
        except (TypeError, ValueError):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "tile_size, overlap, batch_size and skip_tiles must be integers"
            ) from None
        if not 32 <= tile <= self.MAX_TILE_SIZE:
            raise ProtocolError(
                ErrorCode.REGION_TOO_LARGE, f"tile_size must be between 32 and {self.MAX_TILE_SIZE} pixels, got {tile}"
            )
        if not 0 <= overlap <= tile // 2:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"overlap must be between 0 and half the tile size ({tile // 2}), got {overlap}"
            )
        if not 0 <= batch <= self.MAX_BATCH_SIZE:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"batch_size must be between 1 and {self.MAX_BATCH_SIZE} (or 0: the model's own), got {batch}",
            )
        if any(t < 0 for t in skip):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "skip_tiles must be tile ids (0 or more)")
        object.__setattr__(self, "tile_size", tile)
        object.__setattr__(self, "overlap", overlap)
        object.__setattr__(self, "batch_size", batch)
        object.__setattr__(self, "skip_tiles", skip)
        pending = tuple(self.pending)
        if not all(isinstance(f, Mapping) and f.get("type") == "Feature" for f in pending):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, "'pending' must be GeoJSON features from an earlier run of the job"
            )
        object.__setattr__(self, "pending", tuple(dict(f) for f in pending))
        if self.bands is not None:
            # the same rule as a single image's bands
            object.__setattr__(
                self, "bands", ImageRef(extent=(0, 0, 1, 1), crs="EPSG:3857", source="x", bands=self.bands).bands
            )
        if not isinstance(self.options, Options):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "options must be an Options object")

    _FIELDS = {
        "task",
        "model",
        "prompt",
        "sources",
        "output_crs",
        "extent",
        "extent_crs",
        "tile_size",
        "overlap",
        "batch_size",
        "bands",
        "skip_tiles",
        "pending",
        "options",
    }

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "task": self.task.value,
            "model": self.model,
            "prompt": self.prompt,
            "sources": list(self.sources),
            "output_crs": self.output_crs,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "batch_size": self.batch_size,
            "skip_tiles": list(self.skip_tiles),
            "pending": list(self.pending),
            "options": self.options.to_dict(),
        }
        if self.extent is not None:
            out["extent"] = list(self.extent)
        if self.extent_crs is not None:
            out["extent_crs"] = self.extent_crs
        if self.bands is not None:
            out["bands"] = list(self.bands)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> BatchRequest:
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "request body must be a JSON object")
        _reject_unknown(data, cls._FIELDS, "batch request")
        for key in ("task", "sources", "output_crs"):
            if key not in data:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"batch request is missing '{key}'")
        return cls(
            task=data["task"],
            sources=data["sources"],
            output_crs=data["output_crs"],
            model=data.get("model", "default"),
            prompt=data.get("prompt") or "",
            extent=data.get("extent"),
            extent_crs=data.get("extent_crs"),
            tile_size=data.get("tile_size", 512),
            overlap=data.get("overlap", 64),
            batch_size=data.get("batch_size", 0),
            bands=data.get("bands"),
            skip_tiles=tuple(data.get("skip_tiles") or ()),
            pending=tuple(data.get("pending") or ()),
            options=Options.from_dict(data.get("options")),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> BatchRequest:
        return cls.from_dict(_loads(text))


# --- helpers -----------------------------------------------------------------------------------


def _loads(text: str | bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"body is not valid JSON: {exc}") from None


def _reject_unknown(data: Mapping[str, Any], allowed: set[str], what: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown field(s) in {what}: {', '.join(unknown)}")
