"""Processing algorithm ``rs_assistant:layertomask``: polygons burned into a GeoTIFF mask.

processing.run("rs_assistant:layertomask", {"INPUT": layer, "REFERENCE": raster,
               "BURN_FIELD": "class", "OUTPUT": "/data/mask.tif"})
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingFeedback,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterCrs,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)
from qgis.PyQt.QtCore import QCoreApplication

from rs_assistant.processing.mask_export import Compression, GridSpec, MaskExportError, MaskOptions, layer_to_mask
from rs_assistant.processing.mask_style import MaskStylePostProcessor

COMPRESSIONS = tuple(Compression)


def tr(text: str) -> str:
    return QCoreApplication.translate("LayerToMaskAlgorithm", text)


def _is_set(value: Any) -> bool:
    return value is not None and value != ""


class LayerToMaskAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    BURN_FIELD = "BURN_FIELD"
    REFERENCE = "REFERENCE"
    EXTENT = "EXTENT"
    RESOLUTION = "RESOLUTION"
    TARGET_CRS = "TARGET_CRS"
    NODATA = "NODATA"
    COMPRESSION = "COMPRESSION"
    ALL_TOUCHED = "ALL_TOUCHED"
    OUTPUT = "OUTPUT"

    def name(self) -> str:
        return "layertomask"

    def displayName(self) -> str:  # noqa: N802 (QGIS's name)
        return tr("Layer to mask")

    def group(self) -> str:
        return tr("Masks")

    def groupId(self) -> str:  # noqa: N802
        return "masks"

    def shortHelpString(self) -> str:  # noqa: N802
        return tr(
            "Burns polygons (or the selected ones) into a one-band GeoTIFF mask. The grid is a reference "
            "raster's (same CRS, geotransform and size) or an extent, a resolution and a CRS. Each polygon "
            "burns 1, or the class id of an integer field; other pixels get the nodata value if one is set, "
            "else 0. The data type is the smallest that holds the values (Byte when they fit)."
        )

    def createInstance(self) -> LayerToMaskAlgorithm:  # noqa: N802
        return LayerToMaskAlgorithm()

    def initAlgorithm(self, config: dict | None = None) -> None:  # noqa: N802
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.INPUT, tr("Polygon layer"), [QgsProcessing.SourceType.TypeVectorPolygon]
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                self.BURN_FIELD,
                tr("Class id field (empty: burn 1)"),
                parentLayerParameterName=self.INPUT,
                type=QgsProcessingParameterField.DataType.Numeric,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterLayer(self.REFERENCE, tr("Reference raster (its grid is used)"), optional=True)
        )
        self.addParameter(
            QgsProcessingParameterExtent(self.EXTENT, tr("Extent (without a reference raster)"), optional=True)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.RESOLUTION,
                tr("Resolution in CRS units (without a reference raster)"),
                type=QgsProcessingParameterNumber.Type.Double,
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterCrs(
                self.TARGET_CRS, tr("CRS (without a reference raster; default: the extent's)"), optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.NODATA, tr("Nodata value"), type=QgsProcessingParameterNumber.Type.Integer, optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                self.COMPRESSION, tr("Compression"), options=[c.value for c in COMPRESSIONS], defaultValue=0
            )
        )
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.ALL_TOUCHED, tr("Burn every pixel a polygon touches"), defaultValue=False
            )
        )
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, tr("Mask")))

    def processAlgorithm(  # noqa: N802
        self, parameters: dict[str, Any], context: QgsProcessingContext, feedback: QgsProcessingFeedback
    ) -> dict[str, Any]:
        source = self.parameterAsSource(parameters, self.INPUT, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.INPUT))
        definition = parameters.get(self.INPUT)
        if (
            isinstance(definition, QgsProcessingFeatureSourceDefinition)
            and definition.selectedFeaturesOnly
            and source.featureCount() == 0
        ):
            raise QgsProcessingException(tr("The layer has no selected features."))
        output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        fields = self.parameterAsFields(parameters, self.BURN_FIELD, context)
        nodata = parameters.get(self.NODATA)
        try:
            grid = self._grid(parameters, context)
            options = MaskOptions(
                burn_field=fields[0] if fields else None,
                nodata=self.parameterAsInt(parameters, self.NODATA, context) if _is_set(nodata) else None,
                compression=COMPRESSIONS[self.parameterAsEnum(parameters, self.COMPRESSION, context)],
                all_touched=self.parameterAsBoolean(parameters, self.ALL_TOUCHED, context),
            )
            layer_to_mask(
                source,
                grid,
                output,
                options,
                overwrite=True,
                feedback=feedback,
                transform_context=context.transformContext(),
            )
        except MaskExportError as error:
            raise QgsProcessingException(str(error)) from error
        if context.willLoadLayerOnCompletion(output):  # added to the project: 0 transparent, not a grey stretch
            context.layerToLoadOnCompletionDetails(output).setPostProcessor(MaskStylePostProcessor.create())
        return {self.OUTPUT: output}

    def _grid(self, parameters: dict[str, Any], context: QgsProcessingContext) -> GridSpec:
        has_extent = _is_set(parameters.get(self.EXTENT))
        if _is_set(parameters.get(self.REFERENCE)):
            if has_extent:
                raise QgsProcessingException(tr("Give either a reference raster or an extent, not both."))
            reference = self.parameterAsRasterLayer(parameters, self.REFERENCE, context)
            if reference is None:
                raise QgsProcessingException(tr("The reference is not a raster layer."))
            return GridSpec.from_raster(reference)
        if not has_extent:
            raise QgsProcessingException(tr("Give a reference raster, or an extent and a resolution."))
        crs = self._target_crs(parameters, context)
        extent = self.parameterAsExtent(parameters, self.EXTENT, context, crs)
        return GridSpec.from_extent(extent, self.parameterAsDouble(parameters, self.RESOLUTION, context), crs)

    def _target_crs(self, parameters: dict[str, Any], context: QgsProcessingContext) -> QgsCoordinateReferenceSystem:
        if _is_set(parameters.get(self.TARGET_CRS)):
            return self.parameterAsCrs(parameters, self.TARGET_CRS, context)
        crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
        if not crs.isValid() and context.project() is not None:
            crs = context.project().crs()
        if not crs.isValid():
            raise QgsProcessingException(tr("Give a CRS for the extent."))
        return crs
