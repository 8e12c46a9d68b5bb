"""Processing algorithm ``rs_assistant:findobjects``: boxes around objects over a whole raster.

processing.run("rs_assistant:findobjects", {"INPUT": "/data/port.tif", "PROMPT": "ships",
               "OUTPUT": "/data/ships.gpkg"})
"""

from __future__ import annotations

from qgis.PyQt.QtCore import QCoreApplication

from rs_assistant.core.protocol import Task
from rs_assistant.processing.batch_algorithm import BatchAlgorithm


def tr(text: str) -> str:
    return QCoreApplication.translate("FindObjectsAlgorithm", text)


class FindObjectsAlgorithm(BatchAlgorithm):
    TASK = Task.GROUND
    HAS_PROMPT = True
    PROMPT_REQUIRED = True
    HAS_THRESHOLD = True

    def name(self) -> str:
        return "findobjects"

    def displayName(self) -> str:  # noqa: N802 (QGIS's name)
        return tr("Find objects")

    def shortHelpString(self) -> str:  # noqa: N802
        return tr(
            "Finds the objects described (e.g. “storage tanks”) over the whole raster or an extent, tile by "
            "tile with overlapping tiles; an object seen by two tiles is kept once. The output holds one box "
            "per object, in the raster's CRS, with its label and score."
        )

    def prompt_description(self) -> str:
        return tr("Objects to find")

    def output_description(self) -> str:
        return tr("Found objects")
