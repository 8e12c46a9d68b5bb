"""python benchmarks/model_download.py [--mb 200]

Download throughput of the model manager (rs_assistant.engine.hub.pull) against the stand-in Hub
(tests/engine/hub_stub.py) on 127.0.0.1: one repository holding a config.json and one random
``model.safetensors`` of --mb megabytes, pulled into a fresh HF_HOME. Prints MB/s for the whole
pull (model info, streaming to disk, sha256 check, linking into the cache). Not a test: the figure
depends on the machine's disk and CPU; on a real network the link is the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="size of the weights file in MB (default 200)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rsa-download-bench-"))
    repo = work / "repo"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps({"model_type": "sam"}), encoding="utf-8")
    (repo / "preprocessor_config.json").write_text("{}", encoding="utf-8")
    with (repo / "model.safetensors").open("wb") as f:
        for _ in range(args.mb):
            f.write(os.urandom(1_000_000))

    from tests.engine.hub_stub import HubStub

    stub = HubStub()
    stub.add_repo("facebook/sam-vit-base", repo)
    stub.start()
    # huggingface_hub reads these when it is first imported, so set them before importing the engine's hub module.
    os.environ.update(
        {"HF_ENDPOINT": stub.url, "HF_HOME": str(work / "hf"), "HF_HUB_DISABLE_XET": "1", "NO_PROXY": "127.0.0.1"}
    )
    from rs_assistant.core.catalog import catalog_entry
    from rs_assistant.engine import hub

    started = time.perf_counter()
    folder = hub.pull(catalog_entry("sam-vit-base"))
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in folder.iterdir())
    stub.stop()
    print(
        f"pulled {size / 1e6:.0f} MB in {seconds:.2f} s: {size / 1e6 / seconds:.0f} MB/s (stand-in Hub on "
        f"127.0.0.1, sha256 checked)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
