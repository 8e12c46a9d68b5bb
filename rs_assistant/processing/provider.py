"""The "RS Assistant" Processing provider: one entry per algorithm in ``ALGORITHMS``.

Registered by the plugin's ``initGui`` and removed in ``unload``. To add an algorithm, write its
module beside this one and append its class to ``ALGORITHMS``.
"""

from __future__ import annotations

from qgis.core import QgsProcessingAlgorithm, QgsProcessingProvider
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from rs_assistant.core.paths import resource
from rs_assistant.processing.alg_change_over_area import ChangeOverAreaAlgorithm
from rs_assistant.processing.alg_describe_tiles import DescribeTilesAlgorithm
from rs_assistant.processing.alg_find_objects import FindObjectsAlgorithm
from rs_assistant.processing.alg_layer_to_mask import LayerToMaskAlgorithm
from rs_assistant.processing.alg_mask_to_polygons import MaskToPolygonsAlgorithm
from rs_assistant.processing.alg_search_layer import SearchLayerAlgorithm
from rs_assistant.processing.alg_segment_layer import SegmentLayerAlgorithm

PROVIDER_ID = "rs_assistant"
ALGORITHMS: tuple[type[QgsProcessingAlgorithm], ...] = (
    LayerToMaskAlgorithm,
    MaskToPolygonsAlgorithm,
    DescribeTilesAlgorithm,
    FindObjectsAlgorithm,
    SegmentLayerAlgorithm,
    ChangeOverAreaAlgorithm,
    SearchLayerAlgorithm,
)


def tr(text: str) -> str:
    return QCoreApplication.translate("RSAssistantProvider", text)


class RSAssistantProvider(QgsProcessingProvider):
    def id(self) -> str:
        return PROVIDER_ID

    def name(self) -> str:
        return tr("RS Assistant")

    def longName(self) -> str:  # noqa: N802 (QGIS's name)
        return tr("RS Assistant: remote-sensing imagery tools")

    def icon(self) -> QIcon:
        return QIcon(self.svgIconPath())

    def svgIconPath(self) -> str:  # noqa: N802
        return str(resource("icons", "rs_assistant.svg"))

    def loadAlgorithms(self) -> None:  # noqa: N802
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())

    def supportedOutputRasterLayerExtensions(self) -> list[str]:  # noqa: N802
        return ["tif"]  # every raster this provider writes is a GeoTIFF
