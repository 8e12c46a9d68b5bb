"""One batch job (``/search``) as a QgsTask: listed in QGIS's task manager, cancelable, with progress.

The job's final features (tile events' ``features``, ``merged``, ``ranked``) are collected as
they stream in, and so is every tile's search score (the tile events' ``pending`` candidates), so
that a search's similarities are relative to all the tiles searched
(:mod:`rs_assistant.core.search_ranking`); ``on_done(result, error)`` runs on the UI thread when
the task ends, where ``result`` is a :class:`BatchResult`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qgis.core import QgsTask

from rs_assistant.core.client import EngineClient
from rs_assistant.core.protocol import BatchEvent, BatchRequest, ErrorCode, ProtocolError

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    job_id: str = ""
    model: str = ""  # the model that answered, when the engine's start event names it (model "auto" routes)
    crs: str = ""
    tiles: int = 0
    features: list[dict[str, Any]] = field(default_factory=list)  # final: tile features, merged
    ranked: list[dict[str, Any]] = field(default_factory=list)  # retrieve: best first
    texts: dict[int, str] = field(default_factory=dict)  # tile id -> caption
    scores: dict[int, float] = field(default_factory=dict)  # retrieve: tile id -> the engine's raw score
    area: tuple[float, float, float, float] | None = None  # the searched extent, in the output CRS
    whole_layer: bool = False  # the job ran over the whole layer (no region was drawn)
    notices: list[str] = field(default_factory=list)  # what the engine said of the job (a batch size reduced)


DoneCallback = Callable[[BatchResult | None, ProtocolError | None], None]


class BatchTask(QgsTask):
    def __init__(
        self,
        description: str,
        client: EngineClient,
        request: BatchRequest,
        on_done: DoneCallback,
        area: tuple[float, float, float, float] | None = None,
    ):
        super().__init__(description, QgsTask.Flag.CanCancel)
        self._client = client
        self._request = request
        self._on_done = on_done
        self.result = BatchResult(area=area, whole_layer=request.extent is None)
        self.error: ProtocolError | None = None

    def run(self) -> bool:  # worker thread
        if self.isCanceled():
            return False
        try:
            self._client.batch(self._request, self._on_event)
        except ProtocolError as exc:
            self.error = exc
            return False
        except Exception as exc:  # a bug must reach the dock as an error, not kill the task manager
            log.exception("batch job failed")
            self.error = ProtocolError(ErrorCode.INTERNAL, str(exc))
            return False
        return not self.isCanceled()

    def _on_event(self, event: dict[str, Any]) -> None:  # worker thread
        kind = event.get("event")
        result = self.result
        if kind == BatchEvent.START.value:
            result.job_id = str(event.get("job_id", ""))
            result.crs = str(event.get("crs", ""))
            result.model = str(event.get("model") or "")
            result.tiles = int(event.get("tiles") or 0)
        elif kind == BatchEvent.TILE.value:
            result.features.extend(event.get("features") or [])
            if event.get("text"):
                result.texts[int(event["tile"])] = str(event["text"])
            for candidate in event.get("pending") or []:
                props = candidate.get("properties") or {}
                if props.get("kind") == "tile" and props.get("score") is not None:
                    result.scores[int(props.get("tile", event.get("tile", -1)))] = float(props["score"])
            if event.get("notice"):  # e.g. a batch size too large for the GPU, reduced
                result.notices.append(str(event["notice"]))
                log.warning("batch job %s: %s", result.job_id, event["notice"])
            todo = int(event.get("todo") or 0)
            if todo:
                self.setProgress(min(99.0, 100.0 * int(event.get("done", 0)) / todo))
        elif kind == BatchEvent.MERGED.value:
            result.features.extend(event.get("features") or [])
        elif kind == BatchEvent.RANKED.value:
            result.ranked = sorted(
                event.get("features") or [], key=lambda f: (f.get("properties") or {}).get("rank", 0)
            )

    def cancel(self) -> None:
        self._client.cancel()
        super().cancel()

    def finished(self, result: bool) -> None:  # UI thread
        if result:
            self._on_done(self.result, None)
        elif self.isCanceled():
            self._on_done(None, ProtocolError(ErrorCode.CANCELLED, "cancelled"))
        else:
            self._on_done(None, self.error or ProtocolError(ErrorCode.INTERNAL, "the job ended without an answer"))
