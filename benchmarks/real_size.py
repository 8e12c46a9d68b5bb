""".venv/bin/python benchmarks/real_size.py [--quick] [--models a,b] [--device cpu|cuda|auto] [--repeat N] [--tiles N]

Real-size models at real speed (issue 25). Each backend's published architecture
(benchmarks/real_size_configs.json, with the config.json each value comes from) is built with random
weights, which run exactly as fast as the real ones, and written once as a checkpoint folder into
--cache (the tokenizer and processor files come from tests/engine/tiny_models, with the real input
sizes; the vocabulary keeps its real size in the model). Then, for each model, in its own process
(so that its peak memory is its own):

1. one 512 x 512 window per request, p50/p95 over --repeat requests, each on another window:
   - "engine": the whole /v1/analyze path (Engine.analyze: read the window from a GeoTIFF, the
     backend, features in map coordinates);
   - "baseline": the model card's example code (processor, model / generate, post-processing) on
     the same window already in memory, with the same model object, called alternately with the
     engine so that both see the same machine load;
   - the engine's overhead: the share of the request spent outside the backend's call (reading the
     window, features in map coordinates, the request's own handling), goal < 5%; and, for
     contrast, (engine - card) / engine, which on a busy machine is mostly noise.
2. a batch job: tiles/s of the engine's batch runner (run_job, the backend's own batch size) next to
   the naive loop a user would write (the whole raster in memory, the card's code one tile at a
   time), goal >= 3x on a GPU and >= 1.5x for Florence-2-base on 2 CPU cores; and the engine one tile
   per model call (batch_size 1), which shows what batching itself gives.
3. tuning, before/after in the same run: SAM's image embedding reused for the later prompts of a
   window (three prompts on one window, cache off / on).
4. Qwen2.5-VL (CUDA): batch-1 decode tokens/s and the fraction of the memory-bandwidth bound
   (bandwidth / weights bytes, bandwidth from the spec sheets in the data file), goal >= 70%.
5. peak memory: the process's peak RSS and, on CUDA, torch.cuda.max_memory_allocated; and what a
   person can expect: seconds per answer and hours per 10,000 km2 at 0.5 m (the tiles of that area
   at the batch runner's tiles/s).

--quick: Florence-2-base (caption only), SAM ViT-B and CLIP ViT-B/16, 3 requests and 4 tiles each,
48 new tokens (a detailed caption's length: Florence-2's detailed captions run to about 35 words, 40-50
tokens; random weights write every token up to the limit): about 12 minutes on 2 idle CPU cores (most
of it Florence-2's 768 x 768 vision tower and SAM's 1024 x 1024 one). On 2 CPU cores Florence-2-base's
vision tower takes about 3 s of a window's 7 s whatever the batch, so what batching gains grows with
the answer's length: 1.2x at 16 tokens, about 2x at 48.
Without --quick on CUDA: every model in the data file, in bf16 (the engine's dtype there). On a CPU
the Qwen2.5-VL models are skipped unless named with --models (a 3B model in fp32 needs 15 GB and
minutes per answer). --json FILE writes every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from any folder

import rs_assistant.engine  # noqa: E402,F401 - bounds GDAL's block cache, as the engine does

CONFIGS = Path(__file__).with_name("real_size_configs.json")
QUICK = ("florence2-base", "sam-vit-base", "clip-vit-base-patch16")
CRS = "EPSG:32633"
RES = 0.5
ORIGIN = (400_000.0, 5_000_000.0)
WINDOW = 512
OVERHEAD_GOAL = 0.05
BATCH_GOAL_GPU = 3.0
BATCH_GOAL_CPU_FLORENCE = 1.5
DECODE_GOAL = 0.70
LABELS = ("buildings", "forest", "water", "farmland", "road")
BOXES = ((40, 60, 200, 220), (250, 30, 480, 260), (100, 300, 400, 500))
PROMPTS = {"caption": "", "ground": "buildings", "segment": "roof", "classify": "", "retrieve": "a harbour"}


def data() -> dict[str, Any]:
    return json.loads(CONFIGS.read_text(encoding="utf-8"))


# --- building a real-size checkpoint folder -------------------------------------------------------------


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build_folder(name: str, cache: Path, device: str) -> Path:
    """The checkpoint folder of model ``name`` (built once: a tiny folder's tokenizer and processor, the real
    architecture's config and random weights, stored in the device's dtype)."""
    import torch

    from rs_assistant.engine.device import torch_dtype

    entry = data()["models"][name]
    dtype = torch_dtype(device)
    stamp = hashlib.sha256(json.dumps([entry, str(dtype)], sort_keys=True).encode()).hexdigest()[:12]
    folder = cache / f"{name}-{str(dtype).replace('torch.', '')}"
    if (folder / "built").is_file() and (folder / "built").read_text() == stamp:
        return folder
    started = time.perf_counter()
    print(f"  building {name} ({entry['parameters']}) in {folder} ...", file=sys.stderr, flush=True)
    backend = entry["backend"]
    if backend == "sam" and "backbone_config" in entry["config"].get("vision_config", {}):
        backend = "sam2"
    import importlib

    from tests.engine import tiny_models  # noqa: F401

    tiny = importlib.import_module(f"tests.engine.tiny_models.{'qwen2_5_vl' if backend == 'qwen2_5_vl' else backend}")
    tiny.make(folder)
    config_dict = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    real = entry["config"]
    if backend == "sam2":  # the image model only, as the engine runs it
        from transformers import Sam2Config, Sam2Model

        model_class, config = Sam2Model, Sam2Config(**real)
    elif backend == "sam":  # no tokenizer ids to keep: the real configuration alone (its derived sizes too)
        from transformers import SamConfig, SamModel

        model_class, config = SamModel, SamConfig(**real)
    else:
        from transformers import AutoConfig

        config_dict.pop("architectures", None)
        config_dict.get("text_config", {}).pop("layer_types", None)  # the tiny model's, one per layer
        config_dict = _merge(config_dict, real)
        config = AutoConfig.for_model(**config_dict)
        model_class = {
            "florence2": "Florence2ForConditionalGeneration",
            "sam": "SamModel",
            "clip": "CLIPModel",
            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        }[backend]
        import transformers

        model_class = getattr(transformers, model_class)
    generation = None
    if (folder / "generation_config.json").is_file():
        from transformers import GenerationConfig

        generation = GenerationConfig.from_pretrained(folder)
    torch.manual_seed(0)
    with torch.device(device if device.startswith("cuda") else "cpu"):
        model = model_class._from_config(config, dtype=dtype)
    if generation is not None:
        model.generation_config = generation
    for stale in folder.glob("model*.safetensors*"):
        stale.unlink()
    model.save_pretrained(folder)
    del model
    _real_input_sizes(backend, entry, folder)
    (folder / "built").write_text(stamp)
    print(f"  built {name} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return folder


def _real_input_sizes(backend: str, entry: dict[str, Any], folder: Path) -> None:
    """The processor files of the tiny folder, set to the real model's input size."""
    path = folder / "preprocessor_config.json"
    nested = not path.is_file()  # transformers 5 keeps the image processor inside processor_config.json
    if nested:
        path = folder / "processor_config.json"
        if not path.is_file():
            return
    whole = json.loads(path.read_text(encoding="utf-8"))
    pre = whole["image_processor"] if nested else whole
    side = entry.get("image_size")
    if backend == "florence2":
        pre.update(size={"height": side, "width": side}, crop_size={"height": side, "width": side})
        pre["image_seq_length"] = entry["image_seq_length"]  # Florence2Processor's count of image tokens
    elif backend == "sam":
        pre.update(size={"longest_edge": side}, pad_size={"height": side, "width": side})
        pre.update(mask_size={"longest_edge": side // 4}, mask_pad_size={"height": side // 4, "width": side // 4})
    elif backend == "sam2":
        pre.update(size={"height": side, "width": side}, mask_size={"height": side // 4, "width": side // 4})
    elif backend == "clip":
        pre.update(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    elif backend == "qwen2_5_vl":
        pre.update(patch_size=14, merge_size=2, temporal_patch_size=2)
        pre["size"] = {"shortest_edge": 4 * 28 * 28, "longest_edge": 1280 * 28 * 28}
    path.write_text(json.dumps(whole, indent=2), encoding="utf-8")


# --- rasters ---------------------------------------------------------------------------------------------


def raster(cache: Path, side: int) -> Path:
    """A 3-band GeoTIFF of ``side`` pixels with field-, road- and roof-like structure (written once)."""
    import rasterio
    import rasterio.transform

    path = cache / f"scene-{side}.tif"
    if path.is_file():
        return path
    rng = np.random.default_rng(side)
    coarse = rng.integers(40, 200, (side // 64 + 2, side // 64 + 2, 3)).astype(np.float32)
    image = np.kron(coarse, np.ones((64, 64, 1), np.float32))[:side, :side]
    for _ in range(side // 8):
        x, y = rng.integers(0, side - 40, 2)
        w, h = rng.integers(8, 40, 2)
        image[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    image += rng.normal(0, 8, image.shape).astype(np.float32)
    pixels = np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1)
    transform = rasterio.transform.from_origin(ORIGIN[0], ORIGIN[1], RES, RES)
    profile = dict(driver="GTiff", width=side, height=side, count=3, dtype="uint8", crs=CRS, transform=transform,
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate")  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return path


def window_at(path: Path, index: int) -> tuple[np.ndarray, list[float]]:
    """The ``index``-th 512 x 512 window of the raster (pixels, H x W x 3) and its extent in map units."""
    import rasterio
    from rasterio.windows import Window as RioWindow

    with rasterio.open(path) as src:
        per_row = src.width // WINDOW
        col, row = (index % (per_row * per_row)) % per_row * WINDOW, (index % (per_row * per_row)) // per_row * WINDOW
        pixels = src.read([1, 2, 3], window=RioWindow(col, row, WINDOW, WINDOW)).transpose(1, 2, 0)
    x0, y1 = ORIGIN[0] + col * RES, ORIGIN[1] - row * RES
    return np.ascontiguousarray(pixels), [x0, y1 - WINDOW * RES, x0 + WINDOW * RES, y1]


# --- the model cards' example code (the baseline) --------------------------------------------------------


class Baseline:
    """What a user writes from the model card, one window at a time, on the engine's model object."""

    def __init__(self, backend: Any, folder: Path, device: str, max_new_tokens: int):
        from transformers import AutoProcessor

        self.backend, self.device, self.max_new_tokens = backend, device, max_new_tokens
        self.model = backend.model
        self.dtype = self.model.dtype
        kind = backend.name
        if kind == "qwen2_5_vl":  # its AutoProcessor needs torchvision (video); the card's steps with its parts
            self.processor = None
        elif kind == "sam" and getattr(backend, "sam2", None) is not None:
            self.processor = None  # Sam2Processor needs torchvision: the engine's own resize stands in
        else:
            self.processor = AutoProcessor.from_pretrained(folder)

    def __call__(self, task: str, image: np.ndarray) -> Any:
        import torch

        kind = self.backend.name
        with torch.inference_mode():
            if kind == "florence2":  # florence-community/Florence-2-base's card
                prompt = {"caption": "<DETAILED_CAPTION>", "ground": "<CAPTION_TO_PHRASE_GROUNDING>buildings",
                          "segment": "<REFERRING_EXPRESSION_SEGMENTATION>roof"}[task]  # fmt: skip
                inputs = self.processor(text=prompt, images=image, return_tensors="pt").to(self.device, self.dtype)
                ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=3, do_sample=False)
                text = self.processor.batch_decode(ids, skip_special_tokens=False)[0]
                # The card's post_process_generation needs the release's post-processor table, which the
                # benchmark's folder lacks: the same <loc_N> parsing the engine uses stands in for it.
                from rs_assistant.engine.backends import boxes

                size = (image.shape[1], image.shape[0])
                return text if task == "caption" else boxes.parse_florence2_boxes(text, size)
            if kind == "sam" and self.processor is not None:  # facebook/sam-vit-base's card
                inputs = self.processor(image, input_boxes=[[list(b) for b in BOXES]], return_tensors="pt")
                pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
                out = self.model(
                    pixel_values=pixel_values,
                    input_boxes=inputs["input_boxes"].to(self.device, self.dtype),
                    multimask_output=False,
                )
                return self.processor.image_processor.post_process_masks(
                    out.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
                )
            if kind == "sam":  # SAM 2.1's card, with the engine's resize for Sam2Processor
                pixels = self.backend.sam2.pixels(image).to(self.device, self.dtype)
                scale = torch.tensor([1024 / image.shape[1], 1024 / image.shape[0]] * 2)
                boxes = (torch.tensor(BOXES, dtype=torch.float32) * scale)[None].to(self.device, self.dtype)
                out = self.model(pixel_values=pixels, input_boxes=boxes, multimask_output=False)
                return torch.nn.functional.interpolate(out.pred_masks[0].float(), image.shape[:2], mode="bilinear") > 0
            if kind == "clip" and task == "retrieve":  # the card's image features, one tile at a time
                pixels = self.processor(images=image, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
                return torch.nn.functional.normalize(self.model.get_image_features(pixel_values=pixels).pooler_output)
            if kind == "clip":  # openai/clip-vit-base-patch16's card
                texts = [f"a satellite image of {label}." for label in LABELS]
                inputs = self.processor(text=texts, images=image, return_tensors="pt", padding=True).to(self.device)
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
                return self.model(**inputs).logits_per_image.softmax(dim=1).float().cpu()
            if kind == "qwen2_5_vl":  # Qwen2.5-VL's card: chat template, image processor, generate, decode
                b = self.backend
                from rs_assistant.core.protocol import Options, Task
                from rs_assistant.engine.backends.base import BackendCall

                call = BackendCall(task=Task(task), images=[image], prompt=PROMPTS[task],
                                   options=Options(max_new_tokens=self.max_new_tokens))  # fmt: skip
                prepared = b._prepare(call)
                ids = self.model.generate(**prepared.inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
                return b.tokenizer.batch_decode(ids[:, prepared.length :], skip_special_tokens=True)
        raise ValueError(f"no baseline for {kind} {task}")


# --- measuring ---------------------------------------------------------------------------------------------


def pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(run: Callable[[], Any], device: str) -> float:
    sync(device)
    started = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - started


def tasks_of(backend: str, quick: bool = False) -> list[str]:
    if quick and backend == "florence2":
        return ["caption"]
    return {"florence2": ["caption", "ground"], "sam": ["segment"], "clip": ["classify"],
            "qwen2_5_vl": ["caption", "ground"]}[backend]  # fmt: skip


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure of one model (run in its own process)."""
    import torch

    from rs_assistant.core.protocol import AnalyzeRequest
    from rs_assistant.engine.device import choose_device, torch_dtype
    from rs_assistant.engine.registry import ModelSpec, Registry
    from rs_assistant.engine.service import Engine

    name = args.child
    entry = data()["models"][name]
    device = choose_device(args.device)
    folder = build_folder(name, args.cache, device)
    spec = ModelSpec(name, entry["backend"], {"path": str(folder)})
    engine = Engine(Registry({name: spec}, device=device))
    backend = engine.registry.backend(name)
    started = time.perf_counter()
    backend.ensure_loaded()
    load_s = time.perf_counter() - started
    out: dict[str, Any] = {"model": name, "device": device, "dtype": str(torch_dtype(device)).replace("torch.", ""),
                           "parameters": sum(p.numel() for p in backend.model.parameters()), "load_s": load_s,
                           "torch_threads": torch.get_num_threads(), "tasks": {}}  # fmt: skip
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    baseline = Baseline(backend, folder, device, args.max_new_tokens)
    scene = raster(args.cache, 2048)
    windows = [window_at(scene, i) for i in range(16)]
    for task in tasks_of(entry["backend"], args.quick):
        options = {"max_side": WINDOW, "max_new_tokens": args.max_new_tokens}
        if task == "classify":
            options["labels"] = list(LABELS)
        prompt = PROMPTS[task]
        if task == "segment":
            prompt = "roof " + " ".join(str(list(b)) for b in BOXES)

        def request(extent: list[float], task: str = task, prompt: str = prompt, options: dict = options) -> Any:
            return AnalyzeRequest.from_dict({"task": task, "model": name, "prompt": prompt, "output_crs": "EPSG:3857",
                                             "images": [{"source": str(scene), "extent": extent, "crs": CRS}],
                                             "options": options})  # fmt: skip

        engine.analyze(request(windows[-1][1]))  # warm-up of both paths (first-call costs)
        baseline(task, windows[-1][0])
        engine_s, baseline_s, read_post, outside, rings = [], [], [], [], []
        for i in range(args.repeat):
            pixels, extent = windows[i % (len(windows) - 1)]
            answered: list[Any] = []
            engine_s.append(timed(lambda e=extent, a=answered: a.append(engine.analyze(request(e))), device))
            timing = answered[0].timing_ms
            read_post.append((timing.read + timing.post) / 1000)
            outside.append(engine_s[-1] - timing.infer / 1000)  # all but the backend's call
            drawn, held = answered[0].features["features"], (answered[0].held_back or {}).get("features", [])
            rings.extend(ring_count(f["geometry"]) for f in drawn + held)  # held back: under the score threshold
            baseline_s.append(timed(lambda p=pixels, t=task: baseline(t, p), device))
        e50, b50 = statistics.median(engine_s), statistics.median(baseline_s)
        out["tasks"][task] = {"engine_p50": e50, "engine_p95": pct(engine_s, 0.95), "baseline_p50": b50,
                              "baseline_p95": pct(baseline_s, 0.95), "overhead": (e50 - b50) / e50,
                              "read_post_p50": statistics.median(read_post),
                              "outside_model_share": statistics.median(outside) / e50,
                              "rings_per_feature": statistics.mean(rings) if rings else 0.0}  # fmt: skip
        print(f"  {name} {task}: engine p50 {e50:.2f} s, baseline p50 {b50:.2f} s", file=sys.stderr, flush=True)
    if entry["backend"] == "sam":
        out["sam_cache"] = sam_cache_figures(backend, windows, device)
        out["mask_post"] = mask_post_figures(backend, scene, windows[0], device)
    if entry["backend"] == "qwen2_5_vl":
        out["decode"] = decode_figures(backend, windows[0][0], device, args)
    out["batch"] = batch_figures(engine, backend, baseline, name, entry["backend"], args, device)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 1024**2
    return out


def ring_count(geometry: dict[str, Any]) -> int:
    """Rings of a GeoJSON polygon or multipolygon (outlines and holes): what the engine's post-processing costs
    grows with (a random-weight SAM's mask is speckled with thousands of holes; a real one's has a few)."""
    if geometry["type"] == "Polygon":
        return len(geometry["coordinates"])
    if geometry["type"] == "MultiPolygon":
        return sum(len(polygon) for polygon in geometry["coordinates"])
    return 0


def mask_post_figures(backend: Any, scene: Path, window: tuple[np.ndarray, list[float]], device: str) -> dict:
    """The engine's post-processing (mask to map polygons in EPSG:3857) of the three boxes' masks, as the random
    weights give them and as solid ellipses in the same boxes (a real SAM's roofs have a few holes, not thousands):
    what the overhead share would be with a real checkpoint's masks."""
    from rs_assistant.core.protocol import FeatureKind, ImageRef, Task
    from rs_assistant.engine.backends.base import BackendCall, Detection
    from rs_assistant.engine.geo import detections_to_features
    from rs_assistant.engine.imagery import read_image

    pixels, extent = window
    read = read_image(ImageRef(extent=tuple(extent), crs=CRS, source=str(scene)), WINDOW)
    prompt = "roof " + " ".join(str(list(b)) for b in BOXES)
    speckled = backend.run(BackendCall(task=Task.SEGMENT, images=[pixels], prompt=prompt)).detections
    rows, cols = np.mgrid[:WINDOW, :WINDOW]
    solid = []
    for x0, y0, x1, y1 in BOXES:
        inside = ((cols - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2 + ((rows - (y0 + y1) / 2) / ((y1 - y0) / 2)) ** 2 < 1
        solid.append(Detection(FeatureKind.MASK, "roof", 0.9, box=(x0, y0, x1, y1), mask=inside, one_object=True))
    figures = {}
    for label, detections in (("speckled", speckled), ("solid", solid)):
        figures[f"{label}_s"] = statistics.median(
            timed(lambda d=detections: detections_to_features(d, read, "EPSG:3857"), "cpu") for _ in range(3)
        )
    return figures


def sam_cache_figures(backend: Any, windows: list, device: str) -> dict[str, float]:
    """Three prompts on one window (a turn's box, the grounding model's boxes, a redraw): the image embedding
    computed for each (the card's way, and the engine's before issue 25) or once and reused."""
    from rs_assistant.core.protocol import Task
    from rs_assistant.engine.backends.base import BackendCall

    prompts = [f"roof {list(BOXES[0])}", " ".join(str(list(b)) for b in BOXES[1:]), f"{list(BOXES[2])}"]
    figures = {}
    size = backend.embedding_cache_size
    for label, cache in (("before", 0), ("after", size)):
        backend.embedding_cache_size = cache
        samples = []
        for pixels, _ in windows[:1]:
            backend.embeddings.clear()
            samples.append(timed(lambda p=pixels: [backend.run(BackendCall(task=Task.SEGMENT, images=[p], prompt=q))
                                                 for q in prompts], device))  # fmt: skip
        figures[f"{label}_s"] = statistics.median(samples)
    backend.embedding_cache_size = size
    figures["ratio"] = figures["before_s"] / figures["after_s"]
    return figures


def decode_figures(backend: Any, image: np.ndarray, device: str, args: argparse.Namespace) -> dict[str, Any]:
    """Batch-1 decode tokens/s (generate of N forced tokens minus generate of 1: the prefill cancels out) and the
    fraction of the bound bandwidth / weights bytes."""
    import torch

    from rs_assistant.core.protocol import Options, Task
    from rs_assistant.engine.backends.base import BackendCall

    call = BackendCall(task=Task.CAPTION, images=[image], options=Options(max_new_tokens=1))
    prepared = backend._prepare(call)
    tokens = 128 if device.startswith("cuda") else 8

    def generate(n: int) -> None:
        with torch.inference_mode():
            backend.model.generate(**prepared.inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    generate(2)
    one = statistics.median(timed(lambda: generate(1), device) for _ in range(3))
    many = statistics.median(timed(lambda: generate(tokens), device) for _ in range(3))
    per_s = (tokens - 1) / (many - one)
    weights = sum(p.numel() * p.element_size() for p in backend.model.parameters())
    out: dict[str, Any] = {"tokens_per_s": per_s, "weights_gb": weights / 1e9, "prefill_s": one}
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        gpus = data()["gpus"]
        spec = next((v for k, v in gpus.items() if k != "about" and any(m in name for m in v["match"])), None)
        if spec is not None:
            bound = spec["bandwidth_gb_s"] * 1e9 / weights
            out.update(bound_tokens_per_s=bound, fraction=per_s / bound, bandwidth_gb_s=spec["bandwidth_gb_s"])
    return out


def batch_figures(engine: Any, backend: Any, baseline: Baseline, name: str, kind: str, args: argparse.Namespace,
                  device: str) -> dict[str, Any]:  # fmt: skip
    """Tiles/s of a batch job: the engine's batch runner (its batch size, and 1), the card's naive loop."""
    import rasterio

    from rs_assistant.core.protocol import BatchRequest, Options
    from rs_assistant.engine.batch import CACHE_ENV, run_job
    from rs_assistant.engine.tiling import make_grid

    task = "retrieve" if kind == "clip" else tasks_of(kind)[0]  # a batch job searches with CLIP; it never classifies
    side = 512 + 448 * math.ceil(math.sqrt(args.tiles) - 1)
    path = raster(args.cache, side)
    options = Options(max_new_tokens=args.max_new_tokens, labels=LABELS if task == "classify" else ())
    prompt = PROMPTS[task] if task != "segment" else ""

    def job(batch_size: int) -> float:
        request = BatchRequest(task=task, sources=(str(path),), output_crs=CRS, model=name, prompt=prompt,
                               batch_size=batch_size, options=options)  # fmt: skip
        count = make_grid(request).count
        request = BatchRequest(task=task, sources=(str(path),), output_crs=CRS, model=name, prompt=prompt,
                               batch_size=batch_size, options=options,
                               skip_tiles=tuple(range(args.tiles, count)))  # fmt: skip
        if hasattr(backend, "embeddings"):  # SAM: no window's embedding from an earlier run
            backend.embeddings.clear()
        previous = os.environ.get(CACHE_ENV)
        with tempfile.TemporaryDirectory(prefix="rsa-real-size-") as empty:
            os.environ[CACHE_ENV] = empty  # a search embeds every tile, as on a layer's first search
            sync(device)
            started = time.perf_counter()
            done = 0
            for event in run_job(engine, request):
                if event["event"] == "error":
                    raise RuntimeError(f"the batch job failed: {event['error']}")
                done = event.get("tiles_done", done)
            sync(device)
            seconds = time.perf_counter() - started
        if previous is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = previous
        return done / seconds

    def naive() -> float:
        request = BatchRequest(
            task=task, sources=(str(path),), output_crs=CRS, model=name, prompt=prompt, options=options
        )
        grid = make_grid(request)
        sync(device)
        started = time.perf_counter()
        with rasterio.open(path) as src:
            whole = src.read([1, 2, 3])
        for tile_id in range(args.tiles):
            col0, row0, col1, row1 = grid.tile(tile_id).window
            baseline(task, np.ascontiguousarray(whole[:, row0:row1, col0:col1].transpose(1, 2, 0)))
        sync(device)
        return args.tiles / (time.perf_counter() - started)

    own = backend.tile_batch_size
    engine_batched = job(0)
    engine_one = job(1)
    naive_tiles = naive()
    tuning = {}
    if kind == "florence2" and not device.startswith("cuda"):  # before: the vision tower on the whole batch
        encoded = backend._encoded
        backend._encoded = lambda inputs, cancel: inputs
        try:
            tuning["florence2_vision_batched_tiles_per_s"] = job(0)
        finally:
            backend._encoded = encoded
    area = data()["area"]
    side_px = math.sqrt(area["km2"]) * 1000 / area["resolution_m"]
    tiles = math.ceil((side_px - area["overlap"]) / (area["tile"] - area["overlap"])) ** 2
    return {"task": task, "tiles": args.tiles, "batch_size": own, "engine_tiles_per_s": engine_batched,
            "engine_one_at_a_time_tiles_per_s": engine_one, "naive_tiles_per_s": naive_tiles,
            "ratio": engine_batched / naive_tiles, "batching_ratio": engine_batched / engine_one,
            "hours_per_10000_km2": tiles / engine_batched / 3600, "area_tiles": tiles, **tuning}  # fmt: skip


# --- the report ---------------------------------------------------------------------------------------------


def report(results: list[dict[str, Any]]) -> None:
    for r in results:
        if "error" in r:
            print(f"\n{r['model']}: failed: {r['error']}")
            continue
        cuda = r["device"].startswith("cuda")
        print(f"\n{r['model']}: {r['parameters'] / 1e9:.3f} B parameters, {r['device']} {r.get('gpu', '')} "
              f"{r['dtype']}, {r['torch_threads']} torch threads, loaded in {r['load_s']:.1f} s")  # fmt: skip
        print(f"  {'task':<9}{'engine p50':>11}{'p95':>8}{'card p50':>10}{'p95':>8}{'engine-card':>12}{'read+post':>10}"
              f"{'outside model':>14}   goal < {OVERHEAD_GOAL:.0%}")  # fmt: skip
        for task, t in r["tasks"].items():
            share = t.get("outside_model_share", t["read_post_p50"] / t["engine_p50"])
            verdict = "met" if share < OVERHEAD_GOAL else "NOT MET"
            print(f"  {task:<9}{t['engine_p50']:>10.2f}s{t['engine_p95']:>7.2f}s{t['baseline_p50']:>9.2f}s"
                  f"{t['baseline_p95']:>7.2f}s{t['overhead']:>12.1%}{t['read_post_p50']:>9.3f}s{share:>14.2%}   "
                  f"{verdict}")  # fmt: skip
            if t.get("rings_per_feature", 0) > 10:
                print(f"    (its masks: {t['rings_per_feature']:,.0f} rings each, outlines and holes, to trace and "
                      f"georeference: random weights' speckle; the engine's post-processing grows with them)")  # fmt: skip
        b = r["batch"]
        goal = BATCH_GOAL_GPU if cuda else (BATCH_GOAL_CPU_FLORENCE if r["model"] == "florence2-base" else None)
        verdict = "" if goal is None else f"goal >= {goal:g}x: {'met' if b['ratio'] >= goal else 'NOT MET'}"
        print(f"  batch job ({b['task']}, {b['tiles']} tiles of 512, batch size {b['batch_size']}): engine "
              f"{b['engine_tiles_per_s']:.3f} tiles/s, engine one tile per call {b['engine_one_at_a_time_tiles_per_s']:.3f},"
              f" card loop {b['naive_tiles_per_s']:.3f}; engine / card loop {b['ratio']:.2f}x {verdict}; "
              f"batching itself {b['batching_ratio']:.2f}x")  # fmt: skip
        if "florence2_vision_batched_tiles_per_s" in b:
            before = b["florence2_vision_batched_tiles_per_s"]
            print(f"  vision tower on the whole batch (before) {before:.3f} tiles/s, one window at a time (after) "
                  f"{b['engine_tiles_per_s']:.3f}: {b['engine_tiles_per_s'] / before:.2f}x")  # fmt: skip
        print(f"  10,000 km2 at 0.5 m ({b['area_tiles']:,} tiles): {b['hours_per_10000_km2']:.0f} h at the engine's "
              f"tiles/s")  # fmt: skip
        if "mask_post" in r:
            m, t = r["mask_post"], r["tasks"]["segment"]
            real = (t["outside_model_share"] * t["engine_p50"] - m["speckled_s"] + m["solid_s"]) / t["engine_p50"]
            print(f"  three masks to map polygons: {m['speckled_s']:.3f} s as the random weights speckle them, "
                  f"{m['solid_s']:.3f} s as solid shapes (a real checkpoint's): outside the model {real:.2%} with "
                  f"those")  # fmt: skip
        if "sam_cache" in r:
            s = r["sam_cache"]
            print(f"  three prompts on one window: {s['before_s']:.2f} s encoding each time (before), "
                  f"{s['after_s']:.2f} s with the embedding reused (after): {s['ratio']:.2f}x")  # fmt: skip
        if "decode" in r:
            d = r["decode"]
            line = f"  batch-1 decode: {d['tokens_per_s']:.1f} tokens/s ({d['weights_gb']:.2f} GB of weights)"
            if "fraction" in d:
                line += (f", bound {d['bound_tokens_per_s']:.0f} tokens/s at {d['bandwidth_gb_s']} GB/s: "
                         f"{d['fraction']:.0%} of it, goal >= {DECODE_GOAL:.0%}: "
                         f"{'met' if d['fraction'] >= DECODE_GOAL else 'NOT MET'}")  # fmt: skip
            print(line)
        mem = f"  peak RSS {r['peak_rss_mb']:.0f} MB"
        if "peak_cuda_mb" in r:
            mem += f", peak CUDA memory allocated {r['peak_cuda_mb']:.0f} MB"
        print(mem)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Real-size models through the engine, next to the model cards' code.")
    parser.add_argument("--quick", action="store_true", help="Florence-2-base, SAM ViT-B, CLIP ViT-B/16, small runs")
    parser.add_argument("--models", default="", help="comma-separated names from real_size_configs.json")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda")
    parser.add_argument("--cache", type=Path, default=ROOT / "out" / "real_size", help="checkpoint folders, rasters")
    parser.add_argument("--repeat", type=int, default=None, help="requests per latency figure (3 quick, 20 else)")
    parser.add_argument("--tiles", type=int, default=None, help="tiles per batch figure (4 quick, 32 else)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="per answer (48 quick, 64 else)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, default=None, help="print the figures of an earlier --json FILE")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (3 if args.quick else 20)
    args.tiles = args.tiles or (4 if args.quick else 32)
    args.max_new_tokens = args.max_new_tokens or (48 if args.quick else 64)
    if args.report:
        report(json.loads(args.report.read_text(encoding="utf-8")))
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    from rs_assistant.engine.device import choose_device

    device = choose_device(args.device)
    names = [n for n in args.models.split(",") if n] or list(
        QUICK if args.quick else (n for n in data()["models"] if device.startswith("cuda") or "qwen" not in n)
    )
    print(f"Real-size models on {device} ({os.cpu_count()} CPU cores), {args.repeat} requests of one 512 x 512 "
          f"window per task, {args.tiles} tiles per batch job, {args.max_new_tokens} new tokens at most")  # fmt: skip
    results = []
    for name in names:
        command = [sys.executable, __file__, "--child", name, "--device", args.device, "--cache", str(args.cache),
                   "--repeat", str(args.repeat), "--tiles", str(args.tiles),
                   "--max-new-tokens", str(args.max_new_tokens)] + (["--quick"] if args.quick else [])  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)  # progress on stderr, live
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        results.append(json.loads(line[7:]) if line else {"model": name, "error": f"exit {done.returncode}"})
        report(results[-1:])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
