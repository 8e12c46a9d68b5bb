"""The conversation keeps every turn and sends only answered model turns as history."""

from __future__ import annotations

from rs_assistant.core.commands import CommandErrorCode, parse_command
from rs_assistant.core.conversation import Conversation, Problem, Region, TurnState
from rs_assistant.core.protocol import ErrorCode, ImageRef, Message, Role

REGION = Region((0.0, 0.0, 10.0, 10.0), "EPSG:3857")


def test_turns_get_answers_and_errors_in_place():
    conv = Conversation()
    image = ImageRef(extent=REGION.extent, crs=REGION.crs, source="/a.tif")
    first = conv.ask("/find tanks", parse_command("/find tanks"), region=REGION, images=(image,))
    assert first.state is TurnState.PENDING and first.images == (image,)
    second = conv.ask("what?", parse_command("what?"), region=REGION)
    conv.answer(first.id, "3 tanks", feature_count=3, result_layers=("find tanks",))
    conv.fail(second.id, ErrorCode.TIMEOUT, "60 s")
    assert [t.state for t in conv.turns] == [TurnState.ANSWERED, TurnState.FAILED]
    assert conv.get(first.id).feature_count == 3
    assert conv.get(second.id).error is ErrorCode.TIMEOUT
    assert conv.get(second.id).error_detail == "60 s"


def test_cancel_is_its_own_state():
    conv = Conversation()
    turn = conv.ask("hi", parse_command("hi"))
    assert conv.fail(turn.id, ErrorCode.CANCELLED).state is TurnState.CANCELLED


def test_history_holds_answered_model_turns_only():
    conv = Conversation(max_history_turns=2)
    a = conv.ask("/describe", parse_command("/describe"))
    conv.answer(a.id, "fields and a river")
    conv.ask("/help", parse_command("/help"), state=TurnState.ANSWERED)
    bad = conv.ask("/find", None)
    conv.fail(bad.id, CommandErrorCode.MISSING_ARGUMENT)
    b = conv.ask("/ask is the river wide?", parse_command("/ask is the river wide?"))
    conv.answer(b.id, "yes")
    c = conv.ask("and the fields?", parse_command("and the fields?"))
    assert conv.history(before=c.id) == (
        Message(Role.USER, "/describe"),
        Message(Role.ASSISTANT, "fields and a river"),
        Message(Role.USER, "is the river wide?"),
        Message(Role.ASSISTANT, "yes"),
    )
    conv.answer(c.id, "green")
    assert len(conv.history()) == 4  # the oldest turn dropped out
    assert conv.history()[0].content == "is the river wide?"


def test_problem_and_clear():
    conv = Conversation()
    turn = conv.ask("/describe", parse_command("/describe"))
    assert conv.fail(turn.id, Problem.NO_IMAGE_LAYER).error is Problem.NO_IMAGE_LAYER
    conv.clear()
    assert conv.turns == [] and conv.history() == ()
    assert conv.ask("x", None).id == 2  # ids stay unique across New chat
