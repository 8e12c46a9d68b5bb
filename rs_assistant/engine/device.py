"""Choosing the device and dtype once for the whole engine (docs/architecture.md, "Device").

CUDA when available (bf16 where the GPU supports it, else fp16; SDPA attention), else MPS,
else CPU in fp32: bf16 matrix products on a CPU without native support run hundreds of times
slower.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import shutil
from pathlib import Path

import torch

from rs_assistant.core.protocol import DeviceInfo, DeviceType, ErrorCode, ProtocolError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "mps", "cpu")


def choose_device(requested: str = "auto") -> str:
    """Resolve ``requested`` ("auto", "cuda", "cuda:1", "mps", "cpu") to an available device."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    base = requested.split(":", 1)[0]
    if base not in DEVICES:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"unknown device {requested!r}; use one of {', '.join(DEVICES)}")
    if base == "cuda" and not torch.cuda.is_available():
        raise ProtocolError(ErrorCode.BAD_REQUEST, "device 'cuda' was forced but torch sees no CUDA GPU")
    if base == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "device 'mps' was forced but it is not available")
    return requested


def torch_dtype(device: str) -> torch.dtype:
    """The compute dtype for ``device``: bf16/fp16 on accelerators, fp32 on CPU."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.startswith("mps"):
        return torch.float16
    return torch.float32


def attn_implementation(device: str) -> str:
    """SDPA everywhere it exists; eager is the fallback transformers picks otherwise."""
    return "sdpa"


def describe(device: str) -> str:
    """A short human description for /v1/health, e.g. 'cuda (NVIDIA H100, bfloat16)'."""
    dtype = str(torch_dtype(device)).replace("torch.", "")
    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return f"{device} ({torch.cuda.get_device_name(index)}, {dtype})"
    return f"{device} ({dtype})"


# --- what the engine runs on, and why not on the GPU (GET /v1/health's device_info, `selftest`) ----

SETUP_AGAIN = "run the engine set-up again with the CUDA build (Settings > Set up the engine, torch: CUDA)"


@functools.cache
def device_info(device: str) -> DeviceInfo:
    """What ``device`` (as :func:`choose_device` resolved it) is: name, memory, dtype, torch's build,
    and a warning when an NVIDIA GPU is present but unused. Cached: the answer cannot change while
    the engine runs, and health is asked every few seconds."""
    kind = DeviceType(device.split(":", 1)[0])
    dtype = str(torch_dtype(device)).replace("torch.", "")
    torch_cuda = torch.version.cuda
    if kind is DeviceType.CUDA:
        index = torch.device(device).index or 0
        name = torch.cuda.get_device_name(index)
        memory = torch.cuda.get_device_properties(index).total_memory / 1024**3
        warning = ""
    else:
        name, memory = _machine_name(), _machine_memory_gb()
        present = nvidia_present()
        available = bool(torch_cuda) and torch.cuda.is_available()
        cuda_error = _cuda_error() if present and torch_cuda and not available else ""
        warning = cpu_fallback_warning(present, torch_cuda, available, device, cuda_error)
        if kind is DeviceType.MPS:
            name = f"Apple GPU ({name})" if name else "Apple GPU"
    if warning:
        log.warning("%s", warning)
    return DeviceInfo(
        type=kind,
        name=name,
        memory_gb=round(memory, 1) if memory is not None else None,
        dtype=dtype,
        torch=torch.__version__,
        cuda=torch_cuda,
        warning=warning,
    )


def cpu_fallback_warning(
    nvidia_present: bool, torch_cuda: str | None, cuda_available: bool, device: str, cuda_error: str = ""
) -> str:
    """What is wrong, and what to do, when the engine computes on the CPU of a machine with an NVIDIA
    GPU; "" when there is nothing to say (a GPU in use, or none to use).

    ``nvidia_present``: an NVIDIA driver is installed (:func:`nvidia_present`); ``torch_cuda``:
    ``torch.version.cuda`` (None for a CPU-only build of torch); ``cuda_available``:
    ``torch.cuda.is_available()``; ``device``: the device the engine runs on; ``cuda_error``: what
    CUDA's initialisation said, if it failed.
    """
    if not device.startswith("cpu") or not nvidia_present:
        return ""
    if not torch_cuda:
        return (
            "This computer has an NVIDIA GPU, but the engine's torch is a CPU-only build, so the engine runs "
            f"on the CPU (much slower). To use the GPU, {SETUP_AGAIN}."
        )
    if not cuda_available:
        said = f" (CUDA said: {cuda_error.strip()})" if cuda_error.strip() else ""
        return (
            f"This computer has an NVIDIA GPU, but torch (built for CUDA {torch_cuda}) cannot use it, so the engine "
            f"runs on the CPU: the NVIDIA driver is too old for CUDA {torch_cuda} or is not loaded{said}. Update the "
            f"NVIDIA driver to one that supports CUDA {torch_cuda} and restart the computer; or, if the driver "
            "cannot be updated, run the engine set-up again with torch: CPU."
        )
    return (
        "This computer has an NVIDIA GPU that torch can use, but the engine was told to run on the CPU. "
        "Clear the Device setting (or choose cuda) in the settings to use the GPU."
    )


def nvidia_present(system: str | None = None, root: Path = Path("/")) -> bool:
    """Whether an NVIDIA driver is installed, without importing torch or running anything.

    Linux: the kernel module's /proc/driver/nvidia/version; Windows: nvidia-smi on PATH or in
    %SystemRoot%\\System32 (the driver installs it there); macOS: never (no CUDA). ``root`` lets
    tests point the Linux check at a folder of their own.
    """
    system = system or platform.system()
    if system == "Linux":
        return (root / "proc" / "driver" / "nvidia" / "version").exists()
    if system == "Darwin":
        return False
    if system == "Windows":
        system32 = Path(os.environ.get("SYSTEMROOT", r"C:\Windows")) / "System32"
        return shutil.which("nvidia-smi") is not None or (system32 / "nvidia-smi.exe").exists()
    return shutil.which("nvidia-smi") is not None


def _cuda_error() -> str:
    """Why CUDA did not initialise (e.g. "The NVIDIA driver on your system is too old"), first line only."""
    try:
        torch.cuda.init()
    except Exception as exc:  # noqa: BLE001 - any reason is worth reporting, none is fatal
        return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return ""


def _machine_name() -> str:
    """The CPU's model name: /proc/cpuinfo's 'model name' on Linux, platform.processor() elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def _machine_memory_gb() -> float | None:
    """The machine's memory in GiB where the OS tells it cheaply (POSIX sysconf), else None."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1024**3
    except (AttributeError, ValueError, OSError):
        return None


# --- memory: is there room for a model? ----------------------------------------------------------


def free_memory_bytes(device: str) -> int | None:
    """The memory a model loaded on ``device`` now can take, in bytes; None where it cannot be told.

    CUDA: the GPU's free memory (``torch.cuda.mem_get_info``, which counts what other processes hold).
    CPU and MPS (whose GPU shares the machine's memory): the memory the OS says is available without
    swapping (Linux: /proc/meminfo's MemAvailable; elsewhere the free physical pages, if POSIX tells them).
    """
    if device.startswith("cuda"):
        index = torch.device(device).index
        free, _total = torch.cuda.mem_get_info(index if index is not None else torch.cuda.current_device())
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as meminfo:
            for line in meminfo:
                key, _, value = line.partition(":")
                if key == "MemAvailable":
                    return int(value.split()[0]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def gib(size: float) -> str:
    """A byte count for people: '14.2 GiB', or MiB below 1 GiB."""
    return f"{size / 1024**3:.1f} GiB" if size >= 1024**3 else f"{size / 1024**2:.0f} MiB"
