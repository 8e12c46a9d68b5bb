"""The model engine: runs in its own process (never inside QGIS), with torch and rasterio.

python -m rs_assistant.engine serve [--host 127.0.0.1] [--port 0] [--models FILE] [--token-file F]
python -m rs_assistant.engine run --task TASK --image PATH [...]
"""

import os

# GDAL keeps every decompressed block it reads, up to 5% of the machine's memory by default, so a
# batch job over a large raster would grow by ~0.6 MB per tile read. A bounded block cache (in MB;
# set before GDAL first reads, which is why it lives here) keeps a job's memory flat whatever the
# raster's size (benchmarks/large_area.py); a user's own GDAL_CACHEMAX wins.
os.environ.setdefault("GDAL_CACHEMAX", "128")
