"""The model engine: runs in its own process (never inside QGIS), with torch and rasterio.

    python -m rs_assistant.engine serve [--host 127.0.0.1] [--port 0] [--models FILE] [--token-file F]
    python -m rs_assistant.engine run --task TASK --image PATH [...]
"""
