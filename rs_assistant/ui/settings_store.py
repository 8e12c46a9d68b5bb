"""The one adapter between :class:`Settings` and QgsSettings: keys ``rs_assistant/<field>``."""

from __future__ import annotations

import logging
from dataclasses import asdict, fields

from qgis.core import QgsSettings

from rs_assistant.core.protocol import ProtocolError
from rs_assistant.core.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "rs_assistant"


class SettingsStore:
    def __init__(self, qsettings: QgsSettings | None = None):
        self._qsettings = qsettings or QgsSettings()

    @staticmethod
    def key(name: str) -> str:
        return f"{PREFIX}/{name}"

    def load(self) -> Settings:
        defaults = Settings()
        values = {f.name: self._qsettings.value(self.key(f.name), getattr(defaults, f.name)) for f in fields(Settings)}
        try:
            return Settings(**values)
        except ProtocolError as exc:
            log.warning("ignoring stored settings (%s); using the defaults", exc.message)
            return defaults

    def save(self, settings: Settings) -> None:
        for name, value in asdict(settings).items():
            self._qsettings.setValue(self.key(name), value)

    def clear(self) -> None:
        self._qsettings.remove(PREFIX)
