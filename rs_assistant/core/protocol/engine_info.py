"""What the engine says about itself: the models it serves (``GET /v1/models``, also in OpenAI's list shape) and
its health and compute device (``GET /v1/health``, ``engine selftest``)."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rs_assistant.core.protocol.errors import ErrorCode, ProtocolError
from rs_assistant.core.protocol.vocabulary import Task


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
class BusyRequest:
    """A request the engine is answering now: its ``route`` (/v1/analyze, /v1/chat/completions, /v1/batch),
    ``task``, ``model`` and ``seconds`` since it arrived."""

    route: str
    task: str
    model: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"route": self.route, "task": self.task, "model": self.model, "seconds": round(self.seconds, 1)}

    @classmethod
    def from_dict(cls, data: Any) -> BusyRequest:
        return cls(str(data["route"]), str(data["task"]), str(data["model"]), float(data["seconds"]))


@dataclass(frozen=True)
class Queue:
    """The engine's queue: ``waiting`` requests wait for a model, ``busy`` are being answered; a request that
    would make more than ``limit`` waiting and busy together is refused (429 busy, with Retry-After)."""

    waiting: int
    limit: int
    busy: tuple[BusyRequest, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"waiting": self.waiting, "limit": self.limit, "busy": [b.to_dict() for b in self.busy]}

    @classmethod
    def from_dict(cls, data: Any) -> Queue:
        return cls(
            int(data["waiting"]), int(data["limit"]), tuple(BusyRequest.from_dict(b) for b in data.get("busy", ()))
        )


@dataclass(frozen=True)
class Health:
    """``GET /v1/health``: ``device`` is a short description ("cuda (NVIDIA H100, bfloat16)"),
    ``device_info`` the details (None from engines older than it), ``queue`` what the engine is doing
    (None when not served over HTTP)."""

    status: str
    version: str
    device: str
    device_info: DeviceInfo | None = None
    queue: Queue | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "version": self.version, "device": self.device}
        if self.device_info is not None:
            out["device_info"] = self.device_info.to_dict()
        if self.queue is not None:
            out["queue"] = self.queue.to_dict()
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
            queue=Queue.from_dict(data["queue"]) if isinstance(data.get("queue"), Mapping) else None,
        )
