"""RS Assistant: talk to remote-sensing imagery on the QGIS map.

QGIS calls ``classFactory(iface)``. Nothing here imports qgis at import time, so the engine
(``python -m rs_assistant.engine``) can run from the same folder in its own interpreter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rs_assistant.plugin import RSAssistantPlugin

__version__ = "0.1.0"


def classFactory(iface) -> RSAssistantPlugin:  # noqa: N802 (QGIS's name)
    from rs_assistant.plugin import RSAssistantPlugin

    return RSAssistantPlugin(iface)
