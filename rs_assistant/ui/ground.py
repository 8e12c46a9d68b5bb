"""Sizes on the ground: a region's width and height in metres, measured on the project's ellipsoid
(QgsDistanceArea) whatever the map units are (Web Mercator metres or degrees), and written with a
sensible precision: "437 × 437 m", "1.2 × 0.9 km" (in the person's locale)."""

from __future__ import annotations

import logging

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCsException,
    QgsDistanceArea,
    QgsPointXY,
    QgsProject,
    QgsRectangle,
    QgsUnitTypes,
)
from qgis.PyQt.QtCore import QCoreApplication, QLocale

log = logging.getLogger(__name__)

WGS84_ELLIPSOID = "EPSG:7030"


def ground_size(
    rect: QgsRectangle, crs: QgsCoordinateReferenceSystem, project: QgsProject
) -> tuple[float, float] | None:
    """(width, height) in metres across the middle of ``rect``; None when it cannot be measured
    (an invalid CRS, a rectangle off the CRS's area)."""
    if not crs.isValid() or rect.isNull() or not rect.isFinite():
        return None
    distance = QgsDistanceArea()
    distance.setSourceCrs(crs, project.transformContext())
    ellipsoid = project.ellipsoid()
    if not ellipsoid or ellipsoid == "NONE":  # a planar project: still measure on the ground
        ellipsoid = crs.ellipsoidAcronym() or WGS84_ELLIPSOID
    if not distance.setEllipsoid(ellipsoid):
        distance.setEllipsoid(WGS84_ELLIPSOID)
    mid_y, mid_x = rect.center().y(), rect.center().x()
    try:
        width = distance.measureLine(QgsPointXY(rect.xMinimum(), mid_y), QgsPointXY(rect.xMaximum(), mid_y))
        height = distance.measureLine(QgsPointXY(mid_x, rect.yMinimum()), QgsPointXY(mid_x, rect.yMaximum()))
    except QgsCsException as exc:
        log.debug("region not measurable: %s", exc)
        return None
    factor = QgsUnitTypes.fromUnitToUnitFactor(distance.lengthUnits(), QgsUnitTypes.DistanceUnit.DistanceMeters)
    width, height = width * factor, height * factor
    if not (width == width and height == height) or width < 0 or height < 0:  # NaN: off the ellipsoid
        return None
    return width, height


def format_ground_size(width_m: float, height_m: float, locale: QLocale | None = None) -> str:
    """ "437 × 437 m", "1.2 × 0.9 km", "35 × 28 km", "0.4 × 0.3 m": one unit, two or three figures."""
    locale = locale or QLocale()
    largest = max(width_m, height_m)
    if largest >= 1000:
        values, unit = (width_m / 1000, height_m / 1000), "km"
    else:
        values, unit = (width_m, height_m), "m"
    top = max(values)
    decimals = 0 if top >= 10 else 1 if top >= 1 else 2
    w, h = (locale.toString(float(round(v, decimals)), "f", decimals) for v in values)
    return QCoreApplication.translate("Ground", "{w} × {h} {unit}").format(w=w, h=h, unit=unit)
