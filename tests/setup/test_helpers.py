"""The set-up's pure helpers (what the plugin imports), with the machine's facts injected."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path, PureWindowsPath

import pytest

from rs_assistant import setup_engine as se
from tests.setup.conftest import ROOT, hermetic_env

QGIS_WIN = r"C:\Program Files\QGIS 3.34.4"


def test_the_venv_python_is_bin_python_or_scripts_python_exe():
    assert se.venv_python(Path("/home/a/env"), system="Linux") == Path("/home/a/env/bin/python")
    assert se.venv_python(Path("/Users/a/env"), system="Darwin") == Path("/Users/a/env/bin/python")
    assert se.venv_python(Path("env"), system="Windows").parts[-2:] == ("Scripts", "python.exe")


@pytest.mark.parametrize(
    ("system", "on_path", "files", "expected"),
    [
        ("Linux", {"nvidia-smi": "/usr/bin/nvidia-smi"}, set(), "cuda"),
        ("Linux", {}, {"/proc/driver/nvidia/version"}, "cuda"),  # driver loaded, nvidia-smi not installed
        ("Linux", {}, set(), "cpu"),
        ("Windows", {}, {r"C:\Windows\System32\nvcuda.dll"}, "cuda"),
        ("Windows", {}, set(), "cpu"),
        ("Darwin", {"nvidia-smi": "/usr/local/bin/nvidia-smi"}, set(), "cpu"),  # PyPI's macOS torch: MPS
    ],
)
def test_the_torch_variant_follows_the_nvidia_driver(system, on_path, files, expected):
    variant = se.detect_torch_variant(
        system, which=on_path.get, exists=files.__contains__, environ={"SystemRoot": r"C:\Windows"}
    )
    assert variant == expected


def test_inside_qgis_on_windows_the_base_python_is_found_beside_qgis_bin():
    python = QGIS_WIN + r"\apps\Python312\python.exe"
    found = se.find_base_python(
        executable=QGIS_WIN + r"\bin\qgis-bin.exe",
        base_prefix=QGIS_WIN + r"\apps\Python312",
        system="Windows",
        version=(3, 12),
        is_file={python, QGIS_WIN + r"\bin\qgis-bin.exe"}.__contains__,
        which=lambda name: None,
    )
    assert PureWindowsPath(found) == PureWindowsPath(python)


def test_inside_the_qgis_app_on_macos_the_framework_python_is_found():
    prefix = "/Applications/QGIS.app/Contents/Frameworks/Python.framework/Versions/3.11"
    found = se.find_base_python(
        executable="/Applications/QGIS.app/Contents/MacOS/QGIS",
        base_prefix=prefix,
        system="Darwin",
        version=(3, 11),
        is_file={prefix + "/bin/python3.11"}.__contains__,
        which=lambda name: None,
    )
    assert found == prefix + "/bin/python3.11"


def test_a_real_python_executable_is_used_as_it_is_and_path_is_the_last_resort():
    assert (
        se.find_base_python(
            executable="/usr/bin/python3",
            base_prefix="/usr",
            system="Linux",
            version=(3, 11),
            is_file=lambda p: True,
            which=lambda n: None,
        )
        == "/usr/bin/python3"
    )
    on_path = {"python3": "/opt/py/bin/python3"}
    assert (
        se.find_base_python(
            executable="/opt/qgis/bin/qgis",
            base_prefix="/gone",
            system="Linux",
            version=(3, 11),
            is_file=lambda p: False,
            which=on_path.get,
        )
        == "/opt/py/bin/python3"
    )
    with pytest.raises(LookupError, match="--python"):
        se.find_base_python(
            executable="qgis-bin.exe",
            base_prefix="",
            system="Windows",
            version=(3, 9),
            is_file=lambda p: False,
            which=lambda n: None,
        )


def test_disk_needs_and_torch_indexes_per_variant():
    assert se.disk_needed_gb("cuda") > se.disk_needed_gb("cpu") >= 1.5  # the CPU environment takes 1.4 GB
    for variant in ("cpu", "cuda"):  # what stays installed is less than what must be free while installing
        assert 1.4 <= se.installed_gb(variant) < se.disk_needed_gb(variant)
    with pytest.raises(ValueError, match="cpu or cuda"):
        se.disk_needed_gb("rocm")
    assert se.torch_index_for("cpu", "Linux") == se.torch_index_for("cpu", "Windows") == se.PYPI_TORCH_CPU
    assert se.torch_index_for("cuda", "Windows") == se.PYPI_TORCH_CU126
    assert se.torch_index_for("cuda", "Linux") == "" and se.torch_index_for("cpu", "Darwin") == ""


def test_nothing_is_complete_without_a_matching_stamp(tmp_path):
    assert not se.is_complete(tmp_path / "missing")
    env = tmp_path / "env"
    se.venv_python(env).parent.mkdir(parents=True)
    se.venv_python(env).write_text("")
    (env / "pyvenv.cfg").write_text("version = 3.11.2\n")
    assert not se.is_complete(env)
    (env / se.STAMP_NAME).write_text(json.dumps({"key": "made-for-other-requirements", "variant": "cpu"}))
    assert not se.is_complete(env)
    key = se._stamp_key(se.requirement_files(), "cpu", "3.11.2")
    (env / se.STAMP_NAME).write_text(json.dumps({"key": key, "variant": "cpu"}))
    assert se.is_complete(env)


def test_pip_failures_become_one_line_that_says_what_to_do(tmp_path):
    offline = se.SetupOptions(target=tmp_path, find_links=tmp_path)
    full = se._pip_failure(
        1, ["ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device"], offline, "torch"
    )
    assert "disk is full" in str(full) and "free some space" in str(full)
    refused = se._pip_failure(
        1,
        ["WARNING: Retrying (Retry(total=0)) after connection broken by 'ProxyError('Cannot connect to proxy.')'"],
        se.SetupOptions(target=tmp_path, proxy="http://proxy:3128"),
        "torch",
        "https://pypi.org/simple/",
    )
    assert "through the proxy http://proxy:3128" in str(refused) and "--find-links" in str(refused)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "x", "--proxy", "proxy.example.org"], "is not a URL"),
        (["--target", "x", "--find-links", "/no/such/wheelhouse"], "no such folder"),
        (["--target", "x", "--retries", "-1"], "--retries"),
    ],
)
def test_a_bad_command_line_says_what_is_wrong(args, message):
    out = subprocess.run(
        [sys.executable, "-m", "rs_assistant.setup_engine", *args],
        cwd=ROOT,
        env=hermetic_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stdout.splitlines()[-1].startswith("ERROR ") and message in out.stdout.splitlines()[-1]


def test_the_set_up_module_uses_only_the_standard_library():
    tree = ast.parse(Path(se.__file__).read_text(encoding="utf-8"))
    names = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    names |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    assert names - set(sys.stdlib_module_names) - {"__future__"} == set()


def test_the_module_docstring_starts_with_the_command():
    assert se.__doc__.startswith("python -m rs_assistant.setup_engine --target DIR [--torch auto|cpu|cuda]")
