"""One analyze request as a QgsTask: listed in QGIS's task manager, cancelable, off the UI thread.

Cancelling the task closes the HTTP connection (the engine stops working on it); the timeout is
the client's. ``on_done(response, error)`` runs on the UI thread when the task ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from qgis.core import QgsTask

from rs_assistant.core.client import EngineClient
from rs_assistant.core.protocol import AnalyzeRequest, AnalyzeResponse, ErrorCode, ProtocolError

log = logging.getLogger(__name__)

DoneCallback = Callable[[AnalyzeResponse | None, ProtocolError | None], None]


class AnalyzeTask(QgsTask):
    def __init__(self, description: str, client: EngineClient, request: AnalyzeRequest, on_done: DoneCallback):
        super().__init__(description, QgsTask.Flag.CanCancel)
        self._client = client
        self._request = request
        self._on_done = on_done
        self.response: AnalyzeResponse | None = None
        self.error: ProtocolError | None = None

    def run(self) -> bool:  # worker thread
        if self.isCanceled():
            return False
        try:
            self.response = self._client.analyze(self._request)
        except ProtocolError as exc:
            self.error = exc
            return False
        except Exception as exc:  # a bug must reach the dock as an error, not kill the task manager
            log.exception("analyze request failed")
            self.error = ProtocolError(ErrorCode.INTERNAL, str(exc))
            return False
        return not self.isCanceled()

    def cancel(self) -> None:
        self._client.cancel()
        super().cancel()

    def finished(self, result: bool) -> None:  # UI thread
        if result:
            self._on_done(self.response, None)
        elif self.isCanceled():
            self._on_done(None, ProtocolError(ErrorCode.CANCELLED, "cancelled"))
        else:
            self._on_done(None, self.error or ProtocolError(ErrorCode.INTERNAL, "the request ended without an answer"))
