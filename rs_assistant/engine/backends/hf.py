"""What the transformers backends share: checking a local checkpoint folder, stopping on cancel.

A checkpoint folder is checked before transformers sees it, so that a missing or partial folder,
or one holding another architecture, is a clear MODEL_LOAD_FAILED naming the path rather than a
stack trace from deep inside ``from_pretrained`` (or, worse, an attempt to reach a model hub).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteria

from rs_assistant.core.protocol import ErrorCode, ProtocolError
from rs_assistant.engine.backends.base import Backend
from rs_assistant.engine.device import attn_implementation, torch_dtype

log = logging.getLogger(__name__)

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def checkpoint_folder(
    backend: Backend,
    model_types: Collection[str],
    processor_files: Sequence[str] = ("preprocessor_config.json", "processor_config.json"),
) -> Path:
    """The backend's ``path``, checked to hold a complete checkpoint of one of ``model_types``.

    Checks, in order: the folder and its config.json exist; config.json is JSON whose
    ``model_type`` is one of ``model_types``; weights (``*.safetensors`` or ``*.bin``);
    tokenizer files; and at least one of ``processor_files``.
    """
    path = backend.local_path()
    where = f"model '{backend.model_name}': checkpoint folder {path}"
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED, f"{where}: config.json is unreadable: {exc}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in model_types:
        raise ProtocolError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"{where} holds a {model_type or 'unknown'!s} checkpoint (config.json model_type); "
            f"backend '{backend.name}' needs {' or '.join(sorted(model_types))}",
        )
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise ProtocolError(ErrorCode.MODEL_LOAD_FAILED, f"{where} has no weights (*.safetensors or *.bin)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ProtocolError(
            ErrorCode.MODEL_LOAD_FAILED, f"{where} has no tokenizer (one of {', '.join(TOKENIZER_FILES)})"
        )
    if not any((path / name).is_file() for name in processor_files):
        raise ProtocolError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"{where} has no image processor configuration ({' or '.join(processor_files)})",
        )
    return path


def load_model(backend: Backend, model_class: type, path: Path) -> Any:
    """``model_class.from_pretrained(path)`` from local files only, in the engine's dtype and attention, on its
    device."""
    try:
        model = model_class.from_pretrained(
            path,
            local_files_only=True,
            dtype=torch_dtype(backend.device),
            attn_implementation=attn_implementation(backend.device),
        )
    except Exception as exc:  # transformers raises many types; all mean the same to the caller
        raise load_failed(backend, path, exc) from exc
    return model.to(backend.device).eval()


def load_failed(backend: Backend, path: Path, exc: BaseException) -> ProtocolError:
    """A MODEL_LOAD_FAILED for an exception raised while transformers read ``path``."""
    log.exception("model '%s': loading %s failed", backend.model_name, path)
    return ProtocolError(
        ErrorCode.MODEL_LOAD_FAILED,
        f"model '{backend.model_name}': could not load checkpoint folder {path}: {type(exc).__name__}: {exc}",
    )


class CancelCriteria(StoppingCriteria):
    """Stops ``generate`` at the next token once ``event`` is set (client gone, timeout)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def cancelled(backend: Backend) -> ProtocolError:
    return ProtocolError(ErrorCode.CANCELLED, f"model '{backend.model_name}': generation was cancelled")
