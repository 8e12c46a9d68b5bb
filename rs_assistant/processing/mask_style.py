"""How an exported mask is drawn when it is added to a project: 0 is transparent, each class a colour.

    from rs_assistant.processing.mask_style import style_mask
    style_mask(QgsRasterLayer("/data/buildings_mask.tif", "buildings_mask"))

QGIS draws a one-band integer raster with a grey stretch, so the 0 background of a 0/1 mask
paints the map black. A mask gets a paletted renderer instead: one class per value found in the
raster except 0 (values without a class are not drawn), nodata stays transparent, and a 0/1
mask's 1 is one strong colour. The dialog and the "Layer to mask" algorithm both use it.
"""

from __future__ import annotations

import logging

from qgis.core import (
    QgsMapLayer,
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsRandomColorRamp,
    QgsRasterLayer,
)
from qgis.PyQt.QtGui import QColor

log = logging.getLogger(__name__)

MASK_COLOUR = QColor(255, 72, 0)  # a 0/1 mask's 1: orange, seen on imagery and on the usual basemaps
OPACITY = 0.75
MAX_CLASSES = 256  # beyond this the raster is not a mask of classes: leave QGIS's own renderer


def mask_renderer(layer: QgsRasterLayer) -> QgsPalettedRasterRenderer | None:
    """A paletted renderer with every value but 0 coloured; None when the layer is not a small-integer mask."""
    if not layer.isValid() or layer.bandCount() != 1:
        return None
    classes = QgsPalettedRasterRenderer.classDataFromRaster(layer.dataProvider(), 1, QgsRandomColorRamp())
    if not classes or len(classes) > MAX_CLASSES or any(float(c.value) != int(c.value) for c in classes):
        return None
    kept = [c for c in classes if int(c.value) != 0]
    if [int(c.value) for c in kept] == [1]:
        kept[0].color = QColor(MASK_COLOUR)
    for entry in kept:
        entry.label = str(int(entry.value))
    renderer = QgsPalettedRasterRenderer(layer.dataProvider(), 1, kept)
    renderer.setOpacity(OPACITY)
    return renderer


def style_mask(layer: QgsRasterLayer) -> bool:
    """Gives ``layer`` the mask renderer; returns whether it did (False leaves the layer as it was)."""
    renderer = mask_renderer(layer)
    if renderer is None:
        log.info("%s is not an integer mask: its renderer is left as it is", layer.source())
        return False
    layer.setRenderer(renderer)
    layer.triggerRepaint()
    return True


class MaskStylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Styles a mask that Processing adds to the project once the algorithm has finished."""

    _instances: list[MaskStylePostProcessor] = []  # Processing holds a bare pointer: keep them alive

    def postProcessLayer(
        self,
        layer: QgsMapLayer,
        context: QgsProcessingContext,  # noqa: N802 (QGIS's name)
        feedback: QgsProcessingFeedback,
    ) -> None:
        if isinstance(layer, QgsRasterLayer):
            style_mask(layer)

    @classmethod
    def create(cls) -> MaskStylePostProcessor:
        instance = cls()
        cls._instances[:] = cls._instances[-15:] + [instance]
        return instance
