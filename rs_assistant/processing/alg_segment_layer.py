"""Processing algorithm ``rs_assistant:segmentlayer``: object outlines over a whole raster.

processing.run("rs_assistant:segmentlayer", {"INPUT": "/data/city.tif", "PROMPT": "buildings",
               "OUTPUT": "/data/buildings.gpkg"})
"""

from __future__ import annotations

from qgis.PyQt.QtCore import QCoreApplication

from rs_assistant.core.protocol import Task
from rs_assistant.processing.batch_algorithm import BatchAlgorithm


def tr(text: str) -> str:
    return QCoreApplication.translate("SegmentLayerAlgorithm", text)


class SegmentLayerAlgorithm(BatchAlgorithm):
    TASK = Task.SEGMENT
    HAS_PROMPT = True
    PROMPT_REQUIRED = True
    HAS_THRESHOLD = True

    def name(self) -> str:
        return "segmentlayer"

    def displayName(self) -> str:  # noqa: N802 (QGIS's name)
        return tr("Segment layer")

    def shortHelpString(self) -> str:  # noqa: N802
        return tr(
            "Outlines the objects described (e.g. “buildings”) over the whole raster or an extent, tile by "
            "tile with overlapping tiles. Masks are merged across tiles, so that an object crossing a tile "
            "seam becomes one polygon. The output is in the raster's CRS."
        )

    def prompt_description(self) -> str:
        return tr("Objects to outline")

    def output_description(self) -> str:
        return tr("Outlines")
