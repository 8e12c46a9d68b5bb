"""Routing a free-text turn (``POST /v1/route``): the typed text and conversation in a :class:`RouteRequest`,
and the :class:`RouteResult` that names the :class:`Intent` and the prompt to pass on."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from rs_assistant.core.protocol.analyze import FORBID_EXTRA, MAX_HISTORY, MAX_PROMPT_CHARS, AnalyzeRequest, Message
from rs_assistant.core.protocol.errors import ErrorCode, ProtocolError, reject_unknown_fields
from rs_assistant.core.protocol.schema import Limits


class Intent(str, enum.Enum):
    """What a free-text turn asks for. ``count`` runs ``ground``; its number is the features drawn."""

    CAPTION = "caption"
    GROUND = "ground"
    SEGMENT = "segment"
    CHANGE = "change"
    COUNT = "count"
    RETRIEVE = "retrieve"
    CHAT = "chat"


@dataclass(frozen=True)
class RouteRequest:
    """``POST /v1/route``: the typed text, the conversation so far (as typed: slash commands included)
    and how many images are chosen (2: a before and an after). ``model`` is the model the person chose
    ("auto": each task's own); the router checks the object against its class list when it has one."""

    prompt: Annotated[str, Limits(max_length=MAX_PROMPT_CHARS, code="prompt_too_long")]
    history: Annotated[tuple[Message, ...], Limits(max_length=MAX_HISTORY)] = ()
    images: Annotated[int, Limits(ge=1, le=2)] = 1
    model: Annotated[str, Limits(min_length=1, max_length=200)] = "auto"

    __pydantic_config__ = FORBID_EXTRA

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'prompt' must be a string")
        if not self.prompt.strip():
            raise ProtocolError(
                ErrorCode.INVALID_VALUE, "the prompt is empty: type a request such as 'find the buildings'"
            )
        if len(self.prompt) > AnalyzeRequest.MAX_PROMPT_CHARS:
            raise ProtocolError(
                ErrorCode.PROMPT_TOO_LONG,
                f"prompt has {len(self.prompt)} characters; the limit is {AnalyzeRequest.MAX_PROMPT_CHARS}",
            )
        images: Any = self.images
        if isinstance(images, float) and images.is_integer():
            object.__setattr__(self, "images", int(images))  # JSON's 1.0 is the integer 1
        if isinstance(self.images, bool) or not isinstance(self.images, int) or self.images not in (1, 2):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"'images' must be 1 or 2 (2: a before and an after are chosen), got {self.images!r}",
            )
        if not isinstance(self.model, str) or not self.model:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'model' must be a non-empty string")
        history = tuple(self.history)
        if not all(isinstance(m, Message) for m in history):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "history must be Message objects")
        object.__setattr__(self, "history", history)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "history": [m.to_dict() for m in self.history],
            "images": self.images,
            "model": self.model,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> RouteRequest:
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "request body must be a JSON object")
        reject_unknown_fields(data, {"prompt", "history", "images", "model"}, "route request")
        history = data.get("history") or []
        if not isinstance(history, list):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "'history' must be a list")
        return cls(
            prompt=data.get("prompt", ""),
            history=tuple(Message.from_dict(m) for m in history),
            images=data.get("images", 1),
            model=data.get("model") or "auto",
        )


@dataclass(frozen=True)
class RouteResult:
    """``POST /v1/route``'s answer. ``prompt`` is what to pass on as the task's prompt ("buildings" for
    "how many buildings are there?"); ``assumed`` is "" when the router is sure, else one short English
    sentence saying what it assumed; ``known_classes`` is set (and the task should not run) when the
    object is not one of the classes of a model with a fixed class list: it lists them."""

    intent: Intent
    prompt: str
    assumed: str = ""
    confidence: float = 1.0
    known_classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "intent", Intent(self.intent))
        except ValueError:
            known = ", ".join(i.value for i in Intent)
            raise ProtocolError(ErrorCode.INTERNAL, f"unknown intent {self.intent!r}; known: {known}") from None
        if not isinstance(self.prompt, str) or not isinstance(self.assumed, str):
            raise ProtocolError(ErrorCode.INTERNAL, "'prompt' and 'assumed' must be strings")
        try:
            confidence = float(self.confidence)
        except (TypeError, ValueError):
            raise ProtocolError(ErrorCode.INTERNAL, f"'confidence' must be a number, got {self.confidence!r}") from None
        if not 0.0 <= confidence <= 1.0:
            raise ProtocolError(ErrorCode.INTERNAL, f"'confidence' must be between 0 and 1, got {confidence}")
        object.__setattr__(self, "confidence", confidence)
        if isinstance(self.known_classes, str) or not all(isinstance(c, str) for c in self.known_classes):
            raise ProtocolError(ErrorCode.INTERNAL, "'known_classes' must be a list of strings")
        object.__setattr__(self, "known_classes", tuple(self.known_classes))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "intent": self.intent.value,
            "prompt": self.prompt,
            "assumed": self.assumed,
            "confidence": round(self.confidence, 3),
        }
        if self.known_classes:
            out["known_classes"] = list(self.known_classes)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> RouteResult:
        if not isinstance(data, Mapping):
            raise ProtocolError(ErrorCode.INTERNAL, "route response must be a JSON object")
        if "error" in data:
            raise ProtocolError.from_dict(data)
        if "intent" not in data:
            raise ProtocolError(ErrorCode.INTERNAL, "route response is missing 'intent'")
        return cls(
            intent=data["intent"],
            prompt=str(data.get("prompt", "")),
            assumed=str(data.get("assumed") or ""),
            confidence=data.get("confidence", 1.0),
            known_classes=tuple(data.get("known_classes") or ()),
        )


#: The contract's name for the route response.
RouteResponse = RouteResult
