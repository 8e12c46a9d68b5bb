"""Batch jobs on a local Ray cluster of two workers give what the single-process run gives.

    .venv/bin/python -m pytest -p no:pytest_qgis -p no:pytest-qt tests/engine/test_distributed.py

One Ray instance (two CPUs, no dashboard) and one two-worker executor serve the module; the
models are the fake TileBackend (tests/engine/fakes.py), subclassed here to record every load in
a file, so that the test can see each worker loaded its model once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import shapely.geometry as sg

from rs_assistant.core.protocol import BatchRequest, ErrorCode, Options, ProtocolError
from tests.engine import rasters
from tests.engine.fakes import TileBackend, write_models_file

ray = pytest.importorskip("ray", reason="ray is not installed: 'make setup' installs it (requirements/distributed.in)")

from rs_assistant.engine.batch import CACHE_ENV, run_job  # noqa: E402
from rs_assistant.engine.distributed import RayExecutor, make_ray_executor  # noqa: E402
from rs_assistant.engine.registry import Registry  # noqa: E402
from rs_assistant.engine.service import Engine  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SIDE = 200  # raster pixels; tiles of 64 with 16 of overlap: a 4 x 4 grid
TILE, OVERLAP, BATCH = 64, 16, 3


class CountingTiles(TileBackend):
    """TileBackend that appends ``<pid>`` to ``load_log_file`` each time it loads."""

    def load(self) -> None:
        super().load()
        with open(self.config["load_log_file"], "a", encoding="utf-8") as log:
            log.write(f"{os.getpid()}\n")


class DyingTiles(TileBackend):
    """TileBackend whose process exits in the middle of its first batch (a worker lost)."""

    def run_batch(self, calls: Any) -> Any:
        os._exit(3)


EXTRA_MODELS = f"""
[models.counted]
backend = "{__name__}:CountingTiles"
load_log_file = "loads.txt"
[models.slow_tiles]
backend = "tests.engine.fakes:TileBackend"
delay_s = 0.5
[models.dying]
backend = "{__name__}:DyingTiles"
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Before/after rasters whose bright blocks cross tile seams, a models file, and one embedding cache per run."""
    folder = tmp_path_factory.mktemp("distributed")
    t = rasters.utm_transform()
    before = sg.MultiPolygon(
        [sg.box(*rasters.pixel_extent(t, *box)) for box in ((30, 30, 80, 60), (100, 120, 150, 190), (5, 150, 40, 170))]
    )
    after = before.union(sg.box(*rasters.pixel_extent(t, 120, 20, 190, 70)))  # a new block across a seam
    return {
        "before": rasters.burn(folder / "before.tif", before, width=SIDE, height=SIDE),
        "after": rasters.burn(folder / "after.tif", after, width=SIDE, height=SIDE),
        "models": write_models_file(folder / "models.toml", extra=EXTRA_MODELS),
        "loads": folder / "loads.txt",
        "ray_cache": folder / "cache-ray",
        "local_cache": folder / "cache-local",
    }


@pytest.fixture(scope="module")
def executor(data: dict[str, Path]) -> Iterator[RayExecutor]:
    """Two workers on a local Ray instance (three CPUs: one left for the tests' own short-lived workers)."""
    assert not ray.is_initialized()
    ray.init(num_cpus=3, include_dashboard=False, logging_level="WARNING")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(data["ray_cache"])  # the workers' embedding cache (passed to them at start)
    try:
        executor = make_ray_executor("local", models_file=data["models"], device="cpu", workers=2)  # joins that Ray
        yield executor
        executor.close()
        assert ray.is_initialized(), "an executor that joined a running Ray leaves it running"
    finally:
        _restore(CACHE_ENV, previous)
        ray.shutdown()


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _request(task: str, data: dict[str, Path], model: str = "counted", **kwargs: Any) -> BatchRequest:
    sources = (str(data["before"]), str(data["after"])) if task == "change" else (str(data["before"]),)
    prompt = {"retrieve": "bright blocks", "segment": "segment the blocks", "ground": "find the blocks"}.get(task, "")
    return BatchRequest(task=task, sources=sources, output_crs="EPSG:3857", model=model, prompt=prompt, tile_size=TILE,
                        overlap=OVERLAP, batch_size=BATCH, options=Options(top_k=3), **kwargs)  # fmt: skip


def _outcome(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What a job produced, independent of the order tiles finished in: per tile text/features/pending, merged,
    ranked, counts."""
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done", kinds
    tiles = {
        e["tile"]: json.dumps([e["text"], e["features"], e["pending"]], sort_keys=True)
        for e in events
        if e["event"] == "tile"
    }
    assert len(tiles) == kinds.count("tile"), "every tile once"
    final = {
        e["event"]: json.dumps(e["features"], sort_keys=True) for e in events if e["event"] in ("merged", "ranked")
    }
    done = events[-1]
    return {
        "tiles": tiles,
        **final,
        "tiles_done": done["tiles_done"],
        "features": done["features"],
        "start": events[0]["tiles"],
    }


@pytest.mark.parametrize("task", ["segment", "ground", "caption", "change", "retrieve"])
def test_ray_job_gives_the_single_process_result(
    task: str, data: dict[str, Path], executor: RayExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(data["local_cache"]))  # the single-process run embeds for itself
    local = list(run_job(Engine(Registry.from_file(data["models"], device="cpu")), _request(task, data)))
    distributed = list(run_job(executor, _request(task, data)))

    expected, got = _outcome(local), _outcome(distributed)
    assert got == expected
    assert expected["tiles_done"] == expected["start"] == 16
    if task in ("segment", "ground", "change"):
        assert json.loads(expected["merged"]), "the seams merged into whole objects"
    if task == "retrieve":
        assert len(json.loads(expected["ranked"])) == 3
        assert len(list(data["ray_cache"].rglob("*.npy"))) == 16, "the workers embedded the tiles themselves"


def test_each_worker_loads_the_model_once(data: dict[str, Path], executor: RayExecutor) -> None:
    for task in ("segment", "caption"):  # two more jobs on the same workers
        assert list(run_job(executor, _request(task, data)))[-1]["event"] == "done"

    infos = executor.infos()
    assert len(infos) == 2 and len({i["pid"] for i in infos}) == 2
    assert all("counted" in i["loaded"] and i["tiles"] > 0 for i in infos), infos
    in_workers = [
        pid for pid in data["loads"].read_text().split() if pid != str(os.getpid())
    ]  # the driver's own runs aside
    assert sorted(in_workers) == sorted(str(i["pid"]) for i in infos), "each worker loaded the model exactly once"


def test_cancel_stops_the_workers(data: dict[str, Path], executor: RayExecutor) -> None:
    cancel = threading.Event()
    events = []
    started = time.monotonic()
    for event in run_job(executor, _request("segment", data, model="slow_tiles"), cancel):
        events.append(event)
        if event["event"] == "tile":
            cancel.set()
    elapsed = time.monotonic() - started

    assert events[-1]["event"] == "error" and events[-1]["error"]["code"] == ErrorCode.CANCELLED.value
    assert sum(e["event"] == "tile" for e in events) < 16
    assert elapsed < 6 * 0.5, "the batches left were not run"  # 6 batches of 0.5 s on 2 workers take 1.5 s at least
    # the workers are free again for the next job
    assert list(run_job(executor, _request("caption", data)))[-1]["event"] == "done"


def test_a_model_error_in_a_worker_is_the_same_error(data: dict[str, Path], executor: RayExecutor) -> None:
    unknown = list(run_job(executor, _request("segment", data, model="nope")))
    assert [e["event"] for e in unknown] == ["error"] and unknown[0]["error"]["code"] == ErrorCode.UNKNOWN_MODEL.value

    broken = list(run_job(executor, _request("caption", data, model="broken")))
    assert broken[-1]["event"] == "error"
    assert broken[-1]["error"]["code"] == ErrorCode.MODEL_LOAD_FAILED.value, broken[-1]


def test_a_dead_worker_ends_the_job_with_a_clear_error(data: dict[str, Path], executor: RayExecutor) -> None:
    dying = make_ray_executor("local", models_file=data["models"], device="cpu", workers=1)  # on the third CPU
    try:
        events = list(run_job(dying, _request("segment", data, model="dying")))
    finally:
        dying.close()
    assert events[-1]["event"] == "error", events[-1]
    error = events[-1]["error"]
    assert error["code"] == ErrorCode.INTERNAL.value
    assert "a Ray worker died while processing tiles" in error["message"] and "skip_tiles" in error["message"]


def test_workers_the_cluster_cannot_place_are_a_clear_error(data: dict[str, Path], executor: RayExecutor) -> None:
    started = time.monotonic()
    with pytest.raises(ProtocolError) as raised:
        make_ray_executor("local", models_file=data["models"], device="cpu", workers=4, start_timeout_s=3)
    assert raised.value.code is ErrorCode.TIMEOUT
    assert "only" in raised.value.message and "ask for fewer workers" in raised.value.message
    assert time.monotonic() - started < 30
    assert list(run_job(executor, _request("caption", data)))[-1]["event"] == "done", "the module's workers still run"


def test_cli_batch_on_ray_matches_the_local_cli(data: dict[str, Path], tmp_path: Path) -> None:
    """``python -m rs_assistant.engine batch ... --ray-address local`` in its own process (its own Ray)."""
    args = ["batch", "--task", "segment", "--image", str(data["before"]), "--prompt", "segment the blocks",
            "--model", "counted", "--models", str(data["models"]), "--tile-size", str(TILE), "--overlap", str(OVERLAP),
            "--batch-size", str(BATCH), "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), CACHE_ENV: str(tmp_path / "cache")}
    runs = {}
    for name, extra in (("local", []), ("ray", ["--ray-address", "local", "--workers", "2"])):
        done = subprocess.run([sys.executable, "-m", "rs_assistant.engine", *args, *extra], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=240)  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert _outcome(runs["ray"]) == _outcome(runs["local"])
