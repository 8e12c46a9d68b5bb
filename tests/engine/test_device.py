"""What the engine runs on, and what it tells a person whose NVIDIA GPU sits unused
(rs_assistant.engine.device, GET /v1/health's device_info, `python -m rs_assistant.engine selftest`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rs_assistant.core.protocol import DeviceType
from rs_assistant.engine.__main__ import main
from rs_assistant.engine.device import SETUP_AGAIN, cpu_fallback_warning, device_info, nvidia_present

ROOT = Path(__file__).resolve().parents[2]


# --- the warning, from injected facts ---------------------------------------------------------


def test_no_warning_without_an_nvidia_gpu():
    assert cpu_fallback_warning(False, None, False, "cpu") == ""
    assert cpu_fallback_warning(False, "12.4", False, "cpu") == ""


def test_no_warning_when_the_gpu_is_in_use():
    assert cpu_fallback_warning(True, "12.4", True, "cuda") == ""
    assert cpu_fallback_warning(True, "12.4", True, "cuda:1") == ""


def test_no_warning_on_a_mac_gpu():
    assert cpu_fallback_warning(False, None, False, "mps") == ""


def test_a_cpu_build_of_torch_next_to_an_nvidia_gpu_says_to_set_up_again_with_cuda():
    warning = cpu_fallback_warning(True, None, False, "cpu")
    assert "CPU-only build" in warning and "NVIDIA GPU" in warning
    assert SETUP_AGAIN in warning
    assert "Settings > Set up the engine, torch: CUDA" in warning


def test_a_cuda_build_on_a_machine_whose_driver_is_too_old_says_to_update_the_driver():
    said = "The NVIDIA driver on your system is too old (found version 11040)."
    warning = cpu_fallback_warning(True, "12.4", False, "cpu", cuda_error=said)
    assert "CUDA 12.4" in warning  # names the CUDA version torch was built for
    assert "driver is too old" in warning and "not loaded" in warning
    assert "Update the NVIDIA driver" in warning
    assert said in warning  # CUDA's own words, for a search or a bug report
    assert "CPU-only build" not in warning


def test_a_cuda_build_whose_driver_is_not_loaded_without_cuda_words():
    warning = cpu_fallback_warning(True, "11.8", False, "cpu")
    assert "CUDA 11.8" in warning and "Update the NVIDIA driver" in warning and "CUDA said" not in warning


def test_a_usable_gpu_with_the_device_forced_to_cpu_says_to_clear_the_setting():
    warning = cpu_fallback_warning(True, "12.4", True, "cpu")
    assert "told to run on the CPU" in warning and "Device setting" in warning
    assert SETUP_AGAIN not in warning and "driver" not in warning


# --- detecting the driver without torch --------------------------------------------------------


def test_nvidia_present_reads_the_kernel_modules_version_file_on_linux(tmp_path):
    assert not nvidia_present("Linux", root=tmp_path)
    version = tmp_path / "proc" / "driver" / "nvidia" / "version"
    version.parent.mkdir(parents=True)
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14\n")
    assert nvidia_present("Linux", root=tmp_path)


def test_nvidia_is_never_present_on_macos(tmp_path):
    assert not nvidia_present("Darwin", root=tmp_path)


# --- this machine ------------------------------------------------------------------------------


def test_device_info_on_the_cpu_names_the_processor_torch_and_its_build():
    info = device_info("cpu")
    assert info.type is DeviceType.CPU and info.dtype == "float32"
    assert info.name and info.torch == torch.__version__ and info.cuda == torch.version.cuda
    assert info.memory_gb is None or info.memory_gb > 0.1
    facts = (nvidia_present(), torch.version.cuda, torch.cuda.is_available(), "cpu")
    if not facts[0]:
        assert info.warning == ""
    elif not facts[1]:
        assert info.warning == cpu_fallback_warning(*facts)


def test_health_carries_the_device_info(tmp_path):
    from rs_assistant.engine.registry import Registry
    from rs_assistant.engine.service import Engine

    health = Engine(Registry.from_file(None, device="cpu")).health()
    assert health.device.startswith("cpu") and health.device_info == device_info("cpu")


# --- the selftest verb -------------------------------------------------------------------------


def test_selftest_prints_one_json_line_with_ok_and_the_device(capsys):
    assert main(["selftest", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    answer = json.loads(lines[0])
    assert answer == {"ok": True, **device_info("cpu").to_dict()}
    assert answer["torch"] == torch.__version__


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_selftest_with_cuda_forced_on_a_machine_without_it_says_why(capsys):
    assert main(["selftest", "--device", "cuda"]) == 2
    answer = json.loads(capsys.readouterr().out)
    assert answer["ok"] is False and "cuda" in answer["error"]["message"]


def test_selftest_names_a_missing_package_in_a_real_process():
    """As the settings dialog runs it: a separate Python; here one where uvicorn cannot be imported."""
    code = (
        "import sys; sys.modules['uvicorn'] = None; from rs_assistant.engine.__main__ import main; "
        "sys.exit(main(['selftest']))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["ok"] is False and answer["error"]["code"] == "missing_package"
    assert answer["error"]["module"] == "uvicorn" and "set-up" in answer["error"]["message"]


def test_selftest_in_a_real_process_exits_0():
    done = subprocess.run(
        [sys.executable, "-m", "rs_assistant.engine", "selftest"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True
