"""What a project keeps of the chat: the transcript as JSON, and the before/after picked by name."""

from __future__ import annotations

import pytest

from rs_assistant.core.commands import CommandErrorCode, parse_command
from rs_assistant.core.conversation import Conversation, Problem, Region, TurnState
from rs_assistant.core.layer_defaults import pick_before_after


def test_the_transcript_round_trips_and_running_turns_come_back_cancelled():
    conversation = Conversation()
    found = conversation.ask("/find cars", parse_command("/find cars"), region=Region((1, 2, 3, 4), "EPSG:3857"))
    conversation.answer(found.id, "found 2", feature_count=2, model="default")
    bad = conversation.ask("/paint", None)
    conversation.fail(bad.id, CommandErrorCode.UNKNOWN_COMMAND)
    gone = conversation.ask("/describe", parse_command("/describe"))
    conversation.fail(gone.id, Problem.LAYER_REMOVED, "site 2019")
    conversation.ask("hello", parse_command("hello"), state=TurnState.QUEUED)

    back = Conversation.from_json(conversation.to_json())

    assert [t.state for t in back.turns] == [
        TurnState.ANSWERED,
        TurnState.FAILED,
        TurnState.FAILED,
        TurnState.CANCELLED,
    ]
    assert back.turns[0].command == found.command and back.turns[0].region == found.region
    assert back.turns[1].command is None and back.turns[1].error is CommandErrorCode.UNKNOWN_COMMAND
    assert back.turns[2].error is Problem.LAYER_REMOVED and back.turns[2].error_detail == "site 2019"
    assert back.history() == conversation.history()
    assert back.ask("next", None).id == 5  # numbering goes on


def test_a_transcript_that_is_not_one_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="not JSON"):
        Conversation.from_json("{oops")
    with pytest.raises(ValueError, match="no list of turns"):
        Conversation.from_json('{"turns": 3}')


@pytest.mark.parametrize(
    "names, expected",
    [
        (["site 2023", "site 2019"], (1, 0)),
        (["S2_20210603", "S2_20200101", "other"], (1, 0)),
        (["after", "before"], (1, 0)),
        (["pre_fire", "post_fire"], (0, 1)),
        (["b", "a"], (1, 0)),
        (["only one"], None),
    ],
)
def test_before_and_after_are_picked_in_time_order(names, expected):
    assert pick_before_after(names) == expected
