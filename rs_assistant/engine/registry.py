"""The models the engine can answer with: the models file (TOML), backend names, lazy loading.

A models file names models and the backend that runs each (docs/architecture.md, "Models file")::

    [models.qwen]
    backend = "qwen2_5_vl"              # a built-in backend name, or "package.module:ClassName"
    path = "/models/Qwen2.5-VL-3B-Instruct"
    segmenter = "sam"                   # optional: `segment` = this model's boxes -> that model's masks
    [models.sam]
    backend = "sam"
    path = "sam-vit-base"               # relative paths are relative to the models file's folder

    [tasks]                             # optional: where a request with model "auto" goes, per task
    ground = "qwen"
    segment = "qwen"

Every other key of a ``[models.NAME]`` table reaches the backend untouched in its ``config``.
``auto`` is reserved: ``Registry.route(task, "auto")`` is the model [tasks] names for the task,
else ``default`` (rs_assistant.core.models_file reads and writes the file).
``default`` exists without a file (the project's own ``rsa`` model in resources/models/rsa-default);
a file may redefine it. Backend classes are imported, and weights loaded, only when a model is
first used, so a models file naming ten checkpoints starts in milliseconds.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rs_assistant.core.models_file import AUTO_MODEL, ModelsFileError, parse_models_text
from rs_assistant.core.paths import resource
from rs_assistant.core.protocol import ErrorCode, ModelInfo, ProtocolError, Task
from rs_assistant.engine.backends.base import Backend

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"

#: Built-in backend names -> "module:ClassName", imported on first use.
BACKENDS: Mapping[str, str] = MappingProxyType(
    {
        "rsa": "rs_assistant.engine.backends.rsa:RSABackend",
        "qwen2_5_vl": "rs_assistant.engine.backends.qwen2_5_vl:Qwen25VLBackend",
        "florence2": "rs_assistant.engine.backends.florence2:Florence2Backend",
        "sam": "rs_assistant.engine.backends.sam:SamBackend",
        "clip": "rs_assistant.engine.backends.clip:ClipBackend",
        "capret": "rs_assistant.engine.backends.capret:CapRetBackend",
        "moe": "rs_assistant.engine.backends.moe:MoEBackend",
        "rag": "rs_assistant.engine.backends.rag:RAGBackend",
        "openai": "rs_assistant.engine.backends.openai_backend:OpenAIBackend",
    }
)

#: A custom backend: "package.module:ClassName".
_CLASS_REF = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
#: Config keys holding file or folder paths: relative ones are resolved against the models file's folder.
_PATH_KEY = re.compile(r"^(path|.+_path|.+_file)$")


def default_model_path() -> Path:
    """Where the built-in ``default`` model's weights live (next to the plugin)."""
    return resource("models", "rsa-default")


@dataclass(frozen=True)
class ModelSpec:
    """One model as the models file names it. ``config`` is everything the backend receives."""

    name: str
    backend: str  # a key of BACKENDS or "package.module:ClassName"
    config: Mapping[str, Any] = field(default_factory=dict)
    segmenter: str | None = None  # the model whose segment_boxes() turns this model's boxes into masks
    origin: str = "built in"  # where the model was defined: "built in" or the models file's path

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))


def builtin_specs() -> dict[str, ModelSpec]:
    """The models that exist without a models file."""
    return {DEFAULT_MODEL: ModelSpec(DEFAULT_MODEL, "rsa", {"path": str(default_model_path())})}


def parse_models_file(path: str | Path) -> dict[str, ModelSpec]:
    """The ``[models.NAME]`` tables of a TOML models file; ProtocolError(BAD_REQUEST) naming the file and key."""
    return read_models(path)[0]


def read_models(path: str | Path) -> tuple[dict[str, ModelSpec], dict[str, str]]:
    """The models of a models file and its ``[tasks]`` routes (task name -> model name).

    ProtocolError(BAD_REQUEST) naming the file and key for any mistake: TOML syntax, a table's
    shape, an unknown backend, a segmenter or a [tasks] entry that names no model, a task that
    does not exist, the reserved name ``auto``.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"models file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"cannot read models file {path}: {exc}") from None
    try:
        content = parse_models_text(text, path)
    except ModelsFileError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, str(exc)) from None
    specs = {name: _parse_model(path, name, dict(table)) for name, table in content.models.items()}
    known = set(specs) | set(builtin_specs())
    for spec in specs.values():
        if spec.segmenter is not None and spec.segmenter not in known:
            raise _file_error(
                path,
                f"[models.{spec.name}] segmenter = {spec.segmenter!r} names no model; known: "
                f"{', '.join(sorted(known))}",
            )
        if spec.segmenter == spec.name:
            raise _file_error(path, f"[models.{spec.name}] names itself as its segmenter")
    return specs, dict(content.tasks)


def _parse_model(path: Path, name: str, table: Any) -> ModelSpec:
    where = f"[models.{name}]"
    if not name.strip():
        raise _file_error(path, "a model name must not be empty")
    if not isinstance(table, dict):
        raise _file_error(path, f"{where} must be a table (backend = ..., path = ...), got {table!r}")
    backend = table.get("backend")
    if backend is None:
        raise _file_error(
            path, f"{where} has no 'backend' key; use one of {', '.join(BACKENDS)} or 'package.module:ClassName'"
        )
    if not isinstance(backend, str) or (backend not in BACKENDS and not _CLASS_REF.match(backend)):
        raise _file_error(
            path,
            f"{where} backend = {backend!r} is unknown; use one of {', '.join(BACKENDS)} or 'package.module:ClassName'",
        )
    segmenter = table.get("segmenter")
    if segmenter is not None and (not isinstance(segmenter, str) or not segmenter):
        raise _file_error(path, f"{where} segmenter must be a model name, got {segmenter!r}")
    config: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("backend", "segmenter"):
            continue
        if _PATH_KEY.match(key):
            if not isinstance(value, str) or not value:
                raise _file_error(path, f"{where} {key} must be a path string, got {value!r}")
            value = str(_resolve(path, value))
        config[key] = value
    return ModelSpec(name, backend, config, segmenter, origin=str(path))


def _resolve(models_file: Path, value: str) -> Path:
    target = Path(value).expanduser()
    return target if target.is_absolute() else (models_file.parent / target).resolve()


def _file_error(path: Path, message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, f"models file {path}: {message}")


def backend_class(spec: ModelSpec) -> type[Backend]:
    """Import the class that runs ``spec``: NOT_IMPLEMENTED for a built-in backend this engine lacks."""
    target = BACKENDS.get(spec.backend, spec.backend)
    module_name, class_name = target.split(":")
    builtin = spec.backend in BACKENDS
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        found = None
    if found is None:
        if builtin:
            weights = f"; its weights would be read from {spec.config['path']}" if "path" in spec.config else ""
            raise ProtocolError(
                ErrorCode.NOT_IMPLEMENTED,
                f"model '{spec.name}' uses backend '{spec.backend}', which this engine does not have yet "
                f"(no module {module_name}){weights}. Name another model from a models file (--models).",
            )
        raise ProtocolError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"model '{spec.name}' ({spec.origin}): cannot import module {module_name!r} of backend {target!r}",
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        log.exception("importing backend module %s failed", module_name)
        raise ProtocolError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"model '{spec.name}': importing backend module {module_name} failed: {type(exc).__name__}: {exc}",
        ) from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ProtocolError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"model '{spec.name}': {target!r} is not a Backend class (module {module_name} has no such class)",
        )
    return cls


class Registry:
    """The named models: their specs, and one backend instance per model, created on first use.

    Creating a backend does not load its weights; the engine calls ``ensure_loaded`` under the
    model's lock, so loading happens once, on the first request that needs the model.
    """

    def __init__(self, specs: Mapping[str, ModelSpec], device: str = "cpu", routes: Mapping[str, str] | None = None):
        self._specs = dict(specs)
        self.device = device
        self.routes: Mapping[str, str] = MappingProxyType(dict(routes or {}))  # task name -> model name ([tasks])
        for task, model in self.routes.items():
            if model not in self._specs:
                raise ProtocolError(
                    ErrorCode.BAD_REQUEST, f"[tasks] {task} = {model!r} names no model; known: {', '.join(self._specs)}"
                )
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, models_file: str | Path | None = None, device: str = "cpu") -> Registry:
        """The models of ``models_file`` (in its order), then the built-in ones it does not redefine."""
        specs, routes = read_models(models_file) if models_file is not None else ({}, {})
        for name, spec in builtin_specs().items():
            specs.setdefault(name, spec)
        log.info("models: %s", ", ".join(f"{s.name} ({s.backend})" for s in specs.values()))
        if routes:
            log.info("task routes for model 'auto': %s", ", ".join(f"{t} -> {m}" for t, m in routes.items()))
        return cls(specs, device, routes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def route(self, task: Task | str, requested: str) -> str:
        """The model that answers ``task`` when asked for ``requested``: itself, or for ``auto``
        the model the models file's [tasks] names for the task, else ``default``."""
        if requested != AUTO_MODEL:
            return requested
        key = task.value if isinstance(task, Task) else str(task)
        return self.routes.get(key, DEFAULT_MODEL)

    def spec(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ProtocolError(
                ErrorCode.UNKNOWN_MODEL, f"unknown model {name!r}; this engine has: {', '.join(self._specs)}"
            ) from None

    def backend(self, name: str) -> Backend:
        """The model's backend instance (not necessarily loaded)."""
        spec = self.spec(name)
        with self._lock:
            if name not in self._backends:
                if spec.backend == "rsa":
                    _check_rsa_weights(spec)
                self._backends[name] = backend_class(spec)(name, spec.config, self.device)
            return self._backends[name]

    def tasks(self, name: str) -> frozenset[Task]:
        """What the model answers: its backend's tasks, plus ``segment`` when it grounds and names a segmenter."""
        spec = self.spec(name)
        tasks = frozenset(type(self.backend(name)).tasks)
        if spec.segmenter is not None and Task.GROUND in tasks:
            tasks |= {Task.SEGMENT}
        return tasks

    def infos(self) -> list[ModelInfo]:
        """One ModelInfo per model; a model whose backend cannot be imported lists no tasks."""
        infos = []
        for name, spec in self._specs.items():
            try:
                tasks = self.tasks(name)
            except ProtocolError as exc:
                log.debug("model '%s' is unavailable: %s", name, exc.message)
                tasks = frozenset()
            backend = self._backends.get(name)
            ordered = tuple(t for t in Task if t in tasks)
            infos.append(ModelInfo(name, spec.backend, ordered, loaded=backend is not None and backend.loaded))
        return infos


def _check_rsa_weights(spec: ModelSpec) -> None:
    """The project's own models ship their weights in a folder; name it when it is missing."""
    if not spec.config.get("path"):
        raise ProtocolError(
            ErrorCode.MODEL_LOAD_FAILED, f"model '{spec.name}' ({spec.origin}) gives no 'path' to its weights folder"
        )
    folder = Path(str(spec.config["path"]))
    if not folder.is_dir():
        raise ProtocolError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"model '{spec.name}' (backend rsa, {spec.origin}) has no weights: folder {folder} does not exist. "
            "Name another model from a models file (--models).",
        )
