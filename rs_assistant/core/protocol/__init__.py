"""The wire protocol between the plugin and the engine (docs/architecture.md, "Protocol"), and its public API: import
from here (``from rs_assistant.core.protocol import Task``), not from the modules behind it.

One pure-stdlib definition serves both sides (the plugin builds requests from these dataclasses, the engine validates
JSON into them, every failure is a :class:`ProtocolError` with a stable :class:`ErrorCode`), one idea per module:
``vocabulary`` (tasks, feature kinds, roles), ``errors`` (codes, ProtocolError, shared checks), ``analyze``
(``POST /v1/analyze``), ``engine_info`` (models, health, device), ``route`` (``POST /v1/route``), ``batch``
(``POST /v1/batch``).
"""

from __future__ import annotations

from rs_assistant.core.protocol.analyze import (
    IMAGE_COUNT,
    LAND_COVER_SHARE,
    AnalyzeRequest,
    AnalyzeResponse,
    ImageRef,
    Message,
    Options,
    Timing,
    feature_collection,
)
from rs_assistant.core.protocol.batch import BATCH_SOURCES, BatchEvent, BatchRequest
from rs_assistant.core.protocol.engine_info import (
    BusyRequest,
    DeviceInfo,
    DeviceType,
    Health,
    ModelInfo,
    Queue,
    model_list_from_dict,
    model_list_to_dict,
)
from rs_assistant.core.protocol.errors import HTTP_STATUS, ErrorCode, ProtocolError, validate_crs, validate_extent
from rs_assistant.core.protocol.route import Intent, RouteRequest, RouteResponse, RouteResult
from rs_assistant.core.protocol.vocabulary import PROTOCOL_VERSION, FeatureKind, Role, Task

__all__ = [
    "BATCH_SOURCES",
    "HTTP_STATUS",
    "IMAGE_COUNT",
    "LAND_COVER_SHARE",
    "PROTOCOL_VERSION",
    "AnalyzeRequest",
    "AnalyzeResponse",
    "BatchEvent",
    "BatchRequest",
    "BusyRequest",
    "DeviceInfo",
    "DeviceType",
    "ErrorCode",
    "FeatureKind",
    "Health",
    "ImageRef",
    "Intent",
    "Message",
    "ModelInfo",
    "Options",
    "ProtocolError",
    "Queue",
    "Role",
    "RouteRequest",
    "RouteResponse",
    "RouteResult",
    "Task",
    "Timing",
    "feature_collection",
    "model_list_from_dict",
    "model_list_to_dict",
    "validate_crs",
    "validate_extent",
]
