"""A real engine process on the test backends (tests/engine/fakes.py) for the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = """
[models.default]
backend = "tests.engine.fakes:EchoBackend"

[models.slow]
backend = "tests.engine.fakes:EchoBackend"
delay_s = 30

[models.tiles]
backend = "tests.engine.fakes:TileBackend"
"""


@pytest.fixture(scope="session")
def models_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("engine") / "models.toml"
    path.write_text(MODELS, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def running_engine(models_file, tmp_path_factory):
    """``serve`` started outside the plugin (for connect mode): yields (url, token)."""
    token_file = tmp_path_factory.mktemp("token") / "token"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rs_assistant.engine",
            "serve",
            "--port",
            "0",
            "--models",
            str(models_file),
            "--token-file",
            str(token_file),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    line = process.stdout.readline()
    assert line.startswith("READY "), line
    yield line.split()[1], token_file.read_text().strip()
    process.terminate()
    process.wait(10)
