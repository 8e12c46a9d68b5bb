"""Shared pieces of the set-up tier: the offline wheelhouse and a way to run the set-up as QGIS would.

The set-up runs in its own process, ``python -m rs_assistant.setup_engine``, with the repository on
PYTHONPATH (as QGIS puts the plugin folder's parent there) and with pip's configuration switched off
(PIP_CONFIG_FILE=os.devnull, no PIP_* variables), so that what it installs comes only from what the
test gives it: the wheelhouse for the offline route, an unreachable index for the no-network case.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.wheelhouse import engine_wheelhouse

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SetupRun:
    returncode: int
    lines: tuple[str, ...]
    seconds: float

    @property
    def last(self) -> str:
        return self.lines[-1] if self.lines else ""

    @property
    def pip_installs(self) -> list[str]:
        """The pip commands the set-up ran (it logs each as a line starting with '$ ')."""
        return [line for line in self.lines if line.startswith("$ ") and " -m pip install " in line]

    @property
    def steps(self) -> list[str]:
        return [line.split()[1] for line in self.lines if line.startswith("STEP ")]


def hermetic_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def setup_command(*args: str, python: str = sys.executable) -> list[str]:
    return [python, "-m", "rs_assistant.setup_engine", *args]


def run_setup(*args: str, python: str = sys.executable, timeout: float = 900) -> SetupRun:
    start = time.monotonic()
    out = subprocess.run(
        setup_command(*args, python=python),
        cwd=ROOT,
        env=hermetic_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = tuple(line for line in out.stdout.splitlines() if line.strip())
    return SetupRun(out.returncode, lines, time.monotonic() - start)


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    return engine_wheelhouse()
