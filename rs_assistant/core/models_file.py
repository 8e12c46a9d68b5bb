"""Read and write the engine's models file (TOML): ``[models.NAME]`` tables and a ``[tasks]`` routing table.

    from rs_assistant.core.models_file import read_models_file, write_models_file
    models = read_models_file(path)                       # empty when the file does not exist
    models = models.with_model("florence2-base", {"backend": "florence2", "path": "models/florence2-base"})
    models = models.with_route("ground", "florence2-base")
    write_models_file(models)                             # atomic: temp file + replace

The file::

    [models.florence2-base]
    backend = "florence2"
    path = "models/florence2-base"     # relative paths: relative to this file's folder
    [tasks]
    ground = "florence2-base"          # a request with model "auto" for this task goes here

``default`` is the engine's built-in model (a file may redefine it); ``auto`` is reserved: it means
"the model [tasks] names for the request's task, else default". Checks here are the structural ones
a person editing the file by hand can get wrong (TOML syntax, table shapes, task and model names
in [tasks]); the engine's registry checks backend names and paths. Errors are ModelsFileError,
whose message names the file and the key. Writing keeps every other entry, but not comments.
Pure standard library.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rs_assistant.core.protocol import Task

DEFAULT_MODEL = "default"
AUTO_MODEL = "auto"
TOP_LEVEL_KEYS = ("models", "tasks")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


class ModelsFileError(ValueError):
    """A models file that cannot be read or does not make sense; the message names the file and key."""

    def __init__(self, path: Path | str, message: str, key: str | None = None) -> None:
        self.path = Path(path)
        self.key = key
        super().__init__(f"models file {self.path}: {message}")


@dataclass(frozen=True)
class ModelsFile:
    """A models file's content. ``models`` keeps the file's order; values are TOML values."""

    path: Path
    models: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tasks: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        models = {str(n): MappingProxyType(dict(t)) for n, t in self.models.items()}
        object.__setattr__(self, "models", MappingProxyType(models))
        object.__setattr__(self, "tasks", MappingProxyType(dict(self.tasks)))
        validate(self)

    def with_model(self, name: str, table: Mapping[str, Any]) -> ModelsFile:
        """A copy with ``[models.NAME]`` added, or replaced in place (its position kept)."""
        models = dict(self.models)
        models[name] = dict(table)
        return ModelsFile(self.path, models, self.tasks)

    def without_model(self, name: str) -> ModelsFile:
        """A copy without ``[models.NAME]`` and without the [tasks] routes to it."""
        if name not in self.models:
            raise ModelsFileError(self.path, f"has no [models.{name}] to remove", key=f"models.{name}")
        models = {n: t for n, t in self.models.items() if n != name}
        tasks = {t: m for t, m in self.tasks.items() if m != name}
        return ModelsFile(self.path, models, tasks)

    def with_route(self, task: str | Task, model: str) -> ModelsFile:
        """A copy whose [tasks] sends ``task`` to ``model``."""
        tasks = dict(self.tasks)
        tasks[Task(task).value if _is_task(task) else str(task)] = model
        return ModelsFile(self.path, self.models, tasks)

    def route(self, task: str | Task) -> str:
        """The model [tasks] names for ``task``, else ``default``."""
        key = task.value if isinstance(task, Task) else str(task)
        return self.tasks.get(key, DEFAULT_MODEL)

    def resolve(self, value: str) -> Path:
        """A path value of a model entry: relative ones are relative to the file's folder."""
        target = Path(value).expanduser()
        return target if target.is_absolute() else (self.path.parent / target).resolve()


def _is_task(value: Any) -> bool:
    try:
        Task(value)
    except ValueError:
        return False
    return True


def validate(models_file: ModelsFile, known_models: frozenset[str] = frozenset({DEFAULT_MODEL})) -> None:
    """ModelsFileError for a structural mistake: a bad model name or table, an unknown task or model in [tasks]."""
    path = models_file.path
    for name, table in models_file.models.items():
        if not name.strip():
            raise ModelsFileError(path, "a model name must not be empty", key="models")
        if name == AUTO_MODEL:
            raise ModelsFileError(
                path,
                "[models.auto]: 'auto' is reserved (it means: the model [tasks] names for the task); rename the model",
                key="models.auto",
            )
        if not isinstance(table, Mapping):
            raise ModelsFileError(
                path,
                f"[models.{name}] must be a table (backend = ..., path = ...), got {table!r}",
                key=f"models.{name}",
            )
    names = set(models_file.models) | set(known_models)
    tasks = [t.value for t in Task]
    for task, model in models_file.tasks.items():
        if task not in tasks:
            raise ModelsFileError(
                path, f"[tasks] {task} is not a task; use one of {', '.join(tasks)}", key=f"tasks.{task}"
            )
        if not isinstance(model, str) or not model:
            raise ModelsFileError(
                path, f"[tasks] {task} must be a model name (a string), got {model!r}", key=f"tasks.{task}"
            )
        if model == AUTO_MODEL:
            raise ModelsFileError(
                path, f"[tasks] {task} = 'auto' would route to itself; name a model", key=f"tasks.{task}"
            )
        if model not in names:
            raise ModelsFileError(
                path,
                f"[tasks] {task} = {model!r} names no model; known: {', '.join(sorted(names))}",
                key=f"tasks.{task}",
            )


def parse_models_text(text: str, path: Path | str) -> ModelsFile:
    """The ModelsFile of TOML ``text`` read from ``path`` (used in messages and for relative paths)."""
    path = Path(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelsFileError(
            path, f"is not valid TOML: {exc}. Fix the line it names, or delete the file to start again"
        ) from None
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ModelsFileError(
            path,
            f"unknown top-level key(s) {', '.join(unknown)}; models go in [models.NAME] tables, routes in [tasks]",
            key=unknown[0],
        )
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ModelsFileError(path, "'models' must be a table of [models.NAME] tables", key="models")
    for name, table in models.items():
        if not isinstance(table, dict):
            raise ModelsFileError(
                path,
                f"[models.{name}] must be a table (backend = ..., path = ...), got {table!r}",
                key=f"models.{name}",
            )
    tasks = data.get("tasks", {})
    if not isinstance(tasks, dict):
        raise ModelsFileError(path, "'tasks' must be a table: task = \"model name\"", key="tasks")
    return ModelsFile(path, models, tasks)


def read_models_file(path: Path | str, missing_ok: bool = True) -> ModelsFile:
    """The models file at ``path``; an empty one when it does not exist and ``missing_ok``."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return ModelsFile(path)
        raise ModelsFileError(path, "does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelsFileError(path, f"cannot be read: {exc}") from None
    return parse_models_text(text, path)


# --- writing ------------------------------------------------------------------------------------


def dumps(models_file: ModelsFile) -> str:
    """TOML text for ``models_file``: strings, numbers, booleans, arrays and nested tables."""
    lines = ["# RS Assistant models file, written by `python -m rs_assistant.engine models`.", ""]
    for name, table in models_file.models.items():
        lines.extend(_table(f"models.{_key(name)}", table))
    if models_file.tasks:
        lines.append("[tasks]")
        lines.extend(f"{_key(task)} = {_value(model)}" for task, model in models_file.tasks.items())
        lines.append("")
    return "\n".join(lines)


def _table(header: str, table: Mapping[str, Any]) -> list[str]:
    lines = [f"[{header}]"]
    nested = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    lines.append("")
    for key, value in nested:
        lines.extend(_table(f"{header}.{_key(key)}", value))
    return lines


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to TOML")


def _string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def write_models_file(models_file: ModelsFile) -> Path:
    """Write ``models_file`` to its path atomically (a temporary file in the same folder, then replace)."""
    path = models_file.path
    text = dumps(models_file)
    parse_models_text(text, path)  # never write a file that would not read back
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def relative_to_file(models_file: ModelsFile, folder: Path) -> str:
    """How to write ``folder`` in the file: relative when it is under the file's folder (the pair moves together)."""
    folder = Path(folder).resolve()
    try:
        return folder.relative_to(models_file.path.parent.resolve()).as_posix()
    except ValueError:
        return str(folder)
