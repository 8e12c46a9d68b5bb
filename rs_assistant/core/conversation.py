"""The conversation: turns (question, region, images, answer or error) and the chat history.

Turns are immutable; the conversation replaces a turn when its answer or error arrives. Only
answered model turns make the history sent to the engine: errors and /help stay local.
"""

from __future__ import annotations

import enum
import itertools
import json
import logging
from dataclasses import dataclass, field, fields, replace
from typing import Any, NamedTuple, cast

from rs_assistant.core.commands import Command, CommandError, CommandErrorCode, CommandKind, parse_command
from rs_assistant.core.protocol import ErrorCode, ImageRef, Message, Role

log = logging.getLogger(__name__)


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
    REGION_NO_PIXELS = "region_no_pixels"  # the region is narrower than one of the layer's pixels
    REGION_NOT_TRANSFORMABLE = "region_not_transformable"  # no transform between the region's and the layer's CRS
    LAYER_REMOVED = "layer_removed"  # a layer asked about was removed while its request ran


class TurnState(str, enum.Enum):
    QUEUED = "queued"  # asked while the engine starts: runs when it is ready
    PENDING = "pending"
    ANSWERED = "answered"
    FAILED = "failed"
    CANCELLED = "cancelled"


TurnError = ErrorCode | Problem | CommandErrorCode


@dataclass(frozen=True)
class Region:
    extent: tuple[float, float, float, float]
    crs: str


class FeatureRef(NamedTuple):
    """A feature an answer drew, as its turn lists it (a plain tuple, so it is saved with the transcript)."""

    layer_id: str
    fid: int
    label: str
    kind: str  # FeatureKind's value
    score: float
    area_m2: float | None = None  # on the ground; None for points and lines
    length_m: float | None = None  # lines only


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
    features: tuple[FeatureRef, ...] = ()  # what the answer drew, in the order the transcript lists it
    held_back: int = 0  # detections under the score threshold the person has not asked to see yet
    score_threshold: float = 0.0  # the threshold they are under

    def __post_init__(self) -> None:
        refs = tuple(f if isinstance(f, FeatureRef) else FeatureRef(*f) for f in self.features)  # read back from JSON
        object.__setattr__(self, "features", refs)
        if self.held_back < 0:
            raise ValueError(f"held_back must be 0 or more, got {self.held_back}")

    @property
    def is_help(self) -> bool:
        return self.command is not None and self.command.kind is CommandKind.HELP


@dataclass
class Conversation:
    max_history_turns: int = 8
    turns: list[Turn] = field(default_factory=list)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1), repr=False)

    def ask(self, question: str, command: Command | None, **details: Any) -> Turn:
        turn = Turn(id=next(self._ids), question=question, command=command, **details)
        self.turns.append(turn)
        return turn

    def get(self, turn_id: int) -> Turn:
        return next(t for t in self.turns if t.id == turn_id)

    def update(self, turn_id: int, **changes: Any) -> Turn:
        index = next(i for i, t in enumerate(self.turns) if t.id == turn_id)
        self.turns[index] = replace(self.turns[index], **changes)
        return self.turns[index]

    def answer(self, turn_id: int, text: str, **details: Any) -> Turn:
        return self.update(turn_id, state=TurnState.ANSWERED, answer=text, **details)

    def fail(self, turn_id: int, error: TurnError, detail: str = "") -> Turn:
        if error is ErrorCode.CANCELLED:
            return self.update(turn_id, state=TurnState.CANCELLED, error=error, error_detail=detail)
        return self.update(turn_id, state=TurnState.FAILED, error=error, error_detail=detail)

    def history(self, before: int | None = None) -> tuple[Message, ...]:
        """User/assistant messages of the answered model turns (before turn ``before``), newest last."""
        answered = [
            t
            for t in self.turns
            if t.state is TurnState.ANSWERED and not t.is_help and (before is None or t.id < before)
        ][-self.max_history_turns :]
        messages: list[Message] = []
        for turn in answered:
            messages.append(
                Message(Role.USER, turn.command.argument or turn.question if turn.command else turn.question)
            )
            messages.append(Message(Role.ASSISTANT, turn.answer))
        return tuple(messages)

    def clear(self) -> None:
        self.turns.clear()

    # --- saved with the project -----------------------------------------------------------------
    def to_json(self) -> str:
        """The transcript as JSON (what a project file keeps): every turn's words, state, region and
        answer details; not the images sent (they can be large) nor anything not plain data. A turn
        still waiting or running is saved as cancelled: it will not resume in another session."""
        return json.dumps(
            {"version": TRANSCRIPT_VERSION, "turns": [_turn_to_dict(t) for t in self.turns]},
            ensure_ascii=False,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str, max_history_turns: int = 8) -> Conversation:
        """The conversation :meth:`to_json` saved; raises ValueError (saying what is wrong) for text
        that is not one. Turns keep their numbers and new turns continue after the last one."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"the saved transcript is not JSON ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("turns"), list):
            raise ValueError("the saved transcript has no list of turns")
        read = [_turn_from_dict(item) for item in data["turns"] if isinstance(item, dict)]
        turns = [t for t in read if t is not None]
        last = max((t.id for t in turns), default=0)
        return cls(max_history_turns=max_history_turns, turns=turns, _ids=itertools.count(last + 1))


TRANSCRIPT_VERSION = 1
_ERROR_TYPES: dict[str, type[enum.Enum]] = {"engine": ErrorCode, "problem": Problem, "command": CommandErrorCode}
_NOT_SAVED = {"command", "images"}  # the command is parsed again from the question; images are not kept


def _plain(value: Any) -> Any:
    """``value`` as JSON data, or ``_SKIP`` for what is not plain data."""
    if value is None or isinstance(value, (str, int, float, bool)) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        return _SKIP if any(i is _SKIP for i in items) else items
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        entries = {k: _plain(v) for k, v in value.items()}
        return _SKIP if any(i is _SKIP for i in entries.values()) else entries
    return _SKIP


_SKIP = object()


def _turn_to_dict(turn: Turn) -> dict:
    out: dict = {}
    for f in fields(turn):
        value = getattr(turn, f.name)
        if f.name in _NOT_SAVED:
            continue
        if f.name == "state":
            state = TurnState.CANCELLED if value in (TurnState.QUEUED, TurnState.PENDING) else value
            out["state"] = state.value
            if state is not value:
                out["error"], out["error_type"] = ErrorCode.CANCELLED.value, "engine"
        elif f.name == "error":
            if value is not None and "error" not in out:
                kind = next(k for k, t in _ERROR_TYPES.items() if isinstance(value, t))
                out["error"], out["error_type"] = value.value, kind
        elif f.name == "region":
            if value is not None:
                out["region"] = {"extent": list(value.extent), "crs": value.crs}
        else:
            plain = _plain(value)
            if plain is not _SKIP:
                out[f.name] = plain
            else:
                log.debug("turn field %s is not saved with the transcript", f.name)
    return out


def _turn_from_dict(data: dict) -> Turn | None:
    names = {f.name: f for f in fields(Turn)}
    try:
        values = {k: v for k, v in data.items() if k in names and k not in _NOT_SAVED | {"state", "error", "region"}}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        values["state"] = TurnState(data.get("state", TurnState.CANCELLED.value))
        if values["state"] in (TurnState.QUEUED, TurnState.PENDING):
            values["state"] = TurnState.CANCELLED
        error_type = _ERROR_TYPES.get(data.get("error_type", ""))
        if error_type is not None and data.get("error"):
            try:
                values["error"] = error_type(data["error"])
            except ValueError:  # a code this version does not know
                values["error"] = ErrorCode.INTERNAL
        region = data.get("region")
        if isinstance(region, dict):
            extent = cast(tuple[float, float, float, float], tuple(float(v) for v in region["extent"]))
            values["region"] = Region(extent, str(region["crs"]))
        try:
            values["command"] = parse_command(str(values.get("question", "")))
        except CommandError:
            values["command"] = None
        return Turn(**values)
    except (TypeError, ValueError, KeyError) as exc:
        log.warning("a saved turn could not be read and is left out: %s", exc)
        return None
