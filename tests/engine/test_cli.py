"""The command line (python -m rs_assistant.engine): a real `serve` process, and `run`."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from affine import Affine
from shapely.geometry import box, shape

from rs_assistant.engine.__main__ import main
from rs_assistant.engine.registry import default_model_path
from rs_assistant.engine.server import load_or_create_token
from tests.engine import rasters
from tests.engine.fakes import write_models_file

ROOT = Path(__file__).resolve().parents[2]
GRID = rasters.utm_transform()
SQUARE = box(*rasters.pixel_extent(GRID, 20, 10, 36, 26))
READY = re.compile(r"^READY http://127\.0\.0\.1:(\d+)\n$")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    rasters.burn(folder / "burn.tif", SQUARE)
    rasters.burn(folder / "after.tif", SQUARE.union(box(*rasters.pixel_extent(GRID, 40, 40, 50, 50))))
    write_models_file(folder / "models.toml")
    return folder


def engine_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rs_assistant.engine", *args]


def read_line(process: subprocess.Popen, timeout: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.2):
            return process.stdout.readline()
        if process.poll() is not None:
            break
    raise AssertionError(
        f"no line within {timeout} s; stderr: {process.stderr.read() if process.poll() is not None else '(running)'}"
    )


@pytest.fixture(scope="module")
def served(data) -> Iterator[tuple[str, Path, subprocess.Popen]]:
    token_file = data / "secrets" / "engine.token"
    process = subprocess.Popen(
        engine_command(
            "serve",
            "--port",
            "0",
            "--models",
            str(data / "models.toml"),
            "--token-file",
            str(token_file),
            "--device",
            "cpu",
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = read_line(process, timeout=90)
        match = READY.match(line)
        assert match, f"unexpected first line {line!r}"
        yield f"http://127.0.0.1:{match.group(1)}", token_file, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_serve_prints_ready_on_a_free_port_and_serves(served, data):
    url, token_file, _ = served
    assert httpx.get(f"{url}/v1/health").json()["device"].startswith("cpu")
    headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
    request = {
        "task": "ground",
        "model": "echo",
        "prompt": "tank",
        "images": [
            {
                "source": str(data / "burn.tif"),
                "extent": list(rasters.pixel_extent(GRID, 0, 0, 64, 64)),
                "crs": rasters.UTM,
            }
        ],
    }
    bad = httpx.post(f"{url}/v1/analyze", headers=headers, json={**request, "model": "gpt-7"}, timeout=30)
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "unknown_model"
    assert httpx.post(f"{url}/v1/analyze", json=request, timeout=30).status_code == 401
    good = httpx.post(f"{url}/v1/analyze", headers=headers, json=request, timeout=30)
    assert good.status_code == 200, good.text
    assert shape(good.json()["features"]["features"][0]["geometry"]).symmetric_difference(SQUARE).area < 1e-6


def test_serve_creates_its_token_file_readable_by_the_user_only(served):
    _, token_file, _ = served
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert len(token_file.read_text().strip()) >= 32


def test_serve_prints_only_the_ready_line_and_stops_on_sigterm(served):
    url, _, process = served
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=15)
    assert out == ""  # nothing after READY: logs go to stderr
    assert "Finished server process" in err  # a graceful shutdown, after which uvicorn re-raises the signal
    assert process.returncode in (0, -signal.SIGTERM)


def test_an_existing_token_file_is_read_not_replaced(tmp_path):
    path = tmp_path / "token"
    path.write_text("my-own-token-of-the-team\n")
    path.chmod(0o600)
    assert load_or_create_token(path) == "my-own-token-of-the-team"
    assert path.read_text() == "my-own-token-of-the-team\n"
    fresh = load_or_create_token(tmp_path / "new" / "token")
    assert fresh and load_or_create_token(tmp_path / "new" / "token") == fresh


def test_serve_refuses_a_token_short_enough_to_guess(tmp_path):
    token = tmp_path / "token"
    token.write_text("hunter2\n")
    token.chmod(0o600)
    models = write_models_file(tmp_path / "models.toml")
    result = subprocess.run(
        engine_command("serve", "--models", str(models), "--token-file", str(token)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "has 7 characters; use at least 16" in result.stderr
    assert "READY" not in result.stdout and token.read_text() == "hunter2\n"  # the user's file is left as it was


def test_serve_refuses_a_bad_models_file(tmp_path):
    models = tmp_path / "models.toml"
    models.write_text("[models.x]\nbackend = 'llava'\n")
    result = subprocess.run(
        engine_command("serve", "--models", str(models), "--token-file", str(tmp_path / "t")),
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == ""
    assert str(models) in result.stderr and "backend = 'llava' is unknown" in result.stderr


def test_run_prints_the_analyze_response(data):
    result = subprocess.run(
        engine_command("run", "--task", "ground", "--image", str(data / "burn.tif"), "--prompt", "tank", *echo(data)),
        cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["crs"] == rasters.UTM and answer["model"] == "echo"
    (feature,) = answer["features"]["features"]
    assert feature["properties"]["label"] == "tank"
    assert shape(feature["geometry"]).symmetric_difference(SQUARE).area < 1e-6


def echo(data: Path) -> tuple[str, ...]:
    return ("--model", "echo", "--models", str(data / "models.toml"))


def run_main(capsys, *args: str) -> tuple[int, dict]:
    """``main(["run", *args])`` in this process: (exit code, the JSON it printed)."""
    code = main(["run", *args])
    return code, json.loads(capsys.readouterr().out)


def test_run_with_extent_and_crs(capsys, data):
    extent = rasters.pixel_extent(GRID, 0, 0, 32, 16)
    region = ("--extent", ",".join(map(str, extent)), "--crs", rasters.UTM)
    code, answer = run_main(capsys, "--task", "caption", "--image", str(data / "burn.tif"), *region, *echo(data))
    assert code == 0 and answer["text"].startswith("32x16 image")


def test_run_with_only_a_crs_uses_the_rasters_bounds_in_it(capsys, data):
    code, answer = run_main(
        capsys, "--task", "ground", "--image", str(data / "burn.tif"), "--crs", rasters.MERCATOR, *echo(data)
    )
    assert code == 0 and answer["crs"] == rasters.MERCATOR
    assert len(answer["features"]["features"]) == 1


def test_run_change_takes_two_images(capsys, data):
    images = ("--image", str(data / "burn.tif"), "--image", str(data / "after.tif"))
    code, answer = run_main(capsys, "--task", "change", *images, *echo(data))
    assert code == 0 and answer["text"] == "100 changed pixel(s)"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("--task", "caption", "--image", "{d}/missing.tif"), "source_not_found"),
        (("--task", "dance", "--image", "{d}/burn.tif"), "unknown_task"),
        (
            ("--task", "caption", "--image", "{d}/burn.tif", "--model", "gpt-7", "--models", "{d}/models.toml"),
            "unknown_model",
        ),
        (("--task", "change", "--image", "{d}/burn.tif"), "bad_image_count"),
        (("--task", "caption", "--image", "{d}/burn.tif", "--extent", "1,2,3"), "bad_extent"),
        (("--task", "caption", "--image", "{d}/burn.tif", "--extent", "0,0,10,10"), "extent_outside"),
        (("--task", "caption", "--image", "{d}/burn.tif", "--crs", "EPSG:999999"), "bad_crs"),
        (("--task", "caption", "--image", "{d}/models.toml"), "unreadable_source"),
    ],
)
def test_run_exits_2_with_the_error_json_on_bad_input(capsys, data, args, code):
    args = tuple(a.format(d=data) for a in args)
    exit_code, answer = run_main(capsys, *args, *(() if "--model" in args else echo(data)))
    assert exit_code == 2
    assert answer["error"]["code"] == code and answer["error"]["message"]


def test_run_exits_2_on_a_bad_models_file(capsys, tmp_path, data):
    models = tmp_path / "bad.toml"
    models.write_text("[models.x\n")
    exit_code, answer = run_main(
        capsys, "--task", "caption", "--image", str(data / "burn.tif"), "--models", str(models)
    )
    assert exit_code == 2 and str(models) in answer["error"]["message"]


def test_run_without_a_models_file_uses_the_built_in_model(capsys, data):
    exit_code, answer = run_main(capsys, "--task", "caption", "--image", str(data / "burn.tif"))
    if default_model_path().is_dir():  # shipped: it answers
        assert exit_code == 0 and answer["model"] == "default" and answer["text"].strip()
        return
    assert exit_code == 1 and answer["error"]["code"] in ("model_load_failed", "not_implemented")
    assert "rsa-default" in answer["error"]["message"]


def test_the_module_docstring_starts_with_the_commands():
    import rs_assistant.engine.__main__ as cli

    assert cli.__doc__.startswith("python -m rs_assistant.engine serve [--host 127.0.0.1] [--port 0]")
    assert "\npython -m rs_assistant.engine run --task TASK --image PATH" in cli.__doc__
    assert os.path.basename(cli.__file__) == "__main__.py"


# --- negative coordinates, where the engine may read (issue 23) ---------------------------------

FLORIDA = Affine(0.0001, 0, -81.995, 0, -0.0001, 29.705)  # 64 x 64 pixels west of Greenwich, north of the equator


@pytest.fixture(scope="module")
def west(data) -> Path:
    return rasters.burn(
        data / "florida.tif",
        box(-81.993, 29.7, -81.991, 29.702),
        crs="EPSG:4326",
        transform=FLORIDA,
    )


@pytest.mark.parametrize("form", ["separate", "equals"])
def test_run_takes_a_negative_extent_as_written(capsys, data, west, form):
    extent = "-81.9946,29.6987,-81.9888,29.7049"
    region = ("--extent", extent) if form == "separate" else (f"--extent={extent}",)
    code, answer = run_main(
        capsys, "--task", "ground", "--image", str(west), *region, "--crs", "EPSG:4326", *echo(data)
    )
    assert code == 0, answer
    (feature,) = answer["features"]["features"]
    x0, y0, x1, y1 = shape(feature["geometry"]).bounds
    assert x0 == pytest.approx(-81.993, abs=2e-4) and x1 == pytest.approx(-81.991, abs=2e-4)
    assert y0 == pytest.approx(29.7, abs=2e-4) and y1 == pytest.approx(29.702, abs=2e-4)


def test_batch_takes_a_negative_extent_and_says_what_is_wrong_with_a_negative_overlap(capsys, data, west):
    args = ["batch", "--task", "caption", "--image", str(west), "--crs", "EPSG:4326", *echo(data)]
    assert main([*args, "--extent", "-81.995,29.6986,-81.9886,29.705", "--tile-size", "32", "--overlap", "8"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[0]["tiles"] == 9 and events[-1]["event"] == "done"
    assert main([*args, "--overlap", "-8"]) == 2
    assert "overlap must be between 0" in capsys.readouterr().out  # not argparse's "expected one argument"


def test_serve_takes_data_roots_and_allow_remote(tmp_path, data):
    root = tmp_path / "root"
    root.mkdir()
    rasters.burn(root / "burn.tif", SQUARE)
    served = tmp_path / "served"
    served.mkdir()
    (served / "remote.tif").write_bytes((root / "burn.tif").read_bytes())
    host = subprocess.Popen(
        [sys.executable, "-m", "tests.engine.range_server", str(served)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    token_file = tmp_path / "token"
    command = ["serve", "--port", "0", "--models", str(data / "models.toml"), "--token-file", str(token_file),
               "--device", "cpu", "--data-root", str(root), "--allow-remote"]  # fmt: skip
    process = subprocess.Popen(
        engine_command(*command), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        remote = f"http://127.0.0.1:{int(host.stdout.readline())}/remote.tif"
        match = READY.match(read_line(process, timeout=90))
        assert match
        url = f"http://127.0.0.1:{match.group(1)}"
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}

        def ask(source: str) -> httpx.Response:
            image = {"source": source, "extent": list(rasters.pixel_extent(GRID, 0, 0, 64, 64)), "crs": rasters.UTM}
            body = {"task": "caption", "model": "echo", "images": [image], "output_crs": rasters.UTM}
            return httpx.post(f"{url}/v1/analyze", headers=headers, json=body, timeout=60)

        assert ask(str(root / "burn.tif")).status_code == 200
        assert ask(remote).status_code == 200
        outside, missing = ask(str(data / "burn.tif")), ask(str(root / "missing.tif"))
        assert outside.status_code == missing.status_code == 404
        assert outside.json()["error"]["message"].replace(repr(str(data / "burn.tif")), "S") == missing.json()["error"][
            "message"
        ].replace(repr(str(root / "missing.tif")), "S")
        refused = ask(f"GTIFF_DIR:1:{data / 'burn.tif'}")  # a driver prefix could reach files outside the root
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "remote_source_refused"
    finally:
        for child in (process, host):
            child.kill()
            child.wait()
