"""A recording engine client for the QGIS tests: it answers like the engine, without a process.

It has the :class:`EngineClient` methods the plugin calls (health, models, analyze, batch, cancel)
and records every request. Like the engine, it answers model ``auto`` with the model ``routes``
names for the request's task (else ``default``), and says so in the response's ``model``. ``analyze`` answers a box
over the middle of the requested region (in
the request's output CRS), or raises the error it was given, or waits until cancelled. With ``held_back=N`` it
also sends N detections under the score threshold (small squares along the region's bottom, scores 0.1, 0.11, ...);
with ``multipart=True`` a segment answer is one MultiPolygon of three squares (an engine that does not split masks).
``batch``
(a search) streams four tiles, the quadrants of the request's extent, and ranks them 3, 1, 0, 2.
"""

from __future__ import annotations

import threading

from rs_assistant.core.protocol import (
    AnalyzeRequest,
    AnalyzeResponse,
    BatchRequest,
    ErrorCode,
    FeatureKind,
    Health,
    ModelInfo,
    ProtocolError,
    RouteRequest,
    RouteResult,
    Task,
    feature_collection,
)


def _box(extent, fraction: float) -> list:
    xmin, ymin, xmax, ymax = extent
    dx, dy = (xmax - xmin) * fraction, (ymax - ymin) * fraction
    x0, y0, x1, y1 = xmin + dx, ymin + dy, xmax - dx, ymax - dy
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def _square(extent, u: float, v: float, half: float) -> list:
    """A square centred at (u, v) of the extent (0-1 each way), ``half`` of the extent's width from centre to side."""
    xmin, ymin, xmax, ymax = extent
    cx, cy, h = xmin + (xmax - xmin) * u, ymin + (ymax - ymin) * v, (xmax - xmin) * half
    return [[[cx - h, cy - h], [cx + h, cy - h], [cx + h, cy + h], [cx - h, cy + h], [cx - h, cy - h]]]


class FakeEngineClient:
    url = "http://fake"

    def __init__(
        self,
        error: ProtocolError | None = None,
        wait_for_cancel: bool = False,
        routes: dict[Task, str] | None = None,
        held_back: int = 0,
        multipart: bool = False,
        drawn: int = 2,
        resampled: tuple[float, float] | None = None,
        land_cover: tuple[tuple[str, float], ...] | None = None,
    ):
        self.land_cover = land_cover  # what a caption's window is covered by, as an engine with a class map says
        self.resampled = resampled  # (the window's pixel size, the model's) in metres: a resampled window
        self.error = error
        self.held_back = held_back
        self.multipart = multipart
        self.drawn = drawn  # boxes over the threshold a find answers (2 by default)
        self.routes = dict(routes or {})
        self.wait_for_cancel = wait_for_cancel
        self.requests: list[AnalyzeRequest | BatchRequest] = []
        self.routed: list[RouteRequest] = []  # what ``route`` was asked (the engine's own router answers)
        self.classes = None  # a router.ClassList: answer like an engine whose grounding model has a fixed class list
        self.started = threading.Event()
        self._cancel = threading.Event()

    def health(self, timeout: float | None = None) -> Health:
        return Health("ok", "0.1.0", "cpu")

    def route(self, prompt: str, history=(), images: int = 1, model: str = "auto") -> RouteResult:
        """``POST /v1/route`` answered by the engine's real router (rs_assistant.engine.router, pure Python),
        with an open vocabulary unless ``classes`` is set."""
        from rs_assistant.engine.router import route

        request = RouteRequest(prompt, tuple(history), images, model)
        self.routed.append(request)
        return route(request, self.classes)

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo("default", "echo", (Task.CAPTION, Task.GROUND), True),
            ModelInfo("other", "echo", (Task.CHAT,), False),
        ]

    def cancel(self) -> None:
        self._cancel.set()

    def analyze(self, request: AnalyzeRequest) -> AnalyzeResponse:
        self.requests.append(request)
        self._cancel.clear()
        self.started.set()
        if self.wait_for_cancel:  # noqa: SIM102
            if self._cancel.wait(30):
                raise ProtocolError(ErrorCode.CANCELLED, "cancelled")
        if self.error is not None:
            raise self.error
        features = []
        if request.task in (Task.GROUND, Task.SEGMENT, Task.CHANGE):
            kind = {Task.GROUND: FeatureKind.BOX, Task.SEGMENT: FeatureKind.MASK, Task.CHANGE: FeatureKind.CHANGE}[
                request.task
            ]
            for index, fraction in enumerate((0.25, 0.4)[: self.drawn]):
                features.append(
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": _box(request.images[0].extent, fraction)},
                        "properties": {
                            "kind": kind.value,
                            "label": request.prompt or "change",
                            "score": 0.9 - index * 0.2,
                        },
                    }
                )
        held_back = None
        if request.task in (Task.GROUND, Task.SEGMENT, Task.CHANGE):
            extent = request.images[0].extent
            if request.task is Task.SEGMENT and self.multipart:
                features = [
                    {
                        "type": "Feature",
                        "geometry": {
                            "type": "MultiPolygon",
                            "coordinates": [_square(extent, u, 0.5, 0.1) for u in (0.2, 0.5, 0.8)],
                        },
                        "properties": {"kind": kind.value, "label": request.prompt, "score": 0.8},
                    }
                ]
            held_back = feature_collection(
                [
                    {
                        "type": "Feature",
                        "geometry": {
                            "type": "Polygon",
                            "coordinates": _square(extent, (i + 0.5) / self.held_back, 0.05, 0.4 / self.held_back),
                        },
                        "properties": {
                            "kind": kind.value,
                            "label": request.prompt or "change",
                            "score": round(0.1 + 0.01 * i, 2),
                        },
                    }
                    for i in range(self.held_back)
                ]
            )
        text = (
            "a dark field with a bright square"
            if request.task in (Task.CAPTION, Task.CHAT)
            else f"found {len(features)}"
        )
        return AnalyzeResponse(
            text=text,
            features=feature_collection(features),
            crs=request.output_crs,
            model=self.answering_model(request),
            request_id=f"req-{len(self.requests)}",
            held_back=held_back,
            pixel_size_m=self.resampled[0] if self.resampled else None,
            model_pixel_size_m=self.resampled[1] if self.resampled else None,
            land_cover=self.land_cover if request.task is Task.CAPTION else None,
        )

    def answering_model(self, request: AnalyzeRequest) -> str:
        if request.model == "auto":
            return self.routes.get(request.task, "default")
        return request.model

    RANKING = (3, 1, 0, 2)  # the fake's best tiles, best first

    def batch(self, request: BatchRequest, on_event) -> dict:
        self.requests.append(request)
        self._cancel.clear()
        self.started.set()
        xmin, ymin, xmax, ymax = request.extent or (0.0, 0.0, 1000.0, 1000.0)
        xmid, ymid = (xmin + xmax) / 2, (ymin + ymax) / 2
        quadrants = [
            (xmin, ymid, xmid, ymax),
            (xmid, ymid, xmax, ymax),
            (xmin, ymin, xmid, ymid),
            (xmid, ymin, xmax, ymid),
        ]
        on_event(
            {
                "event": "start",
                "job_id": "job-1",
                "tiles": 4,
                "todo": 4,
                "crs": request.output_crs,
                "tile_size": request.tile_size,
                "overlap": request.overlap,
            }
        )
        for done, tile in enumerate(range(4), start=1):
            if self.wait_for_cancel and self._cancel.wait(30):
                raise ProtocolError(ErrorCode.CANCELLED, "cancelled")
            if self.error is not None and done == 3:
                raise self.error
            score = 0.9 - 0.1 * (self.RANKING.index(tile) + 1)  # every tile's score comes as a pending candidate
            pending = [
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": _box(quadrants[tile], 0.0)},
                    "properties": {
                        "kind": FeatureKind.TILE.value,
                        "label": request.prompt,
                        "score": score,
                        "tile": tile,
                    },
                }
            ]
            on_event(
                {"event": "tile", "tile": tile, "done": done, "todo": 4, "text": "", "features": [], "pending": pending}
            )
        ranked = []
        for rank, tile in enumerate(self.RANKING[: request.options.top_k], start=1):
            geometry = {"type": "Polygon", "coordinates": _box(quadrants[tile], 0.0)}
            ranked.append(
                {
                    "type": "Feature",
                    "geometry": geometry,
                    "properties": {
                        "kind": FeatureKind.TILE.value,
                        "label": request.prompt,
                        "score": 0.9 - 0.1 * rank,
                        "rank": rank,
                        "tile": tile,
                    },
                }
            )
        on_event({"event": "ranked", "features": ranked})
        done = {
            "event": "done",
            "tiles_done": 4,
            "features": len(ranked),
            "timing_ms": {"read": 0, "infer": 0, "post": 0},
        }
        on_event(done)
        return done
