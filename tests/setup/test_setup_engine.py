"""python -m rs_assistant.setup_engine for real: pip installs from an offline wheelhouse into tmp folders.

One completed environment (module fixture) serves the tests that only read or re-run it; the
tests that must interrupt or break a set-up make their own target folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rs_assistant.setup_engine import detect_torch_variant, is_complete, venv_python
from tests.setup.conftest import ROOT, SetupRun, hermetic_env, run_setup, setup_command
from tests.small_disk import small_disk

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, wheelhouse) -> tuple[Path, SetupRun]:
    target = tmp_path_factory.mktemp("engine") / "env"
    run = run_setup("--target", str(target), "--torch", "cpu", "--find-links", str(wheelhouse))
    print(f"fresh set-up from the wheelhouse: {run.seconds:.1f} s")
    assert run.returncode == 0, "\n".join(run.lines[-30:])
    return target, run


def engine_run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = hermetic_env()  # the plugin folder's parent on PYTHONPATH, as the plugin starts the engine
    return subprocess.run(
        [str(python), "-m", "rs_assistant.engine", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def write_scene(image: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    with rasterio.open(
        image,
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500_000, 4_650_000, 10, 10),
    ) as dst:
        dst.write(pixels)
    return image


def test_fresh_setup_from_the_wheelhouse_ends_with_the_engine_python(fresh):
    target, run = fresh
    assert run.last == f"ENGINE_PYTHON {venv_python(target)}"
    assert run.steps == [f"{k}/6" for k in range(1, 7)]
    assert len(run.pip_installs) == 2 and all("--no-index" in cmd for cmd in run.pip_installs)
    assert is_complete(target)
    assert "include-system-site-packages = false" in (target / "pyvenv.cfg").read_text()


def test_the_engine_python_answers_a_caption_request(fresh, tmp_path):
    target, _ = fresh
    image = write_scene(tmp_path / "scene.tif")
    out = engine_run(venv_python(target), "run", "--task", "caption", "--image", str(image), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    answer = json.loads(out.stdout)
    assert answer["model"] == "default" and answer["text"].strip()
    torch = subprocess.run(
        [str(venv_python(target)), "-c", "import torch, numpy; print(torch.__version__)"],
        capture_output=True,
        text=True,
        env=hermetic_env(),
    )
    assert torch.returncode == 0 and torch.stdout.startswith("2.")


def test_a_second_run_with_nothing_changed_does_not_run_pip(fresh, wheelhouse):
    target, _ = fresh
    again = run_setup("--target", str(target), "--torch", "cpu", "--find-links", str(wheelhouse))
    print(f"idempotent rerun: {again.seconds:.1f} s")
    assert again.returncode == 0 and again.last == f"ENGINE_PYTHON {venv_python(target)}"
    assert again.pip_installs == []
    assert any(line.startswith("pip install skipped") for line in again.lines)


def test_a_venv_whose_python_was_deleted_is_repaired(fresh, wheelhouse):
    target, _ = fresh
    venv_python(target).unlink()
    assert not is_complete(target)
    repaired = run_setup("--target", str(target), "--torch", "cpu", "--find-links", str(wheelhouse))
    assert repaired.returncode == 0, "\n".join(repaired.lines[-20:])
    assert any(line.startswith("repairing the environment") for line in repaired.lines)
    assert repaired.pip_installs == []  # the packages were still there: only the interpreter came back
    assert is_complete(target)
    check = subprocess.run([str(venv_python(target)), "-c", "import torch, transformers"], env=hermetic_env())
    assert check.returncode == 0


def test_a_set_up_killed_mid_install_is_not_complete_and_a_rerun_finishes_it(tmp_path, wheelhouse):
    target = tmp_path / "env"
    proc = subprocess.Popen(
        setup_command("--target", str(target), "--torch", "cpu", "--find-links", str(wheelhouse)),
        cwd=ROOT,
        env=hermetic_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("$ ") and " -m pip install " in line:  # pip is now unpacking torch
            time.sleep(2)
            break
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: the stamp must simply never have been written
    proc.wait(timeout=60)
    proc.stdout.close()
    assert any(line.startswith("STEP 4/6") for line in seen), "".join(seen)
    assert venv_python(target).is_file() and not is_complete(target)
    if sys.platform.startswith("linux"):  # pip went with it, so it cannot race the rerun
        deadline = time.monotonic() + 10
        while _processes_mentioning(target) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _processes_mentioning(target) == []

    rerun = run_setup("--target", str(target), "--torch", "cpu", "--find-links", str(wheelhouse))
    assert rerun.returncode == 0, "\n".join(rerun.lines[-20:])
    assert rerun.last == f"ENGINE_PYTHON {venv_python(target)}" and is_complete(target)


def _processes_mentioning(target: Path) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(target) in text:
            found.append(text)
    return found


@pytest.mark.skipif(detect_torch_variant() == "cuda", reason="this machine has an NVIDIA driver")
def test_asking_for_cuda_without_an_nvidia_driver_fails_before_installing_anything(tmp_path, wheelhouse):
    target = tmp_path / "env"
    run = run_setup("--target", str(target), "--torch", "cuda", "--find-links", str(wheelhouse), timeout=120)
    assert run.returncode == 1
    assert run.last.startswith("ERROR ") and "no NVIDIA driver" in run.last and "--torch cpu" in run.last
    assert run.pip_installs == [] and not target.exists()


def test_a_disk_too_small_is_named_before_anything_is_installed(tmp_path, wheelhouse):
    with small_disk(tmp_path / "disk", 64 * 1024 * 1024) as disk:
        run = run_setup("--target", str(disk / "env"), "--torch", "cpu", "--find-links", str(wheelhouse), timeout=120)
        assert run.returncode == 1 and run.pip_installs == []
        assert run.last.startswith("ERROR only 0.1 GB free on the disk of") and "choose another folder" in run.last
        assert not is_complete(disk / "env")


def test_an_unreachable_index_gives_the_no_network_error_quickly(tmp_path):
    target = tmp_path / "env"
    run = run_setup(
        "--target",
        str(target),
        "--torch",
        "cpu",
        "--index-url",
        "http://127.0.0.1:9/simple",
        "--torch-index-url",
        "",
        "--retries",
        "0",
        "--timeout",
        "5",
        timeout=300,
    )
    assert run.returncode == 1
    assert run.last.startswith("ERROR pip could not reach the package index")
    assert all(option in run.last for option in ("--proxy", "--index-url", "--find-links"))
    assert run.seconds < 120 and not is_complete(target)


def test_a_wheelhouse_without_a_needed_wheel_says_which_and_how_to_rebuild_it(tmp_path, wheelhouse):
    partial = tmp_path / "wheels"
    partial.mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        if not wheel.name.startswith("torch-"):
            os.symlink(wheel, partial / wheel.name)
    target = tmp_path / "env"
    run = run_setup("--target", str(target), "--torch", "cpu", "--find-links", str(partial), timeout=300)
    assert run.returncode == 1
    assert run.last.startswith(f"ERROR the wheelhouse {partial} has no wheel for torch")
    assert "--download-wheelhouse" in run.last and not is_complete(target)


def test_a_folder_that_is_not_an_engine_environment_is_left_alone(tmp_path, wheelhouse):
    target = tmp_path / "documents"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    run = run_setup("--target", str(target), "--torch", "cpu", "--find-links", str(wheelhouse), timeout=120)
    assert run.returncode == 1 and "not empty" in run.last and "choose an empty or new folder" in run.last
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def _older_python() -> str | None:
    pyenv = sorted(Path.home().glob(".pyenv/versions/3.[89]*/bin/python3")) + sorted(
        Path.home().glob(".pyenv/versions/3.10*/bin/python3")
    )
    for found in [shutil.which(name) for name in ("python3.10", "python3.9", "python3.8")] + [str(p) for p in pyenv]:
        if found and subprocess.run([found, "-c", "import venv"], capture_output=True).returncode == 0:
            return found
    return None


@pytest.mark.skipif(_older_python() is None, reason="no Python older than 3.11 on this machine")
def test_under_an_older_python_it_says_so_and_how_to_pass_another(tmp_path):
    """QGIS 3.22 on Windows ships Python 3.9: the module itself must run there to say what to do."""
    old = _older_python()
    run = run_setup("--target", str(tmp_path / "env"), "--torch", "cpu", python=old, timeout=120)
    assert run.returncode == 1
    assert run.last.startswith("ERROR the engine needs Python 3.11 or newer") and "--python" in run.last


def test_pip_install_of_the_engine_extra_gives_a_working_console_script(fresh, wheelhouse, tmp_path):
    """`pip install ".[engine]"` from the same wheelhouse (into the finished environment, whose packages
    already satisfy the extra, so only the project is built and installed)."""
    target, _ = fresh
    python = venv_python(target)
    env = {k: v for k, v in hermetic_env().items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            f"{ROOT}[engine]",
            "-c",
            str(ROOT / "requirements" / "constraints.txt"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    script = python.parent / ("rs-assistant-engine.exe" if sys.platform == "win32" else "rs-assistant-engine")
    helped = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=env, cwd=target)
    assert helped.returncode == 0 and "serve" in helped.stdout and "run" in helped.stdout
    # Installed, not run from the repository: the built-in model's weights came with the wheel.
    image = write_scene(tmp_path / "scene.tif")
    out = subprocess.run(
        [str(script), "run", "--task", "caption", "--image", str(image)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["text"].strip()
    where = subprocess.run(
        [str(python), "-c", "import rs_assistant; print(rs_assistant.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert str(ROOT) not in where.stdout, where.stdout
