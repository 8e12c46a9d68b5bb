"""A recording engine client for the QGIS tests: it answers like the engine, without a process.

It has the :class:`EngineClient` methods the plugin calls (health, models, analyze, cancel) and
records every request. ``analyze`` answers a box over the middle of the requested region (in
the request's output CRS), or raises the error it was given, or waits until cancelled.
"""

from __future__ import annotations

import threading

from rs_assistant.core.protocol import (
    AnalyzeRequest,
    AnalyzeResponse,
    ErrorCode,
    FeatureKind,
    Health,
    ModelInfo,
    ProtocolError,
    Task,
    feature_collection,
)


def _box(extent, fraction: float) -> list:
    xmin, ymin, xmax, ymax = extent
    dx, dy = (xmax - xmin) * fraction, (ymax - ymin) * fraction
    x0, y0, x1, y1 = xmin + dx, ymin + dy, xmax - dx, ymax - dy
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


class FakeEngineClient:
    url = "http://fake"

    def __init__(self, error: ProtocolError | None = None, wait_for_cancel: bool = False):
        self.error = error
        self.wait_for_cancel = wait_for_cancel
        self.requests: list[AnalyzeRequest] = []
        self.started = threading.Event()
        self._cancel = threading.Event()

    def health(self, timeout: float | None = None) -> Health:
        return Health("ok", "0.1.0", "cpu")

    def models(self) -> list[ModelInfo]:
        return [ModelInfo("default", "echo", (Task.CAPTION, Task.GROUND), True),
                ModelInfo("other", "echo", (Task.CHAT,), False)]

    def cancel(self) -> None:
        self._cancel.set()

    def analyze(self, request: AnalyzeRequest) -> AnalyzeResponse:
        self.requests.append(request)
        self._cancel.clear()
        self.started.set()
        if self.wait_for_cancel:
            if self._cancel.wait(30):
                raise ProtocolError(ErrorCode.CANCELLED, "cancelled")
        if self.error is not None:
            raise self.error
        features = []
        if request.task in (Task.GROUND, Task.SEGMENT, Task.CHANGE):
            kind = {Task.GROUND: FeatureKind.BOX, Task.SEGMENT: FeatureKind.MASK, Task.CHANGE: FeatureKind.CHANGE}[request.task]
            for index, fraction in enumerate((0.25, 0.4)):
                features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": _box(request.images[0].extent, fraction)},
                                 "properties": {"kind": kind.value, "label": request.prompt or "change", "score": 0.9 - index * 0.2}})
        text = "a dark field with a bright square" if request.task in (Task.CAPTION, Task.CHAT) else f"found {len(features)}"
        return AnalyzeResponse(text=text, features=feature_collection(features), crs=request.output_crs,
                               model=request.model, request_id=f"req-{len(self.requests)}")
