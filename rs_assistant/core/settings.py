"""The plugin's settings as one frozen dataclass (the QGIS side maps it onto QgsSettings keys).

Paths left empty mean "the plugin's own place in the QGIS profile folder" (rs_assistant.ui.profile
resolves them): ``engine_python`` "" is the Python of the environment the engine set-up made in
``engine_env_dir`` ("" = ``<profile>/rs_assistant/engine-env``), ``models_file`` "" is
``<profile>/rs_assistant/models.toml`` when the model manager wrote one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

from rs_assistant.core.protocol import ErrorCode, Options, ProtocolError


class EngineMode(str, enum.Enum):
    MANAGED = "managed"  # the plugin starts the engine with ``engine_python``
    CONNECT = "connect"  # the plugin talks to an engine already running at ``engine_url``


class TorchBuild(str, enum.Enum):
    """Which torch the engine set-up installs (``python -m rs_assistant.setup_engine --torch``)."""

    AUTO = "auto"  # CUDA when an NVIDIA driver is present, else CPU (macOS: PyPI's, with MPS)
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class Settings:
    engine_python: str = ""  # "" = the Python of the set-up environment in engine_env_dir
    models_file: str = ""  # "" = <profile>/rs_assistant/models.toml when it exists
    device: str = ""  # "" lets the engine choose (cuda, mps, cpu)
    engine_url: str = ""  # set: connect to this engine instead of starting one
    engine_token: str = ""
    timeout_s: float = 120.0
    start_timeout_s: float = 180.0
    max_restarts: int = 3
    output_folder: str = ""  # "" writes results next to the project
    max_side: int = 1024
    engine_env_dir: str = ""  # "" = <profile>/rs_assistant/engine-env
    setup_torch: str = TorchBuild.AUTO.value  # a TorchBuild value
    setup_index_url: str = ""  # "" = pip's own (PyPI or pip.conf)
    setup_find_links: str = ""  # a folder of wheels (offline installs)
    setup_proxy: str = ""  # passed to pip as --proxy

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            wanted = {"str": str, "float": float, "int": int}[str(f.type)]
            try:
                object.__setattr__(self, f.name, wanted(value).strip() if wanted is str else wanted(value))
            except (TypeError, ValueError):
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST, f"setting {f.name} must be a {f.type}, got {value!r}"
                ) from None
        if self.timeout_s <= 0 or self.start_timeout_s <= 0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "timeouts must be positive")
        if self.max_restarts < 0:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "max_restarts must be 0 or more")
        if not 16 <= self.max_side <= Options.MAX_SIDE_LIMIT:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"max_side must be between 16 and {Options.MAX_SIDE_LIMIT}")
        if self.engine_url and not self.engine_url.startswith("http://"):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"engine URL must start with http://, got {self.engine_url!r}")
        if self.setup_torch not in {b.value for b in TorchBuild}:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"setup_torch must be one of {', '.join(b.value for b in TorchBuild)}, got {self.setup_torch!r}",
            )
        if self.setup_index_url and not self.setup_index_url.startswith(("http://", "https://")):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"the package index URL must start with http:// or https://, got {self.setup_index_url!r}",
            )

    @property
    def mode(self) -> EngineMode:
        return EngineMode.CONNECT if self.engine_url else EngineMode.MANAGED
