"""Where the engine may read (rs_assistant.engine.sources; docs/architecture.md, "Where the engine may read").

- Remote and virtual sources (URLs of any scheme, /vsi... paths, driver prefixes) are refused with
  remote_source_refused before GDAL sees them: a socket listening where they point records no connection.
- With --allow-remote a GeoTIFF served over HTTP (by another process) is read, and a remote failure
  does not echo the server's words.
- With --data-root, a file outside the roots (however it is named: plainly, through "..", through a
  symbolic link) gets exactly the answer a missing file gets.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from shapely.geometry import box

from rs_assistant.core.protocol import ErrorCode, ProtocolError
from rs_assistant.engine.__main__ import main
from rs_assistant.engine.registry import Registry
from rs_assistant.engine.server import create_app
from rs_assistant.engine.service import Engine
from rs_assistant.engine.sources import SourcePolicy, is_network, is_remote
from tests.engine import rasters
from tests.engine.fakes import serving, write_models_file

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "sources-token"
GRID = rasters.utm_transform()
FULL = rasters.pixel_extent(GRID, 0, 0, 64, 64)
SQUARE = box(*rasters.pixel_extent(GRID, 20, 10, 36, 26))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    root, outside = folder / "root", folder / "outside"
    root.mkdir()
    outside.mkdir()
    rasters.burn(root / "burn.tif", SQUARE)
    rasters.not_a_raster(root / "text.tif")
    rasters.burn(outside / "burn.tif", SQUARE)
    (outside / "bashrc").write_text("export SECRET=1\n")  # readable, not a raster, outside the root
    (root / "escape.tif").symlink_to(outside / "burn.tif")
    (root / "escape-folder").symlink_to(outside, target_is_directory=True)
    (root / "inside-link.tif").symlink_to(root / "burn.tif")
    write_models_file(folder / "models.toml")
    return folder


@contextlib.contextmanager
def engine_client(data: Path, policy: SourcePolicy) -> Iterator[httpx.Client]:
    engine = Engine(Registry.from_file(data / "models.toml"), sources=policy)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serving(create_app(engine, TOKEN)) as url, httpx.Client(base_url=url, headers=auth, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def local_only(data) -> Iterator[httpx.Client]:
    with engine_client(data, SourcePolicy()) as client:
        yield client


@pytest.fixture(scope="module")
def rooted(data) -> Iterator[httpx.Client]:
    with engine_client(data, SourcePolicy.of([data / "root"])) as client:
        yield client


@pytest.fixture(scope="module")
def remote(data) -> Iterator[httpx.Client]:
    with engine_client(data, SourcePolicy.of([], allow_remote=True)) as client:
        yield client


class Listener:
    """A socket listening on 127.0.0.1 that counts the connections made to it (the kernel completes them)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


@pytest.fixture()
def listener(monkeypatch) -> Iterator[Listener]:
    # Should a read reach GDAL after all, it gives up quickly instead of waiting for the silent listener.
    for name, value in (("GDAL_HTTP_TIMEOUT", "3"), ("GDAL_HTTP_CONNECTTIMEOUT", "3"), ("GDAL_HTTP_MAX_RETRY", "0")):
        monkeypatch.setenv(name, value)
    server = Listener()
    try:
        yield server
    finally:
        server.sock.close()


def caption(source: str, extent: tuple[float, ...] = FULL) -> dict[str, Any]:
    return {
        "task": "caption",
        "model": "echo",
        "images": [{"source": source, "extent": list(extent), "crs": rasters.UTM}],
        "output_crs": rasters.UTM,
    }


def batch_job(source: str) -> dict[str, Any]:
    return {
        "task": "caption",
        "model": "echo",
        "sources": [source],
        "output_crs": rasters.UTM,
        "tile_size": 64,
        "overlap": 8,
    }


REMOTE_FORMS = [
    "http://127.0.0.1:{port}/x.tif",
    "https://127.0.0.1:{port}/x.tif",
    "/vsicurl/http://127.0.0.1:{port}/x.tif",
    "/vsicurl?url=http://127.0.0.1:{port}/x.tif",
    "/vsicurl_streaming/http://127.0.0.1:{port}/x.tif",
    "ftp://127.0.0.1:{port}/x.tif",
    "zip+http://127.0.0.1:{port}/a.zip!/x.tif",
    "/vsizip//vsicurl/http://127.0.0.1:{port}/a.zip/x.tif",
    "WMS:http://127.0.0.1:{port}/wms",
    "GTIFF_DIR:1:{root}/burn.tif",
    "NETCDF:{root}/burn.tif:band",
    "HDF5:{root}/burn.tif://band",
    "/vsisubfile/0_100,{root}/burn.tif",
    "/vsimem/x.tif",
    "vrt://{root}/burn.tif?bands=1",
    "  /vsicurl/http://127.0.0.1:{port}/x.tif",
]


@pytest.mark.parametrize("form", REMOTE_FORMS)
def test_remote_and_virtual_sources_are_refused_before_any_connection(local_only, data, listener, form):
    source = form.format(port=listener.port, root=data / "root")
    answer = local_only.post("/v1/analyze", json=caption(source))
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert error["code"] == "remote_source_refused"
    assert "--allow-remote" in error["message"] and "connect" not in error["message"].lower()
    job = local_only.post("/v1/batch", json=batch_job(source))
    assert job.status_code == 403 and job.json()["error"]["code"] == "remote_source_refused"
    assert listener.connections() == 0
    assert local_only.post("/v1/analyze", json=caption(str(data / "root" / "burn.tif"))).status_code == 200


def test_the_command_line_refuses_a_remote_source_without_connecting(capsys, data, listener):
    source = f"http://127.0.0.1:{listener.port}/x.tif"
    models = ("--model", "echo", "--models", str(data / "models.toml"))
    for region in ((), ("--extent", ",".join(map(str, FULL)), "--crs", rasters.UTM)):
        code = main(["run", "--task", "caption", "--image", source, *region, *models])
        error = ProtocolError.from_dict(__import__("json").loads(capsys.readouterr().out))
        assert code == 2 and error.code is ErrorCode.REMOTE_SOURCE_REFUSED
    code = main(["batch", "--task", "caption", "--image", source, "--crs", rasters.UTM, *models])
    assert code == 2 and "remote_source_refused" in capsys.readouterr().out
    assert listener.connections() == 0


@pytest.fixture(scope="module")
def http_host(data) -> Iterator[tuple[str, Path]]:
    """A range-serving HTTP server in its own process over a folder holding burn.tif: (base URL, folder)."""
    folder = data / "served"
    folder.mkdir()
    (folder / "burn.tif").write_bytes((data / "root" / "burn.tif").read_bytes())
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.engine.range_server", str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}", folder
    finally:
        process.kill()
        process.wait()


def test_with_allow_remote_a_remote_geotiff_is_read_as_the_local_one_is(remote, local_only, data, http_host):
    url, folder = http_host
    local = local_only.post("/v1/analyze", json=caption(str(data / "root" / "burn.tif")))
    assert local.status_code == 200
    for source in (f"{url}/burn.tif", f"/vsicurl/{url}/burn.tif"):
        answer = remote.post("/v1/analyze", json=caption(source))
        assert answer.status_code == 200, answer.text
        assert answer.json()["text"] == local.json()["text"]
    assert "GET /burn.tif" in (folder / "requests.log").read_text()
    job = remote.post("/v1/batch", json=batch_job(f"{url}/burn.tif"))
    assert job.status_code == 200 and '"event": "done"' in job.text


def test_a_remote_failure_does_not_echo_the_servers_words(remote, http_host, listener):
    url, _ = http_host
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    answers = {
        source: remote.post("/v1/analyze", json=caption(source))
        for source in (f"{url}/missing.tif", f"http://127.0.0.1:{port}/x.tif")
    }
    shapes = set()
    for source, answer in answers.items():
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["code"] == "unreadable_source"
        message = error["message"]
        assert "connect" not in message.lower() and "404" not in message and "HTTP" not in message
        shapes.add(message.replace(repr(source), "SOURCE"))
    assert len(shapes) == 1  # a missing file and a closed port read alike: no port scanner


def outside_forms(data: Path) -> list[str]:
    root, outside = data / "root", data / "outside"
    return [
        str(outside / "burn.tif"),  # a raster outside the root
        str(outside / "bashrc"),  # a readable file that is not a raster
        str(outside),  # a folder
        str(outside / "missing.tif"),
        f"{root}/../outside/burn.tif",  # ".." out of the root
        str(root / "escape.tif"),  # a symbolic link in the root to a file outside it
        str(root / "escape-folder" / "burn.tif"),  # through a linked folder
        "/etc/hostname",
    ]


def test_outside_the_data_roots_reads_exactly_as_a_missing_file(rooted, data):
    missing = str(data / "root" / "missing.tif")
    expected = rooted.post("/v1/analyze", json=caption(missing))
    assert expected.status_code == 404 and expected.json()["error"]["code"] == "source_not_found"
    shape = expected.json()["error"]["message"].replace(repr(missing), "SOURCE")
    for source in outside_forms(data):
        answer = rooted.post("/v1/analyze", json=caption(source))
        assert answer.status_code == expected.status_code, (source, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "source_not_found", source
        assert error["message"].replace(repr(source), "SOURCE") == shape, source
        job = rooted.post("/v1/batch", json=batch_job(source))
        assert job.status_code == 404 and job.json()["error"]["message"].replace(repr(source), "SOURCE") == shape


def test_inside_the_data_roots_rasters_are_read_and_problems_named(rooted, data):
    for name in ("burn.tif", "inside-link.tif"):
        answer = rooted.post("/v1/analyze", json=caption(str(data / "root" / name)))
        assert answer.status_code == 200, answer.text
    answer = rooted.post("/v1/analyze", json=caption(f"{data}/outside/../root/burn.tif"))
    assert answer.status_code == 200
    text = rooted.post("/v1/analyze", json=caption(str(data / "root" / "text.tif")))
    assert text.status_code == 422 and text.json()["error"]["code"] == "unreadable_source"
    assert rooted.post("/v1/batch", json=batch_job(str(data / "root" / "burn.tif"))).status_code == 200


def test_with_data_roots_allow_remote_still_refuses_virtual_paths_to_local_files(data, http_host):
    url, _ = http_host
    policy = SourcePolicy.of([data / "root"], allow_remote=True)
    assert policy.check(f"{url}/burn.tif") == f"{url}/burn.tif"
    for source in (
        f"GTIFF_DIR:1:{data}/outside/burn.tif",
        f"/vsisubfile/0_100,{data}/outside/burn.tif",
        f"/vsizip/{data}/outside/a.zip/x.tif",
        "/vsicurl/file:///etc/hostname",
        "zip+file:///etc/a.zip!/x.tif",
    ):
        with pytest.raises(ProtocolError) as caught:
            policy.check(source)
        assert caught.value.code is ErrorCode.REMOTE_SOURCE_REFUSED, source


def test_a_data_root_must_be_a_folder(tmp_path, capsys, data):
    with pytest.raises(ProtocolError) as caught:
        SourcePolicy.of([tmp_path / "nowhere"])
    assert caught.value.code is ErrorCode.BAD_REQUEST and "nowhere" in caught.value.message
    code = main(["run", "--task", "caption", "--image", str(data / "root" / "burn.tif"),
                 "--data-root", str(tmp_path / "nowhere")])  # fmt: skip
    assert code == 2 and "is not a folder" in capsys.readouterr().out


def test_the_command_line_applies_the_data_roots(capsys, data):
    models = ("--model", "echo", "--models", str(data / "models.toml"), "--data-root", str(data / "root"))
    assert main(["run", "--task", "caption", "--image", str(data / "root" / "burn.tif"), *models]) == 0
    capsys.readouterr()
    for verb in ("run", "batch"):
        outputs = []
        for source in (str(data / "outside" / "burn.tif"), str(data / "root" / "missing.tif")):
            assert main([verb, "--task", "caption", "--image", source, *models]) == 2
            outputs.append(capsys.readouterr().out.replace(repr(source), "SOURCE"))
        assert outputs[0] == outputs[1] and "source_not_found" in outputs[0], verb


@pytest.mark.parametrize(
    ("source", "remote", "network"),
    [
        ("/data/a.tif", False, False),
        ("relative/a.tif", False, False),
        ("C:/data/a.tif", False, False),
        ("https://host/a.tif", True, True),
        ("s3://bucket/a.tif", True, True),
        ("/vsis3/bucket/a.tif", True, True),
        ("/vsicurl/https://host/a.tif", True, True),
        ("/vsicurl/file:///etc/passwd", True, False),
        ("/vsizip/{/vsicurl/https://host/a.zip}/a.tif", True, True),
        ("/vsizip//data/a.zip/a.tif", True, False),
        ("file:///data/a.tif", True, False),
        ("GTIFF_DIR:1:/data/a.tif", True, False),
        ("PG:dbname=x", True, False),
    ],
)
def test_what_counts_as_remote_and_as_network(source, remote, network):
    assert is_remote(source) is remote
    assert is_network(source) is network
