"""The conversation: turns (question, region, images, answer or error) and the chat history.

Turns are immutable; the conversation replaces a turn when its answer or error arrives. Only
answered model turns make the history sent to the engine: errors and /help stay local.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field, replace

from rs_assistant.core.commands import Command, CommandErrorCode, CommandKind
from rs_assistant.core.protocol import ErrorCode, ImageRef, Message, Role


class Problem(str, enum.Enum):
    """Why a question was not sent (found on the plugin side, before any request)."""

    NO_IMAGE_LAYER = "no_image_layer"
    NO_BEFORE_AFTER = "no_before_after"
    SAME_BEFORE_AFTER = "same_before_after"
    REGION_OUTSIDE_LAYER = "region_outside_layer"
    ENGINE_NOT_READY = "engine_not_ready"
    RENDER_FAILED = "render_failed"
    LAYER_WRITE_FAILED = "layer_write_failed"
    NOT_A_LOCAL_FILE = "not_a_local_file"  # a tiled job (/search) needs a raster file the engine can read


class TurnState(str, enum.Enum):
    PENDING = "pending"
    ANSWERED = "answered"
    FAILED = "failed"
    CANCELLED = "cancelled"


TurnError = ErrorCode | Problem | CommandErrorCode


@dataclass(frozen=True)
class Region:
    extent: tuple[float, float, float, float]
    crs: str


@dataclass(frozen=True)
class Turn:
    id: int
    question: str
    command: Command | None  # None when the text did not parse
    region: Region | None = None
    images: tuple[ImageRef, ...] = ()
    layer_names: tuple[str, ...] = ()  # the raster layers asked about
    state: TurnState = TurnState.PENDING
    answer: str = ""
    model: str = ""
    request_id: str = ""
    feature_count: int = 0
    result_layers: tuple[str, ...] = ()  # names of the vector layers the answer made
    error: TurnError | None = None
    error_detail: str = ""  # the engine's or the system's own words

    @property
    def is_help(self) -> bool:
        return self.command is not None and self.command.kind is CommandKind.HELP


@dataclass
class Conversation:
    max_history_turns: int = 8
    turns: list[Turn] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1), repr=False)

    def ask(self, question: str, command: Command | None, **details) -> Turn:
        turn = Turn(id=next(self._ids), question=question, command=command, **details)
        self.turns.append(turn)
        return turn

    def get(self, turn_id: int) -> Turn:
        return next(t for t in self.turns if t.id == turn_id)

    def update(self, turn_id: int, **changes) -> Turn:
        index = next(i for i, t in enumerate(self.turns) if t.id == turn_id)
        self.turns[index] = replace(self.turns[index], **changes)
        return self.turns[index]

    def answer(self, turn_id: int, text: str, **details) -> Turn:
        return self.update(turn_id, state=TurnState.ANSWERED, answer=text, **details)

    def fail(self, turn_id: int, error: TurnError, detail: str = "") -> Turn:
        if error is ErrorCode.CANCELLED:
            return self.update(turn_id, state=TurnState.CANCELLED, error=error, error_detail=detail)
        return self.update(turn_id, state=TurnState.FAILED, error=error, error_detail=detail)

    def history(self, before: int | None = None) -> tuple[Message, ...]:
        """User/assistant messages of the answered model turns (before turn ``before``), newest last."""
        answered = [
            t for t in self.turns
            if t.state is TurnState.ANSWERED and not t.is_help and (before is None or t.id < before)
        ][-self.max_history_turns:]
        messages: list[Message] = []
        for turn in answered:
            messages.append(Message(Role.USER, turn.command.argument or turn.question if turn.command else turn.question))
            messages.append(Message(Role.ASSISTANT, turn.answer))
        return tuple(messages)

    def clear(self) -> None:
        self.turns.clear()
