"""What the plugin knows about its engine: a state, the fault behind an error, the restart budget.

Pure logic, so the QGIS side (rs_assistant.ui.engine) only wires processes and timers to it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

READY_PREFIX = "READY "


class EngineState(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    ERROR = "error"


class EngineFault(str, enum.Enum):
    INTERPRETER_NOT_FOUND = "interpreter_not_found"
    EXITED = "exited"  # the process ended (crash, missing package, bad arguments)
    START_TIMEOUT = "start_timeout"
    NO_TOKEN = "no_token"
    UNREACHABLE = "unreachable"  # a running engine stopped answering its health route


@dataclass(frozen=True)
class EngineStatus:
    state: EngineState
    fault: EngineFault | None = None
    detail: str = ""  # the engine's own words (last stderr line, exit code), not translated
    restarts_left: int = 0

    def __post_init__(self) -> None:
        if (self.state is EngineState.ERROR) != (self.fault is not None):
            raise ValueError("an error status needs a fault, and only an error status has one")


def parse_ready_line(line: str) -> str | None:
    """``READY http://127.0.0.1:8765`` -> the URL; any other line -> None."""
    line = line.strip()
    if not line.startswith(READY_PREFIX):
        return None
    url = line[len(READY_PREFIX):].strip()
    return url if url.startswith("http://") else None


class RestartBudget:
    """Allows ``limit`` restarts after crashes; a run that stayed healthy long enough refills it."""

    def __init__(self, limit: int, healthy_after_s: float = 300.0):
        self.limit = limit
        self.healthy_after_s = healthy_after_s
        self.used = 0

    @property
    def left(self) -> int:
        return self.limit - self.used

    def take(self, uptime_s: float) -> bool:
        if uptime_s >= self.healthy_after_s:
            self.used = 0
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def reset(self) -> None:
        self.used = 0
