"""``POST /v1/route`` on a served engine, through the plugin's own client (EngineClient.route).

    .venv/bin/python -m pytest -p no:pytest_qgis -p no:pytest-qt tests/engine/test_route_server.py

The engine has the built-in RSA model (never loaded: routing reads only its config.json's class
list) and an open-vocabulary echo model from a models file.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from rs_assistant.core.client import EngineClient
from rs_assistant.core.protocol import ErrorCode, Intent, Message, ProtocolError, Role
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.server import create_app
from rs_assistant.engine.service import Engine
from tests.engine.fakes import serving, write_models_file

TOKEN = "route-token"


@pytest.fixture(scope="module")
def url(tmp_path_factory) -> Iterator[str]:
    models = write_models_file(tmp_path_factory.mktemp("route") / "models.toml")
    with serving(create_app(Engine(Registry.from_file(models)), TOKEN)) as base:
        yield base


@pytest.fixture()
def client(url) -> EngineClient:
    return EngineClient(url, TOKEN, timeout=30)


def test_a_count_question_routes_to_count_with_the_object_the_built_in_model_knows(client):
    result = client.route("how many cars are there?", model="default")
    assert result.intent is Intent.COUNT and result.prompt == "vehicles" and result.assumed == ""
    # an open-vocabulary model keeps the person's word
    assert client.route("how many cars are there?", model="echo").prompt == "cars"


def test_a_follow_up_uses_the_history_and_a_pair_makes_change(client):
    history = (Message(Role.USER, "/find buildings"), Message(Role.ASSISTANT, "Found 12 buildings"))
    largest = client.route("and the largest one?", history)
    assert (largest.intent, largest.prompt) == (Intent.GROUND, "the largest building") and largest.assumed
    assert client.route("what changed?", images=2).intent is Intent.CHANGE
    assert client.route("décris cette zone").intent is Intent.CAPTION


def test_a_class_the_built_in_model_does_not_know_lists_its_classes(client):
    result = client.route("find the helicopters", model="auto")
    assert result.known_classes and "buildings" in result.known_classes and "ground" not in result.known_classes
    assert "helicopters" in result.assumed and "water bodies" in result.assumed


def test_bad_route_requests_are_the_callers_mistakes(client, url):
    with pytest.raises(ProtocolError) as empty:
        client.route("   ")
    assert empty.value.code is ErrorCode.INVALID_VALUE and "empty" in empty.value.message
    with httpx.Client(base_url=url, timeout=30) as raw:
        assert raw.post("/v1/route", json={"prompt": "find cars"}).status_code == 401  # the token is required
        auth = {"Authorization": f"Bearer {TOKEN}"}
        response = raw.post("/v1/route", json={"prompt": ""}, headers=auth)
        assert response.status_code == 422 and "type a request" in response.json()["error"]["message"]
        response = raw.post("/v1/route", json={"prompt": "find cars", "images": 3}, headers=auth)
        assert response.status_code == 400
        response = raw.post("/v1/route", json={"prompt": "find cars", "model": "nope"}, headers=auth)
        assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_model"
        document = raw.get("/openapi.json", headers=auth).json()
    operation = document["paths"]["/v1/route"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RouteRequest"
    }
    assert {"RouteRequest", "RouteResult"} <= set(document["components"]["schemas"])
    assert "prompt" in document["components"]["schemas"]["RouteRequest"]["properties"]


def test_the_route_verb_prints_the_answer_and_refuses_an_empty_prompt(capsys):
    from rs_assistant.engine.__main__ import main

    assert main(["route", "outline the water"]) == 0
    assert (
        '"intent": "segment", "prompt": "water bodies"' in capsys.readouterr().out
    )  # the built-in model's name for it
    assert main(["route", " "]) == 2
    assert "type a request" in capsys.readouterr().out
    assert main(["route", "how many?", "--history", "not json"]) == 2
    assert "--history is not JSON" in capsys.readouterr().out
