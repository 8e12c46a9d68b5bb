"""What the transformers backends share: checking a local checkpoint folder, stopping on cancel.

A checkpoint folder is checked before transformers sees it, so that a missing or partial folder,
or one holding another architecture, is a clear MODEL_LOAD_FAILED naming the path rather than a
stack trace from deep inside ``from_pretrained`` (or, worse, an attempt to reach a model hub).
"""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, StoppingCriteria

from rs_assistant.core.protocol import ErrorCode, ProtocolError
from rs_assistant.engine.backends.base import Backend
from rs_assistant.engine.backends.decoding import LENGTH, STOP, Decoding, TextWatch
from rs_assistant.engine.device import attn_implementation, free_memory_bytes, gib, torch_dtype

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
    device (refused first, with the memory it needs and the memory there is, when it cannot fit)."""
    check_memory(backend, weight_files(path))
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


def weight_files(path: Path) -> list[Path]:
    """The weights files transformers reads from a checkpoint folder: its ``*.safetensors``, else its ``*.bin``."""
    for pattern in WEIGHT_PATTERNS:
        files = sorted(path.glob(pattern))
        if files:
            return files
    return []


#: What running a model takes beyond its weights (activations, caches, the framework's own buffers), as a share of
#: the weights: a model whose weights alone fill the memory would fail on its first request.
RUN_MARGIN = 0.2
_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2}


def weights_bytes(files: Iterable[Path], dtype: torch.dtype) -> int:
    """The bytes the weights in ``files`` take once loaded in ``dtype`` (floating tensors cast to it, others as
    stored). A ``*.safetensors`` file is measured from its header (each tensor's dtype and shape); any other file
    (``*.bin``, ``*.pt``) counts its size on disk."""
    size = torch.empty((), dtype=dtype).element_size()
    total = 0
    for file in files:
        if file.suffix != ".safetensors":
            total += file.stat().st_size
            continue
        with open(file, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > file.stat().st_size - 8:
                raise ValueError(f"{file.name} is not a safetensors file (its header would be {length} bytes)")
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = math.prod(entry["shape"])
            stored = entry["dtype"]
            total += count * (size if stored in _FLOAT_DTYPES else _DTYPE_BYTES.get(stored, 1))
    return total


def check_memory(backend: Backend, files: Iterable[Path]) -> None:
    """Refuses to load weights that cannot fit the device's free memory (MODEL_LOAD_FAILED naming both figures),
    rather than letting the load, or the first job, crash out of memory half way. Nothing is checked where the
    free memory cannot be told."""
    files = list(files)
    try:
        needed = weights_bytes(files, torch_dtype(backend.device))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error) as exc:
        log.warning(
            "model '%s': could not size its weights (%s); loading without a memory check", backend.model_name, exc
        )
        return
    needed = int(needed * (1 + RUN_MARGIN))
    free = free_memory_bytes(backend.device)
    if free is None or needed <= free:
        return
    dtype = str(torch_dtype(backend.device)).replace("torch.", "")
    where = "GPU memory" if backend.device.startswith("cuda") else "memory"
    raise ProtocolError(
        ErrorCode.MODEL_LOAD_FAILED,
        f"model '{backend.model_name}' needs about {gib(needed)} of {where} on {backend.device} (its weights in "
        f"{dtype}, plus {RUN_MARGIN:.0%} to run), but only {gib(free)} is free there: close other programs or "
        "models, choose a smaller model, or run it on a device with more memory",
    )


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

    def is_set(self) -> bool:
        return self.event.is_set()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.is_set(), dtype=torch.bool, device=input_ids.device)


class AnyCancel(StoppingCriteria):
    """Stops a batched ``generate`` at the next token once any of its calls is cancelled."""

    def __init__(self, calls: Sequence[Any]):
        self.events = list({id(call.cancel): call.cancel for call in calls}.values())

    def is_set(self) -> bool:
        return any(event.is_set() for event in self.events)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.is_set(), dtype=torch.bool, device=input_ids.device)


#: A text longer than this many times a tokenizer's longest token per token of room cannot fit it, whatever its
#: tokens (normalisation can join up to about 3 characters into one; 4 leaves a margin): refused untokenized.
CHARS_PER_TOKEN_BOUND = 4


def max_token_chars(tokenizer: Any) -> int:
    """The most characters one token of ``tokenizer``'s vocabulary spells (special tokens included)."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return max((len(t) for t in tokens if t is not None), default=1)


class WatchCriteria(StoppingCriteria):
    """Stops ``generate`` at the next token once ``cancel`` is set, or once ``watch`` sees a stop string.

    When the watch wants the text (streaming, stop strings) and one answer is generated, each step gives it
    ``render(kept)``: ``kept`` the new tokens that ``keep(token)`` accepts, up to the first of ``eos``
    (``start``: where the new tokens begin in ``input_ids``; 0 when generating from embeddings).
    """

    def __init__(
        self,
        cancel: threading.Event,
        watch: TextWatch | None = None,
        render: Callable[[list[int]], str] | None = None,
        keep: Callable[[int], bool] = lambda token: True,
        eos: Collection[int] = (),
        start: int = 0,
    ):
        self.cancel = cancel
        self.watch = watch if watch is not None and watch.wants_updates and render is not None else None
        self.render = render
        self.keep = keep
        self.eos = frozenset(eos)
        self.start = start
        self.kept: list[int] = []
        self.seen = 0
        self.ended = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        stop = self.cancel.is_set()
        if not stop and self.watch is not None and input_ids.shape[0] == 1 and not self.ended:
            new = input_ids[0, self.start + self.seen :].tolist()
            self.seen += len(new)
            for token in new:
                if token in self.eos:
                    self.ended = True
                    break
                if self.keep(token):
                    self.kept.append(token)
            assert self.render is not None
            stop = self.watch.update(self.render(self.kept))
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class SeededSampler(LogitsProcessor):
    """Sampling as a logits processor for greedy ``generate``: draws each token at ``temperature`` from the
    nucleus ``top_p`` with its own generator (seeded: the same answer for the same seed, whatever other
    requests do meanwhile) and leaves only that token possible, so that argmax picks it."""

    def __init__(self, decoding: Decoding, device: str | torch.device):
        self.temperature = float(decoding.temperature)
        self.top_p = float(decoding.top_p)
        self.generator = torch.Generator(device=torch.device(device))
        if decoding.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(decoding.seed) % 2**63)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            ordered, order = probs.sort(dim=-1, descending=True)
            outside = ordered.cumsum(dim=-1) - ordered >= self.top_p  # the more likely tokens already reach top_p
            outside[..., 0] = False  # the likeliest token is always kept
            probs = torch.zeros_like(probs).scatter(-1, order, ordered.masked_fill(outside, 0.0))
        if self.generator.device != probs.device:
            probs = probs.to(self.generator.device)
        chosen = torch.multinomial(probs, 1, generator=self.generator).to(scores.device)
        return torch.full_like(scores, -math.inf).scatter(-1, chosen, 0.0)


def sampler(decoding: Decoding, device: str | torch.device) -> list[LogitsProcessor]:
    """The logits processors that make greedy ``generate`` follow ``decoding``: none when it is greedy."""
    return [] if decoding.greedy else [SeededSampler(decoding, device)]


def finish_reason(written: Sequence[int], eos: Collection[int], max_new_tokens: int, stopped: bool) -> str:
    """Why an answer ended: STOP (end of sequence written, or a stop string) or LENGTH (``max_new_tokens`` cut it)."""
    if stopped or any(token in eos for token in written):
        return STOP
    return LENGTH if len(written) >= max_new_tokens else STOP


def written_tokens(row: Sequence[int], eos: Collection[int]) -> list[int]:
    """A generated row up to and including its first end-of-sequence token (the padding after it dropped)."""
    row = list(row)
    for index, token in enumerate(row):
        if token in eos:
            return row[: index + 1]
    return row


def cancelled(backend: Backend) -> ProtocolError:
    return ProtocolError(ErrorCode.CANCELLED, f"model '{backend.model_name}': generation was cancelled")
