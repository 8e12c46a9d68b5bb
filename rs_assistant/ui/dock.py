"""The chat dock: transcript, prompt, quick actions and the imagery/region pickers.

Layout lives in resources/ui/chat_dock.ui; this class owns its behaviour.
"""

from __future__ import annotations

import logging

from qgis.core import QgsMapLayerProxyModel
from qgis.PyQt import uic
from qgis.PyQt.QtWidgets import QDockWidget

from rs_assistant.core.paths import resource

log = logging.getLogger(__name__)

_FORM, _ = uic.loadUiType(str(resource("ui", "chat_dock.ui")), from_imports=False, import_from="")


class ChatDock(QDockWidget, _FORM):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.setupUi(self)
        self.setObjectName("RSAssistantDock")
        for combo in (self.imageLayerCombo, self.beforeLayerCombo, self.afterLayerCombo):
            combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
            combo.setAllowEmptyLayer(True)
