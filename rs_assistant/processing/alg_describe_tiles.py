"""Processing algorithm ``rs_assistant:describetiles``: a grid over a raster, one caption per tile.

processing.run("rs_assistant:describetiles", {"INPUT": "/data/scene.tif", "TILE_SIZE": 512,
               "OUTPUT": "/data/captions.gpkg"})
"""

from __future__ import annotations

from qgis.PyQt.QtCore import QCoreApplication

from rs_assistant.core.protocol import Task
from rs_assistant.processing.batch_algorithm import BatchAlgorithm


def tr(text: str) -> str:
    return QCoreApplication.translate("DescribeTilesAlgorithm", text)


class DescribeTilesAlgorithm(BatchAlgorithm):
    TASK = Task.CAPTION

    def name(self) -> str:
        return "describetiles"

    def displayName(self) -> str:  # noqa: N802 (QGIS's name)
        return tr("Describe tiles")

    def shortHelpString(self) -> str:  # noqa: N802
        return tr(
            "Cuts the raster (or the extent) into tiles and has the model describe each one. The output is "
            "the grid: one polygon per tile, in the raster's CRS, with its caption in the field “text”. "
            "An interrupted run resumes where it stopped when run again with the same parameters."
        )

    def output_description(self) -> str:
        return tr("Described tiles")
