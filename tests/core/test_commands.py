"""Slash commands parse into typed commands; mistakes come back as codes."""

from __future__ import annotations

import pytest

from rs_assistant.core.commands import Command, CommandError, CommandErrorCode, CommandKind, parse_command
from rs_assistant.core.protocol import Task


@pytest.mark.parametrize(
    "text, kind, argument, task",
    [
        ("/describe", CommandKind.DESCRIBE, "", Task.CAPTION),
        ("  /find   storage tanks ", CommandKind.FIND, "storage tanks", Task.GROUND),
        ("/FIND ships", CommandKind.FIND, "ships", Task.GROUND),
        ("/segment buildings", CommandKind.SEGMENT, "buildings", Task.SEGMENT),
        ("/change", CommandKind.CHANGE, "", Task.CHANGE),
        ("/change new roads?", CommandKind.CHANGE, "new roads?", Task.CHANGE),
        ("/ask how many fields?", CommandKind.ASK, "how many fields?", Task.CHAT),
        ("/help", CommandKind.HELP, "", None),
        ("is there water here?", CommandKind.CHAT, "is there water here?", Task.CHAT),
        ("line one\nline two", CommandKind.CHAT, "line one\nline two", Task.CHAT),
    ],
)
def test_commands_parse(text, kind, argument, task):
    command = parse_command(text)
    assert (command.kind, command.argument, command.task) == (kind, argument, task)
    assert command.text == text.strip()


def test_title_drops_the_slash():
    assert parse_command("/find storage tanks").title == "find storage tanks"
    assert parse_command("/change").needs_two_images
    assert not parse_command("/find x").needs_two_images


@pytest.mark.parametrize(
    "text, code, kind",
    [
        ("", CommandErrorCode.EMPTY, None),
        ("   \n", CommandErrorCode.EMPTY, None),
        ("/find", CommandErrorCode.MISSING_ARGUMENT, CommandKind.FIND),
        ("/segment   ", CommandErrorCode.MISSING_ARGUMENT, CommandKind.SEGMENT),
        ("/ask", CommandErrorCode.MISSING_ARGUMENT, CommandKind.ASK),
        ("/paint the map", CommandErrorCode.UNKNOWN_COMMAND, None),
        ("/chat hello", CommandErrorCode.UNKNOWN_COMMAND, None),
    ],
)
def test_mistakes_are_codes(text, code, kind):
    with pytest.raises(CommandError) as err:
        parse_command(text)
    assert err.value.code is code
    assert err.value.kind is kind


def test_command_is_frozen():
    with pytest.raises(AttributeError):
        Command(CommandKind.FIND, "x").argument = "y"
