"""Routes the plugin's ``logging`` records to QGIS's message log (tab "RS Assistant")."""

from __future__ import annotations

import logging

from qgis.core import Qgis, QgsMessageLog

TAG = "RS Assistant"

_LEVELS = (
    (logging.ERROR, Qgis.MessageLevel.Critical),
    (logging.WARNING, Qgis.MessageLevel.Warning),
    (logging.NOTSET, Qgis.MessageLevel.Info),
)


class QgsMessageLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = next(q for threshold, q in _LEVELS if record.levelno >= threshold)
            QgsMessageLog.logMessage(self.format(record), TAG, level)
        except Exception:  # a log handler must never raise into the caller
            self.handleError(record)


def install(logger_name: str = "rs_assistant") -> QgsMessageLogHandler:
    handler = QgsMessageLogHandler()
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def uninstall(handler: QgsMessageLogHandler, logger_name: str = "rs_assistant") -> None:
    logging.getLogger(logger_name).removeHandler(handler)
