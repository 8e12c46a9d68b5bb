"""Processing algorithm ``rs_assistant:changeoverarea``: what changed between two rasters, tile by tile.

processing.run("rs_assistant:changeoverarea", {"BEFORE": "/data/2019.tif", "AFTER": "/data/2024.tif",
               "OUTPUT": "/data/changes.gpkg"})
"""

from __future__ import annotations

from qgis.PyQt.QtCore import QCoreApplication

from rs_assistant.core.protocol import Task
from rs_assistant.processing.batch_algorithm import BatchAlgorithm


def tr(text: str) -> str:
    return QCoreApplication.translate("ChangeOverAreaAlgorithm", text)


class ChangeOverAreaAlgorithm(BatchAlgorithm):
    TASK = Task.CHANGE
    RASTERS = ("BEFORE", "AFTER")
    HAS_THRESHOLD = True

    BEFORE = "BEFORE"
    AFTER = "AFTER"

    def name(self) -> str:
        return "changeoverarea"

    def displayName(self) -> str:  # noqa: N802 (QGIS's name)
        return tr("Change over area")

    def shortHelpString(self) -> str:  # noqa: N802
        return tr(
            "Compares a before and an after raster over the whole area or an extent, tile by tile (the after "
            "raster is read on the before raster's grid). The output holds the change polygons, merged across "
            "tile seams, and each tile with a caption of what changed in it (field “text”), in the before "
            "raster's CRS."
        )

    def raster_description(self, name: str) -> str:
        if name == self.AFTER:
            return tr("After (a local raster file)")
        return tr("Before (a local raster file)")

    def output_description(self) -> str:
        return tr("Changes")
