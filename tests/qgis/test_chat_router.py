"""Free text in the chat dock: the engine's router picks the task, which then runs exactly as its slash
command would, and the answer says what was done (issue 21, "requests in plain language").

    QT_QPA_PLATFORM=offscreen .venv/bin/python -m pytest tests/qgis/test_chat_router.py

The fake engine answers ``route`` with the engine's real router (rs_assistant.engine.router).
"""

from __future__ import annotations

import dataclasses

from qgis.core import QgsCoordinateReferenceSystem, QgsRectangle

from rs_assistant.core.commands import CommandKind
from rs_assistant.core.conversation import TurnState
from rs_assistant.core.protocol import ErrorCode, Intent, ProtocolError, Task, feature_collection
from rs_assistant.engine.router import ClassList
from tests.qgis.conftest import add_raster
from tests.qgis.fake_engine import FakeEngineClient
from tests.qgis.rasters import write_geotiff
from tests.qgis.test_chat_dock import ask, wait_answer


def transcript(assistant) -> str:
    return assistant.dock.transcriptView.toPlainText()


def drawn(assistant) -> int:
    return sum(layer.featureCount() for layer in assistant.controller.last_layers)


def test_outline_the_water_segments_and_draws(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "outline the water")
    turn = wait_answer(qtbot, assistant)
    [routed] = assistant.client.routed
    assert routed.prompt == "outline the water" and routed.images == 1
    request = assistant.client.requests[-1]
    assert request.task is Task.SEGMENT and request.prompt == "water"
    assert turn.state is TurnState.ANSWERED and turn.command.kind is CommandKind.SEGMENT
    assert drawn(assistant) == 2 and {f["kind"] for f in assistant.controller.last_layers[0].getFeatures()} == {"mask"}
    assert "Outlined water: 2 polygon(s)" in transcript(assistant)
    assert "outline the water" in transcript(assistant)  # the question as typed


class OneBox(FakeEngineClient):
    """Answers a find with one box."""

    def analyze(self, request):
        response = super().analyze(request)
        return dataclasses.replace(response, features=feature_collection(response.feature_list[:1]))


def test_how_many_counts_the_features_drawn(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "how many cars are there?")
    turn = wait_answer(qtbot, assistant)
    request = assistant.client.requests[-1]
    assert request.task is Task.GROUND and request.prompt == "cars"
    assert turn.answer.startswith(f"Counted {drawn(assistant)} cars") and drawn(assistant) == 2
    assert "found 2" not in turn.answer  # the model's own words about the number are not repeated

    one = make_assistant(OneBox())
    one.dock.imageLayerCombo.setLayer(one.raster)
    ask(qtbot, one, "combien de voitures y a-t-il ?")
    turn = wait_answer(qtbot, one)
    assert one.client.requests[-1].prompt == "cars"
    assert turn.answer == "Counted 1 car" and drawn(one) == 1


def test_what_changed_with_a_before_and_an_after_compares_them(make_assistant, qtbot, tmp_path):
    assistant = make_assistant()
    after = add_raster(
        assistant.project,
        write_geotiff(tmp_path / "after.tif", 4326, (15.0, 42.0), 0.0001, bright=(50, 50, 90, 90)),
        "after wgs84",
    )
    assistant.dock.imageLayerCombo.setLayer(after)
    assistant.dock.beforeLayerCombo.setLayer(assistant.raster)
    assistant.dock.afterLayerCombo.setLayer(after)
    assistant.controller.set_region(
        QgsRectangle(1669792, 5160979, 1670500, 5161500), QgsCoordinateReferenceSystem("EPSG:3857")
    )
    ask(qtbot, assistant, "what changed?")
    turn = wait_answer(qtbot, assistant)
    assert assistant.client.routed[-1].images == 2
    request = assistant.client.requests[-1]
    assert request.task is Task.CHANGE and request.prompt == "what changed?"
    assert [i.source for i in request.images] == [
        assistant.raster.source(),
        after.source(),
    ]  # the pair, not the after alone
    assert turn.state is TurnState.ANSWERED and turn.answer.startswith("Compared utm image with after wgs84")


def test_what_changed_without_a_pair_says_it_needs_a_before_and_an_after(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    assistant.dock.beforeLayerCombo.setLayer(None)
    assistant.dock.afterLayerCombo.setLayer(None)
    ask(qtbot, assistant, "what changed here?")
    turn = wait_answer(qtbot, assistant)
    assert assistant.client.requests == []
    assert turn.state is TurnState.FAILED and "Choose a before and an after layer" in transcript(assistant)


def test_a_slash_command_still_forces_its_task_without_the_router(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/segment how many cars are there?")
    turn = wait_answer(qtbot, assistant)
    assert assistant.client.routed == []
    request = assistant.client.requests[-1]
    assert request.task is Task.SEGMENT and request.prompt == "how many cars are there?"
    assert turn.answer == "found 2"  # a slash command's answer is the model's own text


def test_a_follow_up_uses_the_conversation_and_says_what_it_assumed(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "/find buildings")
    wait_answer(qtbot, assistant)
    ask(qtbot, assistant, "and the largest one?")
    turn = wait_answer(qtbot, assistant)
    assert [(m.role.value, m.content) for m in assistant.client.routed[-1].history][0] == ("user", "/find buildings")
    assert assistant.client.requests[-1].task is Task.GROUND
    assert assistant.client.requests[-1].prompt == "the largest building"
    assert "Took this to mean the largest building, from your last request" in transcript(assistant)
    assert turn.answer.startswith("Looked for the largest building: 2 found")


def test_a_class_the_model_does_not_know_is_said_with_the_classes_it_knows(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.client.classes = ClassList("default", ("buildings", "roads", "vehicles"), frozenset({"building", "car"}))
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "find the helicopters")
    turn = wait_answer(qtbot, assistant)
    assert assistant.client.requests == []  # nothing run
    text = transcript(assistant)
    assert "does not know 'helicopters'" in text and "buildings, roads, vehicles" in text
    assert "Type /find helicopters to try anyway." in text and turn.state is TurnState.ANSWERED
    ask(qtbot, assistant, "/find helicopters")  # the person insists: the slash command runs it
    wait_answer(qtbot, assistant)
    assert assistant.client.requests[-1].prompt == "helicopters"


class OldEngine(FakeEngineClient):
    def route(self, prompt, history=(), images=1, model="auto"):
        raise ProtocolError(ErrorCode.NOT_FOUND, "no route POST /v1/route")


def test_an_engine_without_the_router_gets_free_text_as_a_question(make_assistant, qtbot):
    assistant = make_assistant(OldEngine())
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "how many cars are there?")
    turn = wait_answer(qtbot, assistant)
    request = assistant.client.requests[-1]
    assert request.task is Task.CHAT and request.prompt == "how many cars are there?"
    assert turn.state is TurnState.ANSWERED and turn.answer == "a dark field with a bright square"
    assert Intent.CHAT.value == "chat"


class SaysWhy(FakeEngineClient):
    """Draws nothing and says why, as the built-in model does for a class it does not know."""

    def analyze(self, request):
        response = super().analyze(request)
        why = "This model does not know wind turbines. It can find buildings and roads."
        return dataclasses.replace(response, text=why, features=feature_collection([]), held_back=None)


def test_when_nothing_is_drawn_the_models_own_words_say_why(make_assistant, qtbot):
    assistant = make_assistant(SaysWhy())
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "find the wind turbines")
    turn = wait_answer(qtbot, assistant)
    assert assistant.client.requests[-1].task is Task.GROUND
    assert turn.answer.startswith("Found no wind turbines")
    assert "This model does not know wind turbines. It can find buildings and roads." in transcript(assistant)


def test_when_objects_are_drawn_the_answer_says_what_was_done_not_the_models_summary(make_assistant, qtbot):
    assistant = make_assistant()
    assistant.dock.imageLayerCombo.setLayer(assistant.raster)
    ask(qtbot, assistant, "find the buildings")
    turn = wait_answer(qtbot, assistant)
    assert turn.answer.splitlines()[0] == "Found 2 buildings" and drawn(assistant) == 2
    assert len(turn.answer.splitlines()) == 1  # the model's text ("found 2") is not repeated
