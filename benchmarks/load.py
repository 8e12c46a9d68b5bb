""".venv/bin/python benchmarks/load.py [--url URL --token-file F] [--clients 1,10,100] [--requests 200] [--task caption]

Throughput and latency percentiles of N concurrent clients against a running engine. Without --url it starts
one itself (``python -m rs_assistant.engine serve`` with the built-in model, --max-queue above the largest
client count) on the demo's after image, and stops it at the end. Each client sends /v1/analyze requests for
a 512 x 512 window, one after the other; the script prints, for each client count, requests per second,
p50/p95/max latency, how many got 429 busy (and the Retry-After they were given) and how many failed, and
/v1/health's queue as seen half-way through.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from any folder


def percentile(ordered: Sequence[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


@contextmanager
def own_engine(max_queue: int, folder: Path) -> Iterator[tuple[str, str]]:
    """A built-in-model engine on a free port: (url, token)."""
    token_file = folder / "load.token"
    command = [sys.executable, "-m", "rs_assistant.engine", "serve", "--port", "0", "--token-file", str(token_file)]
    log = (folder / "load-engine.log").open("w", encoding="utf-8")  # the engine's log, out of the table's way
    process = subprocess.Popen(
        [*command, "--max-queue", str(max_queue)], cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        if not line.startswith("READY "):
            raise SystemExit(f"the engine did not start: {line!r}")
        yield line.split()[1], token_file.read_text(encoding="utf-8").strip()
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def demo_request(task: str) -> dict[str, Any]:
    """A 512 x 512 window of the demo's after image (made by scripts/make_demo_data.py when missing)."""
    after = ROOT / "resources" / "demo" / "after.tif"
    if not after.exists():
        subprocess.run([sys.executable, "scripts/make_demo_data.py"], cwd=ROOT, check=True)
    import rasterio

    with rasterio.open(after) as src:
        left, top = src.bounds.left, src.bounds.top
        size = 512 * src.res[0]
        crs = src.crs.to_string()
    extent = [left, top - size, left + size, top]
    prompt = {"caption": "", "ground": "buildings", "chat": "what is in this image?"}.get(task, "")
    return {
        "task": task,
        "prompt": prompt,
        "images": [{"source": str(after), "extent": extent, "crs": crs}],
        "output_crs": crs,
    }


def run_clients(url: str, token: str, body: dict[str, Any], clients: int, requests: int) -> dict[str, Any]:
    """``requests`` requests shared by ``clients`` threads, each sending one after the other."""
    latencies: list[float] = []
    busy: list[int] = []
    failed: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    headers = {"Authorization": f"Bearer {token}"}
    queue_seen: dict[str, Any] = {}

    def client() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=600) as http:
            for _ in counter:
                started = time.perf_counter()
                response = http.post("/v1/analyze", json=body)
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    elif response.status_code == 429:
                        busy.append(int(response.headers.get("retry-after", "0")))
                    else:
                        failed.append(f"{response.status_code} {response.text[:120]}")

    def watch() -> None:
        while len(latencies) + len(busy) + len(failed) < requests // 2:
            time.sleep(0.05)
        queue_seen.update(httpx.get(f"{url}/v1/health", timeout=30).json().get("queue", {}))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    watcher = threading.Thread(target=watch, daemon=True)
    started = time.perf_counter()
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": requests,
        "ok": len(ordered),
        "per_s": len(ordered) / wall if wall else 0.0,
        "p50_s": statistics.median(ordered) if ordered else float("nan"),
        "p95_s": percentile(ordered, 0.95) if ordered else float("nan"),
        "max_s": ordered[-1] if ordered else float("nan"),
        "busy": len(busy),
        "retry_after_s": sorted(set(busy)),
        "failed": failed[:3],
        "queue_half_way": {"waiting": queue_seen.get("waiting"), "busy": len(queue_seen.get("busy", []))},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[2] if __doc__ else None)
    parser.add_argument("--url", help="a running engine (default: start one with the built-in model)")
    parser.add_argument("--token-file", type=Path, help="its bearer token file")
    parser.add_argument("--clients", default="1,10,100", help="client counts, comma-separated (default 1,10,100)")
    parser.add_argument("--requests", type=int, default=200, help="requests per client count (default 200)")
    parser.add_argument("--task", default="caption", choices=("caption", "ground", "chat"))
    parser.add_argument("--max-queue", type=int, default=None, help="for the engine this script starts")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    body = demo_request(args.task)

    def measure(url: str, token: str) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600) as http:
            http.post("/v1/analyze", json=body).raise_for_status()  # loads the model: not timed
        print(f"engine {url}, task {args.task}, {args.requests} requests per run")
        print("clients  ok/req   req/s   p50 s   p95 s   max s   429s  retry-after s  failed  queue half-way")
        for clients in counts:
            r = run_clients(url, token, body, clients, args.requests)
            print(
                f"{r['clients']:>7}  {r['ok']:>3}/{r['requests']:<4} {r['per_s']:>6.2f}  {r['p50_s']:>6.2f}  "
                f"{r['p95_s']:>6.2f}  {r['max_s']:>6.2f}  {r['busy']:>5}  {json.dumps(r['retry_after_s']):>13}  "
                f"{len(r['failed']):>6}  {json.dumps(r['queue_half_way'])}"
            )
            for failure in r["failed"]:
                print(f"         failed: {failure}")

    if args.url:
        if args.token_file is None:
            raise SystemExit("--url needs --token-file")
        measure(args.url.rstrip("/"), args.token_file.read_text(encoding="utf-8").strip())
    else:
        folder = ROOT / "out" / "bench"
        folder.mkdir(parents=True, exist_ok=True)
        with own_engine(args.max_queue or max(counts) + 1, folder) as (url, token):
            measure(url, token)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
