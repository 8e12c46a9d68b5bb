"""Choosing the device and dtype once for the whole engine (../shared/DESIGN.md, "Device").

CUDA when available (bf16 where the GPU supports it, else fp16; SDPA attention), else MPS,
else CPU in fp32: bf16 matrix products on a CPU without native support run hundreds of times
slower.
"""

from __future__ import annotations

import logging

import torch

from rs_assistant.core.protocol import ErrorCode, ProtocolError

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
