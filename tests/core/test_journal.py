"""The resume journal of a batch job (pure Python: runs without QGIS too).

.venv/bin/python -m pytest -p no:pytest_qgis -p no:pytest-qt tests/core/test_journal.py -q
"""

from __future__ import annotations

import json

from rs_assistant.core.journal import Journal, fingerprint
from rs_assistant.core.protocol import BatchRequest, Task

REQUEST = BatchRequest(task=Task.SEGMENT, sources=("/data/a.tif",), output_crs="EPSG:3857", prompt="roofs").to_dict()


def piece(tile: int) -> dict:
    return {"type": "Feature", "geometry": {"type": "Point", "coordinates": [tile, tile]}, "properties": {"tile": tile}}


def test_a_journal_records_tiles_and_gives_what_a_rerun_sends(tmp_path):
    path = Journal.path_for(tmp_path / "out.gpkg")
    assert path.name == "out.gpkg.rsa-journal.json"
    journal = Journal.create(path, REQUEST)
    journal.record_tile(3, 2, [piece(3)])
    journal.record_tile(1, 0, [])
    journal.record_tile(2, 1, [piece(2), piece(2)])

    again = Journal.open(path, {**REQUEST, "batch_size": 16, "skip_tiles": [9], "pending": [piece(9)]})
    assert again is not None  # batch size, skip_tiles and pending do not name another job
    assert again.skip_tiles() == (1, 2, 3)
    assert again.pending() == (piece(2), piece(2), piece(3))  # in tile order
    assert again.written() == 3
    assert not list(tmp_path.glob("*.tmp"))  # every save replaced the file whole

    again.keep_only({1, 3})
    assert Journal.open(path, REQUEST).skip_tiles() == (1, 3)
    again.remove()
    assert not path.exists() and Journal.open(path, REQUEST) is None


def test_a_journal_of_another_job_or_a_broken_one_is_ignored(tmp_path):
    path = Journal.path_for(tmp_path / "out.gpkg")
    Journal.create(path, REQUEST).record_tile(0, 1, [])
    assert Journal.open(path, {**REQUEST, "prompt": "trees"}) is None
    assert Journal.open(path, {**REQUEST, "tile_size": 256}) is None
    path.write_text("{not json", encoding="utf-8")
    assert Journal.open(path, REQUEST) is None
    path.write_text(json.dumps({"version": 1, "job": fingerprint(REQUEST), "tiles": {"x": {}}}), encoding="utf-8")
    assert Journal.open(path, REQUEST) is None
