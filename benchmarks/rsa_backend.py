""".venv/bin/python benchmarks/rsa_backend.py [cpu|cuda]

The shipped model through the rsa backend, without the engine's reads: its change answers on 8
synthetic pairs (4 changed; the verdict, the caption and the change masks), then p50 of 10 calls
per task on one 512 x 512 synthetic scene. Prints only; the same on CPU and CUDA (bf16 there).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from any folder

from rs_assistant.core.protocol import Options, Task  # noqa: E402
from rs_assistant.engine.backends.base import BackendCall  # noqa: E402
from rs_assistant.engine.backends.rsa import RSABackend  # noqa: E402
from training.data.synthetic import generate_pair, generate_scene  # noqa: E402

device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
backend = RSABackend(
    "default", {"path": str(Path(__file__).resolve().parents[1] / "resources/models/rsa-default")}, device
)
backend.ensure_loaded()
print("device", device, backend.model.dtype, torch.cuda.get_device_name() if device == "cuda" else "")
for seed in range(900000, 900008):
    pair = generate_pair(seed, size=512, changed=seed % 2 == 1)
    call = BackendCall(
        task=Task.CHANGE, images=[pair.before.image, pair.after.image], prompt="", options=Options(max_new_tokens=40)
    )
    result = backend.run(call)
    print(
        f"pair {seed} truth={'changed' if pair.changed else 'unchanged'}: {result.text!r} "
        f"masks={len(result.detections)}"
    )
scene = generate_scene(900100, size=512)


def p50(task: Task, prompt: str) -> tuple[float, str]:
    """The median of 10 calls (after one warm-up) in ms, and the last answer's text."""
    call = BackendCall(task=task, images=[scene.image], prompt=prompt, options=Options(max_new_tokens=40))
    backend.run(call)
    times = []
    for _ in range(10):
        started = time.perf_counter()
        result = backend.run(call)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result.text


for task, prompt in (
    (Task.CAPTION, ""),
    (Task.GROUND, "find the buildings"),
    (Task.SEGMENT, "segment the water bodies"),
    (Task.CHAT, "how many buildings are there?"),
):
    median, text = p50(task, prompt)
    print(f"{task.value:<8} p50 {median:7.1f} ms  {text[:70]!r}")
refiner = backend.model.class_refiner
if refiner is not None:  # what the class refiner costs a class-name mask, side by side
    with_refiner, _ = p50(Task.SEGMENT, "segment the trees")
    backend.model.class_refiner = None
    without, _ = p50(Task.SEGMENT, "segment the trees")
    backend.model.class_refiner = refiner
    print(
        f"segment trees p50 {with_refiner:7.1f} ms with the class refiner, {without:7.1f} ms without "
        f"({with_refiner / without:.2f}x)"
    )
