"""The closed sets every protocol message names: the protocol's version, the tasks, the kinds of feature an
answer draws and the roles in a conversation."""

from __future__ import annotations

import enum

PROTOCOL_VERSION = "1"


class Task(str, enum.Enum):
    CAPTION = "caption"
    GROUND = "ground"
    SEGMENT = "segment"
    CHANGE = "change"
    CHAT = "chat"
    CLASSIFY = "classify"
    RETRIEVE = "retrieve"


class FeatureKind(str, enum.Enum):
    BOX = "box"
    MASK = "mask"
    CHANGE = "change"
    POINT = "point"
    TILE = "tile"  # batch jobs only: a tile of the grid (describe, search, per-tile change captions)


class Role(str, enum.Enum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
