"""Processing algorithm ``rs_assistant:searchlayer``: the tiles of a raster that best match a description.

processing.run("rs_assistant:searchlayer", {"INPUT": "/data/coast.tif",
               "PROMPT": "a harbour with many boats", "TOP_K": 10, "OUTPUT": "/data/harbours.gpkg"})
"""

from __future__ import annotations

from qgis.PyQt.QtCore import QCoreApplication

from rs_assistant.core.protocol import Task
from rs_assistant.processing.batch_algorithm import BatchAlgorithm


def tr(text: str) -> str:
    return QCoreApplication.translate("SearchLayerAlgorithm", text)


class SearchLayerAlgorithm(BatchAlgorithm):
    TASK = Task.RETRIEVE
    HAS_PROMPT = True
    PROMPT_REQUIRED = True
    HAS_TOP_K = True

    def name(self) -> str:
        return "searchlayer"

    def displayName(self) -> str:  # noqa: N802 (QGIS's name)
        return tr("Search layer by text")

    def shortHelpString(self) -> str:  # noqa: N802
        return tr(
            "Ranks the tiles of the raster (or the extent) by how well they match a description such as "
            "“a harbour with many boats” and returns the best ones as polygons with their rank (1 = best) and "
            "score. The engine computes a layer's image embeddings once and reuses them for later searches."
        )

    def prompt_description(self) -> str:
        return tr("Description to search for")

    def output_description(self) -> str:
        return tr("Best matching tiles")
