"""Small GeoTIFFs for the QGIS tests, written with GDAL: a dark field with one bright square."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from osgeo import gdal, osr


def write_geotiff(
    path: Path,
    epsg: int,
    origin: tuple[float, float],
    pixel: float,
    size: int = 200,
    bright: tuple[int, int, int, int] | None = (80, 80, 120, 120),
) -> Path:
    """An RGB GeoTIFF, north-up: ``origin`` is the top-left corner; ``bright`` = (col0, row0, col1, row1)."""
    data = np.full((3, size, size), 30, np.uint8)
    if bright is not None:
        c0, r0, c1, r1 = bright
        data[:, r0:r1, c0:c1] = 230
    ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 3, gdal.GDT_Byte)
    assert ds is not None, path
    ds.SetGeoTransform((origin[0], pixel, 0.0, origin[1], 0.0, -pixel))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    ds.SetProjection(srs.ExportToWkt())
    for band in range(3):
        ds.GetRasterBand(band + 1).WriteArray(data[band])
    ds.FlushCache()
    ds = None
    return path
