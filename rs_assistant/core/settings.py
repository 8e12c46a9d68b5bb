"""The plugin's settings as one frozen dataclass (the QGIS side maps it onto QgsSettings keys)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

from rs_assistant.core.protocol import ErrorCode, Options, ProtocolError


class EngineMode(str, enum.Enum):
    MANAGED = "managed"  # the plugin starts the engine with ``engine_python``
    CONNECT = "connect"  # the plugin talks to an engine already running at ``engine_url``


@dataclass(frozen=True)
class Settings:
    engine_python: str = "python3"
    models_file: str = ""
    device: str = ""  # "" lets the engine choose (cuda, mps, cpu)
    engine_url: str = ""  # set: connect to this engine instead of starting one
    engine_token: str = ""
    timeout_s: float = 120.0
    start_timeout_s: float = 180.0
    max_restarts: int = 3
    output_folder: str = ""  # "" writes results next to the project
    max_side: int = 1024

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            wanted = {"str": str, "float": float, "int": int}[f.type]
            try:
                object.__setattr__(self, f.name, wanted(value).strip() if wanted is str else wanted(value))
            except (TypeError, ValueError):
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"setting {f.name} must be a {f.type}, got {value!r}") from None
        if self.timeout_s <= 0 or self.start_timeout_s <= 0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "timeouts must be positive")
        if self.max_restarts < 0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "max_restarts must be 0 or more")
        if not 16 <= self.max_side <= Options.MAX_SIDE_LIMIT:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"max_side must be between 16 and {Options.MAX_SIDE_LIMIT}")
        if self.engine_url and not self.engine_url.startswith("http://"):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"engine URL must start with http://, got {self.engine_url!r}")
        if self.mode is EngineMode.MANAGED and not self.engine_python:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "set the engine's Python interpreter or an engine URL")

    @property
    def mode(self) -> EngineMode:
        return EngineMode.CONNECT if self.engine_url else EngineMode.MANAGED
