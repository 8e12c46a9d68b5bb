"""``batch --output``: a killed run leaves no file that looks complete, and running the command again resumes it.

The model (tests/engine/fakes.py TileBackend) kills its own process with SIGKILL before the fifth
tile, as a crash or ``kill -9`` would; every tile it answers adds a line to a log shared by the runs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box, shape
from shapely.ops import unary_union

from rs_assistant.core.journal import Journal
from tests.engine import rasters

ROOT = Path(__file__).resolve().parents[2]
GRID = rasters.utm_transform()
#: Bright objects across the seams of a 64/16 grid over 200 x 160 pixels (12 tiles).
OBJECTS = [(40, 40, 70, 60), (100, 10, 112, 150), (140, 100, 190, 130)]
TILES = 12


@pytest.fixture()
def data(tmp_path) -> Path:
    shapes = unary_union([box(*rasters.pixel_extent(GRID, *o)) for o in OBJECTS])
    rasters.burn(tmp_path / "objects.tif", shapes, width=200, height=160)
    return tmp_path


def models_file(path: Path, calls_log: Path, kill_after: int | None = None) -> Path:
    kill = "" if kill_after is None else f"kill_after = {kill_after}\n"
    path.write_text(
        f'[models.tiles]\nbackend = "tests.engine.fakes:TileBackend"\ncalls_log = "{calls_log}"\n{kill}',
        encoding="utf-8",
    )
    return path


def batch(data: Path, models: Path, output: Path, task: str = "segment") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "rs_assistant.engine", "batch", "--task", task, "--prompt", "roof",
               "--image", str(data / "objects.tif"), "--model", "tiles", "--models", str(models),
               "--tile-size", "64", "--overlap", "16", "--batch-size", "1", "--device", "cpu",
               "--output", str(output)]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)


def features(path: Path) -> list[str]:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return sorted(
        json.dumps({"g": shape(f["geometry"]).normalize().wkt, "p": f["properties"]}, sort_keys=True) for f in lines
    )


def calls(log: Path) -> int:
    return len(log.read_text(encoding="utf-8").splitlines()) if log.exists() else 0


@pytest.mark.parametrize("task", ["segment", "caption"])
def test_a_killed_run_resumes_and_each_tile_runs_once(data, task):
    whole_log = data / "whole.log"
    whole = data / "whole.geojsonl"
    done = batch(data, models_file(data / "whole.toml", whole_log), whole, task)
    assert done.returncode == 0, done.stderr
    assert calls(whole_log) == TILES
    assert not Path(f"{whole}.partial").exists() and not Journal.path_for(whole).exists()

    log, output = data / "runs.log", data / "out.geojsonl"
    killed = batch(data, models_file(data / "killing.toml", log, kill_after=4), output, task)
    assert killed.returncode == -signal.SIGKILL
    assert calls(log) == 4
    assert not output.exists()  # nothing that looks complete
    assert Path(f"{output}.partial").exists()
    journal = json.loads(Journal.path_for(output).read_text(encoding="utf-8"))
    assert sorted(int(t) for t in journal["tiles"]) == [0, 1, 2, 3]

    resumed = batch(data, models_file(data / "resuming.toml", log), output, task)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming: 4 tile(s)" in resumed.stderr
    assert calls(log) == TILES  # the four tiles of the killed run were not done again
    assert features(output) == features(whole)
    assert not Path(f"{output}.partial").exists() and not Journal.path_for(output).exists()


def test_a_tile_cut_short_and_a_broken_line_are_done_again(data):
    log, output = data / "runs.log", data / "out.geojsonl"
    whole = data / "whole.geojsonl"
    assert batch(data, models_file(data / "whole.toml", data / "whole.log"), whole, "caption").returncode == 0
    killed = batch(data, models_file(data / "killing.toml", log, kill_after=6), output, "caption")
    assert killed.returncode == -signal.SIGKILL
    partial = Path(f"{output}.partial")
    journal = json.loads(Journal.path_for(output).read_text(encoding="utf-8"))
    lines = partial.read_text(encoding="utf-8").splitlines()
    written = sum(t["features"] for t in journal["tiles"].values())
    assert written == len(lines) == 6  # a caption per tile
    cut = json.loads(lines[-1])["properties"]["tile"]  # the last recorded tile loses a feature: done again
    partial.write_text("\n".join(lines[:-1]) + '\n{"type": "Feat', encoding="utf-8")
    resumed = batch(data, models_file(data / "resuming.toml", log), output, "caption")
    assert resumed.returncode == 0, resumed.stderr
    assert calls(log) == TILES + 1 and f"resuming: {len(journal['tiles']) - 1} tile(s)" in resumed.stderr
    assert features(output) == features(whole)
    assert cut == 5


def test_another_job_in_the_same_output_starts_afresh(data):
    log, output = data / "runs.log", data / "out.geojsonl"
    batch(data, models_file(data / "killing.toml", log, kill_after=3), output)
    rerun = batch(data, models_file(data / "other.toml", log), output, task="caption")  # another task: another job
    assert rerun.returncode == 0 and "resuming" not in rerun.stderr
    assert calls(log) == 3 + TILES
    assert len(output.read_text(encoding="utf-8").splitlines()) == TILES  # one tile polygon per tile, nothing kept
    assert np.all([json.loads(line)["properties"]["kind"] == "tile" for line in output.read_text().splitlines()])
