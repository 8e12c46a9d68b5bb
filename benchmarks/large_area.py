""".venv/bin/python benchmarks/large_area.py [--quick] [--tiles N] [--cache out/bench] [--models FILE --model NAME]

Batch jobs over large rasters (issue 7), in one run:

1. throughput: tiles/s and megapixels/s of each batch task (caption, ground, segment, change,
   retrieve) through the engine's batch runner on the 5000 x 5000 raster, next to a naive run of
   the same tiles (the whole raster read into memory first, then one tile at a time through the
   model, no batching), and the ratio batch / naive (goal: >= 3x);
2. memory: the peak RSS of a segment job on the 5000 x 5000 and on the 20000 x 20000 raster, each
   job in its own process (goal: the 20000 one within 1.2x of the 5000 one), and of the naive
   whole-raster read for contrast.

The rasters are 3-band, 256 x 256 tiled, deflate-compressed GeoTIFFs written strip by strip (never
whole in memory) from Synthetic Earth scene pairs (training/data/synthetic) laid side by side, so
the model sees buildings, roads, water and fields; ``*_after.tif`` is the same mosaic of the pairs'
second dates (the change task's second raster). They are written once into --cache (under a minute
on 2 cores, 1.5 GB for the 20000 pair) and reused.

Default: --tiles 48 tiles per task for the throughput (spread evenly over the grid by ``skip_tiles``),
and the memory jobs on every tile: 144 on the 5000 raster, 2025 on the 20000 one (about 2 min on 2
cores). --rss-tiles N spreads N tiles evenly over each raster instead (the reads still span it);
--quick: 16 tiles per task, 400 per memory job. About 4 minutes on 2 cores.

GDAL keeps decompressed raster blocks in its block cache, up to GDAL_CACHEMAX, so that cache grows
with the area a job reads until it reaches the limit. The engine sets GDAL_CACHEMAX=128 (MB) unless
it is already set (rs_assistant/engine/__init__.py); the header prints the limit in force, and
``GDAL_CACHEMAX=5% .venv/bin/python benchmarks/large_area.py`` shows GDAL's own default (5% of the RAM).

The batch runs use the engine's LocalExecutor as a job does (a reader thread reads the next batch
while the model answers this one); the naive run is what the issue defines as naive: the whole
raster read first, then one tile at a time through the same backend, no batching. On a CPU the
vision encoder and the prompt's prefill are compute-bound (batching them saves little), so the
ratio is largest for the tasks that generate many tokens (ground, caption).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.transform
from rasterio.windows import Window as RioWindow

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from any folder

import rs_assistant.engine  # noqa: E402,F401 - bounds GDAL's block cache (GDAL_CACHEMAX) before GDAL's first use, as the engine does

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the engine's CLI does

CRS = "EPSG:32633"
RES = 0.5
ORIGIN = (300_000.0, 5_000_000.0)
BLOCK = 256
SCENE = 1024  # side of one Synthetic Earth scene pair in the mosaic
SCENE_SEEDS = (0, 3, 5, 6, 7, 8, 9, 10)  # pairs with changes, several themes
SIZES = (5000, 20000)
TASKS = ("caption", "ground", "segment", "change", "retrieve")
PROMPTS = {"caption": "", "ground": "find the buildings", "segment": "segment the buildings", "change": "what changed?",
           "retrieve": "a storage tank next to a parking lot"}  # fmt: skip
TILE = 512
OVERLAP = 64
THROUGHPUT_GOAL = 3.0
OWN = " (the model's own)"
RSS_GOAL = 1.2


# --- the rasters ---------------------------------------------------------------------------------


def raster_path(cache: Path, side: int, date: str = "before") -> Path:
    return cache / f"large_{side}_{date}.tif"


def ensure_rasters(cache: Path, sides: Sequence[int]) -> None:
    """Writes the missing rasters (before and after for every side) into ``cache``."""
    todo = [
        (side, date) for side in sides for date in ("before", "after") if not raster_path(cache, side, date).exists()
    ]
    if not todo:
        return
    cache.mkdir(parents=True, exist_ok=True)
    print(f"writing the synthetic rasters into {cache} (once) ...", flush=True)
    started = time.perf_counter()
    scenes = _scene_pairs()
    for side, date in todo:
        _write_mosaic(raster_path(cache, side, date), side, [pair[0 if date == "before" else 1] for pair in scenes])
    print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)


def _scene_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    from training.data.synthetic import generate_pair

    pairs = []
    for seed in SCENE_SEEDS:
        pair = generate_pair(seed, size=SCENE, gsd=RES)
        pairs.append((pair.before.image, pair.after.image))
    return pairs


def _write_mosaic(path: Path, side: int, scenes: list[np.ndarray]) -> None:
    """``side`` x ``side`` pixels of scenes laid on a SCENE grid (varied by index and rotation), strip by strip."""
    profile = {
        "driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8", "crs": CRS,
        "transform": rasterio.transform.from_origin(*ORIGIN, RES, RES), "tiled": True, "blockxsize": BLOCK,
        "blockysize": BLOCK, "compress": "deflate", "predictor": 2, "interleave": "pixel", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    partial = path.with_suffix(".partial.tif")
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(partial, "w", **profile) as dst:
        for row in range(0, side, SCENE):
            rows = min(SCENE, side - row)
            strip = np.empty((3, rows, side), np.uint8)
            for col in range(0, side, SCENE):
                i, j = row // SCENE, col // SCENE
                scene = np.rot90(scenes[(3 * i + 5 * j) % len(scenes)], k=(i + 2 * j) % 4)
                cols = min(SCENE, side - col)
                strip[:, :, col : col + cols] = scene[:rows, :cols].transpose(2, 0, 1)
            dst.write(strip, window=RioWindow(0, row, side, rows))
    partial.rename(path)
    print(f"  {path.name}: {side} x {side}, {path.stat().st_size / 1e6:.0f} MB", flush=True)


# --- jobs ----------------------------------------------------------------------------------------


def make_engine(models_file: Path | None, model: str) -> Any:
    """An Engine with ``model`` loaded (its load is not part of any figure)."""
    from rs_assistant.engine.registry import Registry
    from rs_assistant.engine.service import Engine

    engine = Engine(Registry.from_file(models_file, device="cpu"))
    engine.registry.backend(model).ensure_loaded()
    return engine


def request_for(task: str, cache: Path, side: int, model: str, tiles: int, batch_size: int) -> Any:
    """The BatchRequest of ``task`` over the ``side`` raster: ``tiles`` tiles spread evenly over its grid (0: all)."""
    from rs_assistant.core.protocol import BatchRequest, Options
    from rs_assistant.engine.tiling import tile_starts

    sources = [str(raster_path(cache, side))] + ([str(raster_path(cache, side, "after"))] if task == "change" else [])
    count = len(tile_starts(side, TILE, OVERLAP)) ** 2
    keep = set(spread(count, tiles)) if tiles else set(range(count))
    return BatchRequest(task=task, sources=tuple(sources), output_crs=CRS, model=model, prompt=PROMPTS[task], tile_size=TILE,
                        overlap=OVERLAP, batch_size=batch_size, skip_tiles=tuple(i for i in range(count) if i not in keep),
                        options=Options(max_new_tokens=32))  # fmt: skip


def spread(count: int, n: int) -> list[int]:
    """``n`` tile ids spread evenly over ``count`` (first and last included)."""
    return sorted({int(round(v)) for v in np.linspace(0, count - 1, min(n, count))})


@dataclass
class Run:
    tiles: int
    seconds: float
    features: int = 0
    read_s: float = 0.0  # naive: reading the whole raster(s), included in seconds

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / self.seconds

    @property
    def megapixels_per_s(self) -> float:
        return self.tiles * TILE * TILE / 1e6 / self.seconds


def batch_run(runner: Any, request: Any) -> Run:
    """The job through the batch runner (rs_assistant.engine.batch.run_job), timed end to end."""
    from rs_assistant.engine.batch import CACHE_ENV, run_job

    with _fresh_embedding_cache(CACHE_ENV):  # a search embeds every tile, as on a layer's first search
        started = time.perf_counter()
        last: dict[str, Any] = {}
        for last in run_job(runner, request):
            if last["event"] == "error":
                raise RuntimeError(f"the batch job failed: {last['error']}")
        seconds = time.perf_counter() - started
    return Run(last["tiles_done"], seconds, last["features"])


@contextmanager
def _fresh_embedding_cache(variable: str) -> Iterator[None]:
    previous = os.environ.get(variable)
    with tempfile.TemporaryDirectory(prefix="rsa-bench-embeddings-") as folder:
        os.environ[variable] = folder
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = previous


def naive_run(engine: Any, request: Any, tiles: int | None = None) -> Run:
    """The same tiles the naive way: every raster read whole into memory, then one tile at a time through the model.

    Each tile is what /v1/analyze does with a window (the model's ``run`` on one image, the threshold,
    detections_to_features into the output CRS); no batching, no seams, a search scores tile by tile.
    """
    import affine

    from rs_assistant.core.protocol import Task
    from rs_assistant.engine.backends.base import BackendCall
    from rs_assistant.engine.geo import detections_to_features
    from rs_assistant.engine.imagery import Window
    from rs_assistant.engine.service import THRESHOLDED_TASKS
    from rs_assistant.engine.tiling import make_grid

    grid = make_grid(request)
    skip = set(request.skip_tiles)
    ids = [i for i in range(grid.count) if i not in skip][:tiles]
    backend = engine.registry.backend(request.model)
    started = time.perf_counter()
    whole = []
    for source in request.sources:
        with rasterio.open(source) as src:
            whole.append(src.read([1, 2, 3]))  # bands x rows x cols, the whole raster
    read_s = time.perf_counter() - started
    features, scores = 0, []
    for tile_id in ids:
        col0, row0, col1, row1 = grid.tile(tile_id).window
        images = [np.ascontiguousarray(data[:, row0:row1, col0:col1].transpose(1, 2, 0)) for data in whole]
        if request.task is Task.RETRIEVE:
            embedding = backend.embed_images(images[:1])
            scores.append(float(backend.score_text(embedding, request.prompt)[0]))
            continue
        window = Window(array=images[0], transform=grid.transform * affine.Affine.translation(col0, row0), crs=grid.crs)
        result = backend.run(BackendCall(request.task, images, request.prompt, (), request.options))
        detections = result.detections
        if request.task in THRESHOLDED_TASKS:
            detections = [d for d in detections if d.score >= request.options.score_threshold]
        features += len(detections_to_features(detections, window, request.output_crs))
    if scores:  # the ranking: the top_k best tiles
        features = len(sorted(range(len(scores)), key=lambda i: -scores[i])[: request.options.top_k])
    return Run(len(ids), time.perf_counter() - started, features, read_s)


# --- sections ------------------------------------------------------------------------------------


def section_throughput(args: argparse.Namespace) -> None:
    side = SIDES_THROUGHPUT
    engine = make_engine(args.models, args.model)
    in_force = engine.check_batch(request_for(args.tasks[0], args.cache, side, args.model, args.tiles, args.batch_size))
    print(f"\nThroughput: {args.tiles} tiles of {TILE} x {TILE} (overlap {OVERLAP}) spread over the {side} x {side} " f"raster, "
          f"model '{args.model}', batch size {in_force}{OWN if not args.batch_size else ''}, 2 rasters for change")  # fmt: skip
    print(f"  {'task':<9}{'batch tiles/s':>14}{'batch MP/s':>12}{'naive tiles/s':>15}{'naive MP/s':>12}{'naive read':>12}"
          f"{'ratio':>8}   goal >= {THROUGHPUT_GOAL:g}x")  # fmt: skip
    ratios = []
    for task in args.tasks:
        request = request_for(task, args.cache, side, args.model, args.tiles, args.batch_size)
        try:
            naive_run(engine, request, tiles=1)  # warm-up: the first call of a task pays one-off costs
            batch = batch_run(engine, request)
            naive = naive_run(engine, request)
        except Exception as exc:  # noqa: BLE001 - one task failing does not hide the others
            print(f"  {task:<9}failed: {type(exc).__name__}: {exc}")
            continue
        ratio = batch.tiles_per_s / naive.tiles_per_s
        ratios.append(ratio)
        verdict = "met" if ratio >= THROUGHPUT_GOAL else "NOT MET"
        print(f"  {task:<9}{batch.tiles_per_s:>14.2f}{batch.megapixels_per_s:>12.2f}{naive.tiles_per_s:>15.2f}"
              f"{naive.megapixels_per_s:>12.2f}{naive.read_s:>10.2f} s{ratio:>7.2f}x   {verdict}", flush=True)  # fmt: skip
    if ratios:
        print(f"  geometric mean ratio: {float(np.exp(np.mean(np.log(ratios)))):.2f}x")


SIDES_THROUGHPUT = 5000


def section_memory(args: argparse.Namespace) -> None:
    print(
        f"\nPeak RSS of one segment job per process, model '{args.model}' loaded first (batch size "
        f"{args.batch_size or OWN.strip(' ()')}; "
        f"batch: {args.rss_tiles or 'all'} tiles spread over the raster, naive: the whole raster read, then "
        f"{args.naive_rss_tiles} tiles):"
    )
    print(f"  {'run':<34}{'tiles':>7}{'seconds':>9}{'peak RSS':>11}{'before job':>12}{'job adds':>10}")
    peaks = {}
    for side in SIZES:
        for naive in (False, True):
            tiles = args.naive_rss_tiles if naive else args.rss_tiles
            result = _child_rss(args, side, tiles, naive)
            name = f"{'naive' if naive else 'batch'} {side} x {side}"
            if "error" in result:
                print(f"  {name:<34}failed: {result['error']}")
                continue
            peaks[(side, naive)] = result["peak_mb"]
            print(f"  {name:<34}{result['tiles']:>7}{result['seconds']:>9.1f}{result['peak_mb']:>8.0f} MB"
                  f"{result['loaded_mb']:>9.0f} MB{result['peak_mb'] - result['loaded_mb']:>7.0f} MB", flush=True)  # fmt: skip
    small, large = peaks.get((SIZES[0], False)), peaks.get((SIZES[1], False))
    if small and large:
        ratio = large / small
        print(
            f"  batch peak RSS {SIZES[1]} / {SIZES[0]}: {ratio:.2f}x   goal <= {RSS_GOAL:g}x: "
            f"{'met' if ratio <= RSS_GOAL else 'NOT MET'}"
        )


def _child_rss(args: argparse.Namespace, side: int, tiles: int, naive: bool) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--rss-child", str(side), "--rss-tiles", str(tiles),
               "--cache", str(args.cache), "--model", args.model, "--batch-size", str(args.batch_size)]  # fmt: skip
    if args.models:
        command += ["--models", str(args.models)]
    if naive:
        command.append("--naive")
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def rss_child(args: argparse.Namespace) -> None:
    """One job in this process; prints {"peak_mb", "loaded_mb", "tiles", "seconds"} as JSON."""
    engine = make_engine(args.models, args.model)
    request = request_for("segment", args.cache, args.rss_child, args.model, args.rss_tiles, args.batch_size)
    loaded = _reset_peak()  # the job's own peak from here on (loading the model peaks higher than it stays)
    if args.naive:
        run = naive_run(engine, request, tiles=args.rss_tiles or None)
    else:
        run = batch_run(engine, request)
    print(json.dumps({"peak_mb": _peak_mb(), "loaded_mb": loaded, "tiles": run.tiles, "seconds": run.seconds}))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak() -> float:
    """The current RSS (MB), after resetting the peak to it (Linux: /proc/self/clear_refs); the peak so far
    elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return _peak_mb()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Batch jobs over large rasters: throughput against a naive run, and peak memory."
    )
    parser.add_argument(
        "--cache", type=Path, default=ROOT / "out" / "bench", help="where the synthetic rasters are kept"
    )
    parser.add_argument("--models", type=Path, default=None, help="models file (default: only the built-in 'default')")
    parser.add_argument("--model", default="default", help="the model to run (default: default)")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated tasks (default: {','.join(TASKS)})")
    parser.add_argument("--tiles", type=int, default=48, help="tiles per task for the throughput (default 48)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="tiles per model call in the batch runs (default 0: the model's own, as a job that does not set it)",
    )
    parser.add_argument(
        "--rss-tiles", type=int, default=0, help="tiles per memory job, spread over the raster (default 0: every tile)"
    )
    parser.add_argument("--naive-rss-tiles", type=int, default=4, help="tiles of the naive memory runs (default 4)")
    parser.add_argument("--quick", action="store_true", help="16 tiles per task, 400 per memory job")
    parser.add_argument("--skip", default="", help="sections to leave out: throughput, memory")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.quick:
        args.tiles, args.rss_tiles = 16, 400
    if args.rss_child is not None:
        rss_child(args)
        return
    ensure_rasters(args.cache, SIZES)
    started = time.perf_counter()
    print(f"large-area benchmark: {os.cpu_count()} CPU core(s), torch threads {_torch_threads()}, rasters in " f"{args.cache}, "
          f"GDAL block cache {_gdal_cache_mb():.0f} MB (GDAL_CACHEMAX={os.environ.get('GDAL_CACHEMAX', 'unset')})")  # fmt: skip
    if "throughput" not in args.skip:
        section_throughput(args)
    if "memory" not in args.skip:
        section_memory(args)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


def _gdal_cache_mb() -> float:
    """GDAL's block cache limit in this process (the default is 5% of the RAM)."""
    from osgeo import gdal

    return gdal.GetCacheMax() / 1e6


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    main()
