""".venv/bin/python benchmarks/engine.py [--cache /tmp/rsa-bench] [--repeat 30] [--models FILE --model NAME] [--device auto|cpu|cuda]

Times the engine's imagery and geo-output steps and prints each figure next to its goal. The first
run writes a 16384 x 16384 tiled (256 x 256), deflate-compressed 3-band GeoTIFF with overviews into
the cache folder (about a minute); later runs reuse it. Each section is one function that prints
its own lines (time_ms and report give p50/p95), called from main().
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import rasterio
import rasterio.transform
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.windows import Window as RioWindow

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any folder

from rs_assistant.core.protocol import FeatureKind, ImageRef  # noqa: E402
from rs_assistant.engine.backends.base import Detection  # noqa: E402
from rs_assistant.engine.geo import detections_to_features, polygonize_mask  # noqa: E402
from rs_assistant.engine.imagery import Window, read_image  # noqa: E402

BIG_SIDE = 16384
BLOCK = 256
REGION = 512
CRS = "EPSG:32633"
RES = 10.0
ORIGIN = (300_000.0, 5_000_000.0)
OVERVIEWS = (2, 4, 8, 16, 32, 64)
REGION_READ_GOAL_MS = 50.0


def percentiles(samples_ms: Sequence[float]) -> tuple[float, float]:
    """p50 and p95 of a list of timings."""
    ordered = sorted(samples_ms)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def time_ms(run: Callable[[], object], repeat: int, warm_up: bool = True) -> list[float]:
    """Wall-clock milliseconds of ``repeat`` calls (after one untimed call when ``warm_up``)."""
    if warm_up:
        run()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def report(name: str, samples_ms: Sequence[float], goal_ms: float | None = None) -> None:
    p50, p95 = percentiles(samples_ms)
    verdict = "" if goal_ms is None else f"   goal < {goal_ms:.0f} ms: {'met' if p50 < goal_ms else 'NOT MET'}"
    print(f"  {name:<52} p50 {p50:8.1f} ms   p95 {p95:8.1f} ms{verdict}")


# --- the test raster ---------------------------------------------------------------------------


def big_raster(cache: Path) -> Path:
    """The 16k GeoTIFF in ``cache``, written (atomically) on first use."""
    path = cache / f"big_{BIG_SIDE}_tiled{BLOCK}_deflate_ovr.tif"
    if path.exists():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.tif")
    started = time.perf_counter()
    print(f"writing {path} (once) ...", flush=True)
    profile = {
        "driver": "GTiff",
        "width": BIG_SIDE,
        "height": BIG_SIDE,
        "count": 3,
        "dtype": "uint8",
        "crs": CRS,
        "transform": rasterio.transform.from_origin(*ORIGIN, RES, RES),
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
        "predictor": 2,
        "interleave": "pixel",
    }
    rng = np.random.default_rng(0)
    with (
        rasterio.Env(COMPRESS_OVERVIEW="DEFLATE", PREDICTOR_OVERVIEW="2"),
        rasterio.open(partial, "w", **profile) as dst,
    ):
        for row in range(0, BIG_SIDE, 1024):
            dst.write(_fields(row, 1024, rng), window=RioWindow(0, row, BIG_SIDE, 1024))
        dst.build_overviews(list(OVERVIEWS), Resampling.average)
    partial.rename(path)
    print(f"  done in {time.perf_counter() - started:.0f} s, {path.stat().st_size / 1e6:.0f} MB", flush=True)
    return path


def _fields(row: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    """A strip of synthetic 'fields' (flat parcels of different colours) with mild sensor noise."""
    y, x = np.mgrid[row : row + rows, 0:BIG_SIDE]
    parcel = (x // 97) * 31 + (y // 89) * 17
    bands = [(parcel * k) % 180 + 40 for k in (1, 3, 7)]
    noise = rng.integers(0, 12, size=(3, rows, BIG_SIDE))
    return (np.stack(bands) + noise).astype(np.uint8)


# --- sections ----------------------------------------------------------------------------------


def section_region_read(cache: Path, repeat: int) -> None:
    """A 512 x 512 region at full resolution vs the whole 16k raster decimated to 512 (overviews)."""
    path = big_raster(cache)
    print(f"imagery: {BIG_SIDE} x {BIG_SIDE} tiled {BLOCK} x {BLOCK} deflate GeoTIFF with overviews {OVERVIEWS}")
    rng = np.random.default_rng(1)

    def region(crs: str = CRS) -> Window:
        col, row = rng.integers(0, BIG_SIDE - REGION, size=2)
        x0, y1 = ORIGIN[0] + col * RES, ORIGIN[1] - row * RES
        extent = (x0, y1 - REGION * RES, x0 + REGION * RES, y1)
        if crs != CRS:
            extent = _to_crs(extent, crs)
        return read_image(ImageRef(extent=extent, crs=crs, source=str(path)), max_side=1024)

    whole = (ORIGIN[0], ORIGIN[1] - BIG_SIDE * RES, ORIGIN[0] + BIG_SIDE * RES, ORIGIN[1])
    region_ms = time_ms(region, repeat)
    whole_ms = time_ms(lambda: read_image(ImageRef(extent=whole, crs=CRS, source=str(path)), max_side=REGION), repeat)
    warped_ms = time_ms(lambda: region("EPSG:3857"), repeat)
    no_overviews_ms = time_ms(lambda: _decimate_without_overviews(path), 1, warm_up=False)
    report("512 x 512 region, full resolution", region_ms, REGION_READ_GOAL_MS)
    report("512 x 512 region requested in EPSG:3857 (WarpedVRT)", warped_ms, REGION_READ_GOAL_MS)
    report("whole raster decimated to 512 x 512 (overviews)", whole_ms)
    report("whole raster decimated, overviews ignored (1 run)", no_overviews_ms)
    region_p50 = percentiles(region_ms)[0]
    print(f"  ratio whole-decimated / region (p50): {percentiles(whole_ms)[0] / region_p50:.2f} with overviews, "
          f"{no_overviews_ms[0] / region_p50:.0f} without")  # fmt: skip


def _decimate_without_overviews(path: Path) -> None:
    """What a read of the whole raster costs when GDAL may not use overviews (the engine refuses it)."""
    with rasterio.open(path, OVERVIEW_LEVEL="NONE") as src:
        src.read([1, 2, 3], out_shape=(3, REGION, REGION), resampling=Resampling.bilinear)


def section_polygonize(repeat: int) -> None:
    """Polygonising a 1024 x 1024 mask of a few hundred blobs, alone and as a reprojected feature."""
    mask = _blobs(1024, 300, np.random.default_rng(2))
    transform = rasterio.transform.from_origin(*ORIGIN, RES, RES)
    window = Window(array=np.zeros((1024, 1024, 3), np.uint8), transform=transform, crs=CRS, valid=None)
    detection = Detection(kind=FeatureKind.MASK, label="blob", score=1.0, mask=mask)
    parts = len(getattr(polygonize_mask(mask, transform), "geoms", [None]))
    print(f"geo: 1024 x 1024 mask, 300 disks -> {parts} polygons")
    report("polygonize_mask (same CRS)", time_ms(lambda: polygonize_mask(mask, transform), repeat))
    report(
        "mask detection -> GeoJSON feature in EPSG:4326",
        time_ms(lambda: detections_to_features([detection], window, "EPSG:4326"), repeat),
    )


def _blobs(side: int, count: int, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.ogrid[:side, :side]
    mask = np.zeros((side, side), bool)
    for cy, cx, radius in zip(rng.integers(0, side, count), rng.integers(0, side, count), rng.integers(3, 16, count)):
        mask |= (rows - cy) ** 2 + (cols - cx) ** 2 < radius**2
    return mask


def _to_crs(extent: tuple[float, float, float, float], crs: str) -> tuple[float, float, float, float]:
    return Transformer.from_crs(CRS, crs, always_xy=True).transform_bounds(*extent)


# --- whole requests through the engine service ---------------------------------------------------

TASK_PROMPTS = {
    "caption": "",
    "ground": "find the buildings",
    "segment": "segment the buildings",
    "chat": "what is in this image?",
    "change": "what changed?",
    "classify": "forest, city, water, farmland",
}
#: More requests timed for the models that do their task: (label, task, prompt). The built-in model answers a
#: class-level find of buildings from its class map read in crops (2 x 2), of trees and vehicles from its object
#: detector (the raster's 10 m pixels enlarged twice), and a referring expression with its language model.
MORE_PROMPTS = (
    ("trees", "ground", "find the trees"),
    ("tree masks", "segment", "segment the trees"),
    ("vehicles", "ground", "find the vehicles"),
    ("one", "ground", "find the largest building"),
    ("count", "chat", "how many buildings are there?"),
)


def section_tasks(cache: Path, repeat: int, models_file: Path | None, model: str, device: str = "cpu") -> None:
    """read / infer / post p50 and p95 per task on a 512 x 512 region, and the non-model share."""
    from rs_assistant.core.protocol import AnalyzeRequest, ProtocolError
    from rs_assistant.engine.device import choose_device
    from rs_assistant.engine.registry import Registry
    from rs_assistant.engine.service import Engine

    device = choose_device(device)
    engine = Engine(Registry.from_file(models_file, device=device))
    info = next((m for m in engine.models() if m.name == model), None)
    print(
        f"\nWhole requests, model '{model}' ({info.backend if info else '?'}) on {device}, 512 x 512 region of the "
        f"16k raster:"
    )
    if info is None:
        print(f"  skipped: no model named '{model}' (give --models FILE --model NAME)")
        return
    path = big_raster(cache)
    x0, y1 = ORIGIN[0] + 4000 * RES, ORIGIN[1] - 4000 * RES
    ref = {"source": str(path), "extent": [x0, y1 - REGION * RES, x0 + REGION * RES, y1], "crs": CRS}
    tasks = {t.value for t in info.tasks}
    asked = [(task, task, prompt) for task, prompt in TASK_PROMPTS.items() if task in tasks]
    asked += [(f"{task} ({label})", task, prompt) for label, task, prompt in MORE_PROMPTS if task in tasks]
    for label, task, prompt in asked:
        images = [ref, ref] if task == "change" else [ref]
        request = AnalyzeRequest.from_dict(
            {
                "task": task,
                "model": model,
                "prompt": prompt,
                "images": images,
                "output_crs": "EPSG:3857",
                "options": {"max_side": REGION, "max_new_tokens": 32},
            }
        )
        timings: list = []
        try:
            engine.analyze(request)  # warm-up: loads the model
            for _ in range(repeat):
                timings.append(engine.analyze(request).timing_ms)
        except ProtocolError as exc:
            print(f"  {label:<8} failed: {exc.code.value}: {exc.message}")
            continue
        parts = {name: [getattr(t, name) for t in timings] for name in ("read", "infer", "post")}
        total = sum(sum(v) for v in parts.values())
        share = (sum(parts["read"]) + sum(parts["post"])) / total if total else 0.0
        for name, samples in parts.items():
            report(f"{label} {name}", samples)
        print(
            f"  {label:<8} read+post share of the request: {share:6.1%}   goal < 15%: "
            f"{'met' if share < 0.15 else 'NOT MET'}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Times the engine's imagery and geo-output steps.")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/rsa-bench"), help="where the 16k raster is kept")
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per figure")
    parser.add_argument("--models", type=Path, default=None, help="models file for the per-task section")
    parser.add_argument("--model", default="default", help="model for the per-task section (default: default)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="the engine's device for the per-task section: cpu (the goals' machine), cuda or auto (default: cpu)",
    )
    args = parser.parse_args(argv)
    section_region_read(args.cache, args.repeat)
    section_polygonize(args.repeat)
    section_tasks(args.cache, args.repeat, args.models, args.model, args.device)


if __name__ == "__main__":
    main()
