"""What the plugin knows about its engine: a state, the fault behind an error, the restart budget.

Pure logic, so the QGIS side (rs_assistant.ui.engine) only wires processes and timers to it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

READY_PREFIX = "READY "


class EngineState(str, enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    ERROR = "error"


class EngineFault(str, enum.Enum):
    INTERPRETER_NOT_FOUND = "interpreter_not_found"
    EXITED = "exited"  # the process ended (crash, bad arguments)
    START_TIMEOUT = "start_timeout"
    NO_TOKEN = "no_token"
    UNREACHABLE = "unreachable"  # a running engine stopped answering its health route
    NOT_SET_UP = "not_set_up"  # no engine Python configured and no set-up environment yet
    MISSING_PACKAGES = "missing_packages"  # the engine exited with ModuleNotFoundError/ImportError
    BAD_CONFIG = "bad_config"  # the engine refused what it was started with (models file, device): exit code 2

    @property
    def needs_setup(self) -> bool:
        """Whether the engine set-up (not a restart) is what helps: the dock shows its panel."""
        return self in (EngineFault.NOT_SET_UP, EngineFault.MISSING_PACKAGES)


_MISSING_MODULE = re.compile(r"(?:ModuleNotFoundError|ImportError): (?:No module named ['\"]?([\w.]+)['\"]?)?")


@dataclass(frozen=True)
class EngineStatus:
    state: EngineState
    fault: EngineFault | None = None
    detail: str = ""  # the engine's own words (last stderr line, exit code), not translated
    restarts_left: int = 0

    def __post_init__(self) -> None:
        if (self.state is EngineState.ERROR) != (self.fault is not None):
            raise ValueError("an error status needs a fault, and only an error status has one")


def missing_module(stderr_lines: Iterable[str]) -> str | None:
    """The module an engine that exited could not import, from the tail of its stderr.

    Only the last line counts (the exception the process died of; an import error logged earlier
    and survived is not the cause): ``ModuleNotFoundError: No module named 'uvicorn'`` ->
    "uvicorn"; an ImportError without a module name (a DLL that failed to load) -> ""; None when
    it died of something else.
    """
    last = next((line for line in reversed(list(stderr_lines)) if line.strip()), "")
    match = _MISSING_MODULE.search(last)
    return None if match is None else match.group(1) or ""


#: The engine's exit code for what it was given (``python -m rs_assistant.engine``'s EXIT_BAD_INPUT): a models
#: file with an error, an unknown device. Restarting cannot help; correcting the configuration can.
EXIT_BAD_CONFIG = 2
_LOG_PREFIX = re.compile(r"^\S+ \S+ (?:CRITICAL|ERROR|WARNING|INFO|DEBUG) [\w.]+: ")


def config_error(exit_code: int, stderr_lines: Iterable[str]) -> str | None:
    """What an engine that exited with EXIT_BAD_CONFIG said was wrong (its last log line without the
    time and logger); None for any other exit."""
    if exit_code != EXIT_BAD_CONFIG:
        return None
    last = next((line for line in reversed(list(stderr_lines)) if line.strip()), "")
    return _LOG_PREFIX.sub("", last.strip())


def parse_ready_line(line: str) -> str | None:
    """``READY http://127.0.0.1:8765`` -> the URL; any other line -> None."""
    line = line.strip()
    if not line.startswith(READY_PREFIX):
        return None
    url = line[len(READY_PREFIX) :].strip()
    return url if url.startswith("http://") else None


class RestartBudget:
    """Allows ``limit`` restarts after crashes; a run that stayed healthy long enough refills it."""

    def __init__(self, limit: int, healthy_after_s: float = 300.0) -> None:
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
