"""Processing algorithm ``rs_assistant:masktopolygons``: a mask raster turned into polygons.

processing.run("rs_assistant:masktopolygons", {"INPUT": "/data/mask.tif", "OUTPUT": "/data/mask.gpkg"})
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsFeatureSink,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QCoreApplication

from rs_assistant.processing.mask_export import MaskExportError, PolygonizeOptions, polygonize_mask


def tr(text: str) -> str:
    return QCoreApplication.translate("MaskToPolygonsAlgorithm", text)


class MaskToPolygonsAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    FIELD_NAME = "FIELD_NAME"
    NODATA_BACKGROUND = "NODATA_BACKGROUND"
    ZERO_BACKGROUND = "ZERO_BACKGROUND"
    EIGHT_CONNECTED = "EIGHT_CONNECTED"
    OUTPUT = "OUTPUT"

    def name(self) -> str:
        return "masktopolygons"

    def displayName(self) -> str:  # noqa: N802 (QGIS's name)
        return tr("Mask to polygons")

    def group(self) -> str:
        return tr("Masks")

    def groupId(self) -> str:  # noqa: N802
        return "masks"

    def shortHelpString(self) -> str:  # noqa: N802
        return tr(
            "Turns band 1 of an integer mask raster into polygons, one per connected group of pixels "
            "of equal value, with the value as an attribute. Nodata and zero pixels can be left out "
            "as background."
        )

    def createInstance(self) -> MaskToPolygonsAlgorithm:  # noqa: N802
        return MaskToPolygonsAlgorithm()

    def initAlgorithm(self, config: dict | None = None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, tr("Mask raster")))
        self.addParameter(QgsProcessingParameterString(self.FIELD_NAME, tr("Value field name"), defaultValue="value"))
        self.addParameter(
            QgsProcessingParameterBoolean(self.NODATA_BACKGROUND, tr("Nodata pixels are background"), defaultValue=True)
        )
        self.addParameter(
            QgsProcessingParameterBoolean(self.ZERO_BACKGROUND, tr("Zero pixels are background"), defaultValue=True)
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.EIGHT_CONNECTED, tr("Join diagonal neighbours (8-connectivity)"), defaultValue=False
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSink(self.OUTPUT, tr("Polygons"), QgsProcessing.SourceType.TypeVectorPolygon)
        )

    def processAlgorithm(  # noqa: N802
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        raster = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if raster is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        try:
            options = PolygonizeOptions(
                field_name=self.parameterAsString(parameters, self.FIELD_NAME, context),
                nodata_as_background=self.parameterAsBoolean(parameters, self.NODATA_BACKGROUND, context),
                zero_as_background=self.parameterAsBoolean(parameters, self.ZERO_BACKGROUND, context),
                eight_connected=self.parameterAsBoolean(parameters, self.EIGHT_CONNECTED, context),
            )
            polygons = polygonize_mask(raster, options, feedback, (0.0, 80.0))
        except MaskExportError as error:
            raise QgsProcessingException(str(error)) from error
        if feedback.isCanceled():
            raise QgsProcessingException(tr("Canceled: nothing was written."))
        # From here on the copy runs to its end: it is quick (from memory) and never leaves half a layer.
        sink, destination = self.parameterAsSink(
            parameters, self.OUTPUT, context, polygons.fields(), QgsWkbTypes.Type.Polygon, polygons.crs
        )
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        total = max(polygons.layer.GetFeatureCount(), 1)
        for number, feature in enumerate(polygons.features()):
            sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
            feedback.setProgress(80.0 + 20.0 * number / total)
        return {self.OUTPUT: destination}
