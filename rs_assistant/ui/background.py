"""Runs a short blocking call (a health check, the model list) off the UI thread.

The callback runs on the UI thread with ``(result, error)``; exactly one of them is None. The
parent QObject owns the call while it runs.
Long requests use a QgsTask instead (rs_assistant.ui.analyze_task), so people can see and
cancel them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from qgis.PyQt.QtCore import QObject, pyqtSignal

log = logging.getLogger(__name__)


class BackgroundCall(QObject):
    done = pyqtSignal(object, object)

    def __init__(self, fn: Callable[[], Any], callback: Callable[[Any, BaseException | None], None], parent: QObject):
        super().__init__(parent)
        self._fn = fn
        self.done.connect(callback)
        self.done.connect(self.deleteLater)
        self._thread = threading.Thread(target=self._run, name="rs-assistant-call", daemon=True)

    def start(self) -> BackgroundCall:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            result, error = self._fn(), None
        except Exception as exc:  # handed to the callback on the UI thread
            result, error = None, exc
        try:
            self.done.emit(result, error)
        except RuntimeError:  # the owner was deleted meanwhile (plugin unloaded): nobody waits
            log.debug("background call finished after its owner was deleted")
