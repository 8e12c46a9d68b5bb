"""Slash commands typed in the chat box, parsed into typed commands (no translated text here).

/describe            caption of the region
/find <what>         grounding: boxes around <what>
/segment <what>      masks of <what>
/change [question]   compare the before and the after image
/search <what>       rank the layer's tiles by a description (a tiled job over the region or the layer)
/ask <question>      chat about the region, with the conversation's history
/help                the list of commands
anything else        free text: the engine's router (POST /v1/route) picks the task, see routed_command
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rs_assistant.core.protocol import Intent, RouteResult, Task


class CommandKind(str, enum.Enum):
    DESCRIBE = "describe"
    FIND = "find"
    SEGMENT = "segment"
    CHANGE = "change"
    ASK = "ask"
    SEARCH = "search"
    HELP = "help"
    CHAT = "chat"


class CommandErrorCode(str, enum.Enum):
    EMPTY = "empty"
    UNKNOWN_COMMAND = "unknown_command"
    MISSING_ARGUMENT = "missing_argument"


TASKS: dict[CommandKind, Task | None] = {
    CommandKind.DESCRIBE: Task.CAPTION,
    CommandKind.FIND: Task.GROUND,
    CommandKind.SEGMENT: Task.SEGMENT,
    CommandKind.CHANGE: Task.CHANGE,
    CommandKind.ASK: Task.CHAT,
    CommandKind.CHAT: Task.CHAT,
    CommandKind.SEARCH: Task.RETRIEVE,
    CommandKind.HELP: None,
}

#: Commands that cannot run without an argument.
NEEDS_ARGUMENT = frozenset({CommandKind.FIND, CommandKind.SEGMENT, CommandKind.ASK, CommandKind.SEARCH})
#: The commands a person types, in the order /help lists them.
SLASH_COMMANDS = (
    CommandKind.DESCRIBE,
    CommandKind.FIND,
    CommandKind.SEGMENT,
    CommandKind.CHANGE,
    CommandKind.ASK,
    CommandKind.SEARCH,
    CommandKind.HELP,
)


class CommandError(Exception):
    def __init__(self, code: CommandErrorCode, text: str, kind: CommandKind | None = None) -> None:
        super().__init__(f"{code.value}: {text!r}")
        self.code = code
        self.text = text
        self.kind = kind


@dataclass(frozen=True)
class Command:
    kind: CommandKind
    argument: str = ""
    text: str = ""  # what the person typed, stripped

    @property
    def task(self) -> Task | None:
        return TASKS[self.kind]

    @property
    def needs_two_images(self) -> bool:
        return self.kind is CommandKind.CHANGE

    @property
    def is_batch(self) -> bool:
        """A tiled job over the layer (``/search``) rather than one request about the region."""
        return self.kind is CommandKind.SEARCH

    @property
    def title(self) -> str:
        """A short name for what was asked (result layers are named after it)."""
        return self.text.lstrip("/").strip()


def parse_command(text: str) -> Command:
    stripped = text.strip()
    if not stripped:
        raise CommandError(CommandErrorCode.EMPTY, text)
    if not stripped.startswith("/"):
        return Command(CommandKind.CHAT, stripped, stripped)
    name, _, argument = stripped[1:].partition(" ")
    argument = argument.strip()
    try:
        kind = CommandKind(name.lower())
    except ValueError:
        raise CommandError(CommandErrorCode.UNKNOWN_COMMAND, stripped) from None
    if kind is CommandKind.CHAT:  # "/chat" is not a command; free text is
        raise CommandError(CommandErrorCode.UNKNOWN_COMMAND, stripped)
    if kind in NEEDS_ARGUMENT and not argument:
        raise CommandError(CommandErrorCode.MISSING_ARGUMENT, stripped, kind)
    return Command(kind, argument, stripped)


#: The command a routed free-text turn runs (count runs /find; its answer counts what was drawn).
INTENT_COMMANDS: dict[Intent, CommandKind] = {
    Intent.CAPTION: CommandKind.DESCRIBE,
    Intent.GROUND: CommandKind.FIND,
    Intent.COUNT: CommandKind.FIND,
    Intent.SEGMENT: CommandKind.SEGMENT,
    Intent.CHANGE: CommandKind.CHANGE,
    Intent.RETRIEVE: CommandKind.SEARCH,
    Intent.CHAT: CommandKind.CHAT,
}


def routed_command(route: RouteResult, text: str) -> Command:
    """The command a free-text turn runs, exactly as its slash command would: the router's prompt as the
    argument (the object for find/segment/count/search, the question itself for change and chat)."""
    stripped = text.strip()
    kind = INTENT_COMMANDS[route.intent]
    if kind in (CommandKind.CHAT, CommandKind.CHANGE):
        argument = route.prompt or stripped
    elif kind is CommandKind.DESCRIBE:
        argument = ""
    else:
        argument = route.prompt
    if kind in NEEDS_ARGUMENT and not argument:
        kind, argument = CommandKind.CHAT, stripped  # nothing to find: ask it as a question
    return Command(kind, argument, stripped)
