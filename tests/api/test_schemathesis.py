"""The API tier: schemathesis against a running engine (fake models: tests.engine.fakes), every check on.

Bounded and repeatable: a fixed seed and example count. It fails on any server error (5xx), any request the
engine accepts although /openapi.json forbids it, any schema-valid request refused with 400, any response
that does not match its documented schema, and any 405 without ``Allow``. Settings: tests/api/schemathesis.toml.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rs_assistant.engine.registry import Registry
from rs_assistant.engine.server import create_app
from rs_assistant.engine.service import Engine
from tests.engine.fakes import serving, write_models_file

TOKEN = "api-tier-token-0123456789abcdef"
SEED = 23
MAX_EXAMPLES = 150
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("api")
    engine = Engine(Registry.from_file(write_models_file(folder / "models.toml")))
    with serving(create_app(engine, TOKEN, max_body_bytes=1 << 20, request_timeout_s=20)) as base:
        yield base


def test_every_operation_holds_to_its_schema(url, tmp_path):
    command = [
        str(Path(sys.executable).with_name("st")),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "--no-color",
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        "all",
        "--seed",
        str(SEED),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-unique-inputs",
        "--continue-on-failure",
        "--workers",
        "1",
        "--report-dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    print(result.stdout[-20000:])
    assert result.returncode == 0, "schemathesis found failures: see the output above"
    document = httpx.get(f"{url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    operations = sum(len(methods) for methods in document["paths"].values())
    assert f"Tested: {operations}" in result.stdout  # every route of the document was exercised
