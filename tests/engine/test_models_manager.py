"""The model manager end to end: `python -m rs_assistant.engine models ...` against a stand-in Hub.

Every command runs as a person would run it (a subprocess of the engine's CLI) with HF_ENDPOINT
pointing at tests/engine/hub_stub.py on 127.0.0.1 and HF_HOME / the models file in a tmp folder.
The stub serves a tiny random-weight SAM checkpoint (tests/engine/tiny_models/sam.py) as the
catalogue's ``sam-vit-base`` repository, so a pulled model really answers through ``run``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rs_assistant.core.catalog import catalog_entry
from tests.engine import rasters
from tests.engine.hub_stub import HubStub
from tests.small_disk import small_disk

ROOT = Path(__file__).resolve().parents[2]
SAM = catalog_entry("sam-vit-base")
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def hub(tiny_sam_path: Path):
    stub = HubStub()
    stub.add_repo(SAM.repo_id, tiny_sam_path)
    stub.start()
    yield stub
    stub.stop()


@pytest.fixture
def machine(tmp_path: Path, hub: HubStub):
    """One computer: its own HF cache, config folder and models file, talking to the stub."""
    hub.reset_counters()
    hub.corrupt.clear()
    hub.drop_after.clear()
    for repo in hub.repos.values():
        repo.gated = False
    return Machine(tmp_path / "pc", hub.url)


class Machine:
    def __init__(self, home: Path, endpoint: str):
        self.home = home
        home.mkdir(parents=True)
        self.models = home / "config" / "rs_assistant" / "models.toml"
        self.env = {
            **os.environ,
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(home / "hf"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "HF_HUB_DISABLE_XET": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "PYTHONPATH": str(ROOT),
        }
        self.env.pop("HF_TOKEN", None)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "rs_assistant.engine", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def models_cmd(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("models", *args, "--models", str(self.models), **kw)

    def listing(self) -> dict:
        out = self.models_cmd("list", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout)

    def row(self, name: str) -> dict:
        return next(r for r in self.listing()["models"] if r["name"] == name)


def last_line(out: subprocess.CompletedProcess) -> str:
    return out.stdout.strip().splitlines()[-1]


def segment(machine: Machine, tmp_path: Path, model: str) -> dict:
    image = rasters.rgb_uint8(tmp_path / "scene.tif", width=64, height=48)
    out = machine.run(
        "run",
        "--models",
        str(machine.models),
        "--model",
        model,
        "--task",
        "segment",
        "--image",
        str(image),
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout)


def test_pull_downloads_checks_registers_and_the_engine_answers_with_it(machine, hub, tmp_path, tiny_sam_path):
    assert machine.row("sam-vit-base")["on_disk"] is False

    out = machine.models_cmd("pull", "sam-vit-base")

    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    progress = [line.split(" ", 3) for line in lines if line.startswith("PROGRESS ")]
    total = sum(p.stat().st_size for p in tiny_sam_path.iterdir())
    assert progress and all(int(p[2]) == total for p in progress)
    assert int(progress[-1][1]) == total  # the bar ends full
    tag, name, folder = lines[-1].split(" ", 2)
    assert (tag, name) == ("PULLED", "sam-vit-base")
    assert (Path(folder) / WEIGHTS).read_bytes() == (tiny_sam_path / WEIGHTS).read_bytes()
    assert Path(folder).is_relative_to(machine.home / "hf" / "hub")  # the standard HF cache, found by other tools
    row = machine.row("sam-vit-base")
    assert row["on_disk"] and row["registered"] and row["path"] == folder

    response = segment(machine, tmp_path, "sam-vit-base")
    assert response["model"] == "sam-vit-base"
    assert response["text"].startswith("1 mask(s)")  # the tiny random SAM ran (its score may fall under the threshold)


def test_an_interrupted_download_resumes_without_fetching_the_same_bytes_again(machine, hub, tiny_sam_path):
    size = (tiny_sam_path / WEIGHTS).stat().st_size
    cut = size // 2
    hub.drop_after[WEIGHTS] = cut

    first = machine.models_cmd("pull", "sam-vit-base")

    assert first.returncode == 1
    assert last_line(first).startswith("ERROR ") and "run the same pull again to continue" in last_line(first)
    partial = list((machine.home / "hf" / "hub").rglob("*.incomplete"))
    assert len(partial) == 1
    kept = partial[0].stat().st_size
    assert 0 < kept <= cut
    assert machine.row("sam-vit-base")["on_disk"] is False  # a half download never looks complete

    hub.drop_after.clear()
    hub.reset_counters()
    second = machine.models_cmd("pull", "sam-vit-base")

    assert second.returncode == 0, second.stdout + second.stderr
    assert hub.served[WEIGHTS] == size - kept  # only the missing part crossed the network
    assert (WEIGHTS, f"bytes={kept}-") in hub.ranges
    folder = Path(last_line(second).split(" ", 2)[2])
    assert (folder / WEIGHTS).read_bytes() == (tiny_sam_path / WEIGHTS).read_bytes()


def test_a_disk_too_small_for_the_model_is_reported_before_downloading(machine, hub, tiny_sam_path):
    size = (tiny_sam_path / WEIGHTS).stat().st_size
    with small_disk(machine.home / "hf", size // 2):
        out = machine.models_cmd("pull", "sam-vit-base")
        message = last_line(out)
        assert out.returncode == 1 and message.startswith("ERROR not enough disk space for sam-vit-base")
        assert "HF_HOME" in message and hub.served.get(WEIGHTS, 0) == 0
    assert machine.row("sam-vit-base")["registered"] is False


def test_a_corrupt_file_is_detected_deleted_and_reported(machine, hub):
    hub.corrupt.add(WEIGHTS)

    out = machine.models_cmd("pull", "sam-vit-base")

    assert out.returncode == 1
    message = last_line(out)
    assert message.startswith("ERROR ") and WEIGHTS in message and "corrupt" in message and "sha256" in message
    assert not list((machine.home / "hf" / "hub").rglob("*.incomplete"))
    assert not any(p.name == WEIGHTS for p in (machine.home / "hf" / "hub").rglob("*"))
    assert machine.row("sam-vit-base")["registered"] is False


def test_a_gated_model_without_a_token_says_where_to_accept_the_licence_and_how_to_set_the_token(machine, hub):
    hub.repos[SAM.repo_id].gated = True

    out = machine.models_cmd("pull", "sam-vit-base")

    assert out.returncode == 1
    message = last_line(out)
    assert f"{hub.url}/{SAM.repo_id}" in message and "HF_TOKEN" in message and "licence" in message

    machine.env["HF_TOKEN"] = hub.token  # with the token the same pull works
    assert machine.models_cmd("pull", "sam-vit-base").returncode == 0


def test_no_network_is_reported_quickly_with_what_to_do(machine):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    machine.env["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"
    started = time.perf_counter()

    out = machine.models_cmd("pull", "sam-vit-base")

    assert time.perf_counter() - started < 20
    assert out.returncode == 1
    message = last_line(out)
    assert message.startswith("ERROR cannot reach") and "HTTPS_PROXY" in message and "models import" in message


def test_a_model_already_in_the_hf_cache_is_found_without_any_request(machine, hub):
    assert machine.models_cmd("pull", "sam-vit-base").returncode == 0
    hub.reset_counters()
    machine.env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # would fail if anything were asked

    row = machine.row("sam-vit-base")
    again = machine.models_cmd("pull", "sam-vit-base")

    assert row["on_disk"] is True
    assert again.returncode == 0 and last_line(again).startswith("PULLED sam-vit-base ")
    assert hub.requests == []


def test_export_then_import_on_a_second_machine_answers(machine, hub, tmp_path):
    assert machine.models_cmd("pull", "sam-vit-base").returncode == 0
    bundle = tmp_path / "usb" / "sam.zip"
    out = machine.models_cmd("export", "sam-vit-base", str(bundle))
    assert out.returncode == 0 and last_line(out) == f"EXPORTED sam-vit-base {bundle}"

    second = Machine(tmp_path / "second", "http://127.0.0.1:9")  # offline
    imported = second.models_cmd("import", str(bundle))

    assert imported.returncode == 0, imported.stdout + imported.stderr
    folder = second.models.parent / "models" / "sam-vit-base"
    assert last_line(imported) == f"IMPORTED sam-vit-base {folder}"
    assert 'path = "models/sam-vit-base"' in second.models.read_text()  # moves with the models file
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder left
    response = segment(second, tmp_path, "sam-vit-base")
    assert response["model"] == "sam-vit-base" and response["text"].startswith("1 mask(s)")


def test_importing_a_folder_that_is_not_a_checkpoint_names_what_is_missing(machine, tiny_sam_path, tmp_path):
    empty = tmp_path / "downloads"
    empty.mkdir()
    out = machine.models_cmd("import", str(empty))
    assert out.returncode == 2 and "no config.json" in last_line(out)

    partial = tmp_path / "sam-partial"
    shutil.copytree(tiny_sam_path, partial)
    (partial / WEIGHTS).unlink()
    out = machine.models_cmd("import", str(partial))
    assert out.returncode == 2
    assert "not a complete sam checkpoint" in last_line(out) and "weights" in last_line(out)
    assert not machine.models.exists()  # nothing registered

    out = machine.models_cmd("import", str(tiny_sam_path), "--name", "my-sam")
    assert out.returncode == 0 and machine.row("my-sam")["backend"] == "sam"


def test_a_hand_edited_models_file_with_an_error_is_named(machine):
    machine.models.parent.mkdir(parents=True)
    machine.models.write_text('[models.sam]\nbackend = "sam"\npath = "x"\n[tasks]\nground = "sam\n')
    out = machine.models_cmd("list")
    assert out.returncode == 2
    assert str(machine.models) in last_line(out) and "not valid TOML" in last_line(out)

    machine.models.write_text('[models.sam]\nbackend = "sam"\npath = "x"\n[tasks]\nsegment = "sma"\n')
    out = machine.models_cmd("use", "segment", "sam")
    assert out.returncode == 2 and "[tasks] segment = 'sma' names no model" in last_line(out)


def test_routing_via_tasks_and_model_auto(machine, tiny_sam_path, tmp_path):
    assert machine.models_cmd("import", str(tiny_sam_path), "--name", "sam").returncode == 0
    out = machine.models_cmd("use", "ground", "sam")
    assert out.returncode == 2 and "does not do ground" in last_line(out)
    out = machine.models_cmd("use", "segment", "sam")
    assert out.returncode == 0 and last_line(out) == "ROUTE segment sam"
    assert machine.listing()["tasks"] == {"segment": "sam"}

    response = segment(machine, tmp_path, "auto")

    assert response["model"] == "sam"  # the model that really answered
