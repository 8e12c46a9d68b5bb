"""python -m rs_assistant.engine models list [--json] [--models FILE]
python -m rs_assistant.engine models pull NAME [--models FILE]
python -m rs_assistant.engine models import FOLDER|ZIP [--name N] [--backend B] [--into DIR] [--models FILE]
python -m rs_assistant.engine models export NAME ZIP [--models FILE]
python -m rs_assistant.engine models use TASK NAME [--models FILE]

The model manager's verbs (rs_assistant.core.catalog: what can be pulled; rs_assistant.core.models_file:
the models file they write; rs_assistant.engine.hub: downloads, checks and bundles).

- ``list``: the catalogue and the models file's models, with where each is (on disk / registered /
  downloadable); ``--json`` prints one JSON object ``{"models_file", "models": [...], "tasks": {...}}``.
- ``pull``: downloads a catalogue entry into the Hugging Face cache (resuming a partial download,
  checking every file), registers it in the models file, prints ``PROGRESS <done_bytes> <total_bytes>
  <file>`` lines and last ``PULLED <name> <path>``.
- ``import``: a bundle from ``export`` is unpacked into ``--into`` (default: ``models/NAME`` beside the
  models file) and registered; a checkpoint folder is registered where it is, its backend read from
  config.json's model_type unless ``--backend`` says. Last line ``IMPORTED <name> <path>``.
- ``export``: writes a registered model's files and its models entry into one zip (``EXPORTED <name> <zip>``).
- ``use``: routes a task to a model in the models file's [tasks] (requests for model ``auto``): ``ROUTE <task> <name>``.

Without --models the file is the user's config folder's ``rs_assistant/models.toml``. Errors: the last
stdout line is ``ERROR <message>``; exit 2 for the caller's mistakes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from rs_assistant.core.catalog import CATALOG, CatalogEntry, find_entry
from rs_assistant.core.models_file import (
    AUTO_MODEL,
    DEFAULT_MODEL,
    ModelsFile,
    ModelsFileError,
    read_models_file,
    relative_to_file,
    write_models_file,
)
from rs_assistant.core.paths import user_config_dir
from rs_assistant.core.protocol import Task

log = logging.getLogger(__name__)

EXIT_CALLER = 2
EXIT_FAULT = 1
#: What each built-in backend answers (the backends' ``tasks``, kept here so listing needs no torch).
BACKEND_TASKS = {
    "rsa": (Task.CAPTION, Task.GROUND, Task.SEGMENT, Task.CHANGE, Task.CHAT),
    "qwen2_5_vl": (Task.CAPTION, Task.GROUND, Task.CHAT, Task.CHANGE),
    "florence2": (Task.CAPTION, Task.GROUND, Task.SEGMENT),
    "sam": (Task.SEGMENT,),
    "clip": (Task.CLASSIFY, Task.RETRIEVE),
    "openai": (Task.CHAT, Task.CAPTION, Task.GROUND),
}
_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class CliError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_CALLER):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def default_models_file() -> Path:
    """The user's models file: ``rs_assistant/models.toml`` in the config folder the engine's token file uses."""
    return user_config_dir() / "models.toml"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``models`` verb and its sub-verbs to the engine's argparse subparsers."""
    models = subparsers.add_parser("models", help="list, pull, import, export models; route tasks to models")
    verbs = models.add_subparsers(dest="models_command", required=True)
    listing = verbs.add_parser("list", help="the catalogue and the models file's models")
    listing.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    pull = verbs.add_parser("pull", help="download a catalogue entry (resumable, checked) and register it")
    pull.add_argument("name", help="a catalogue name (see `models list`)")
    imp = verbs.add_parser("import", help="register a checkpoint folder, or unpack and register a bundle zip")
    imp.add_argument("source", type=Path, help="a checkpoint folder or a bundle .zip from `models export`")
    imp.add_argument("--name", help="the model's name in the models file (default: the bundle's or the folder's name)")
    imp.add_argument("--backend", help="the backend (default: from config.json's model_type)")
    imp.add_argument("--into", type=Path, help="bundles: unpack here (default: models/NAME beside the models file)")
    exp = verbs.add_parser("export", help="write a model's weights and models entry into one zip")
    exp.add_argument("name")
    exp.add_argument("zip", type=Path)
    use = verbs.add_parser("use", help="route a task to a model for requests with model 'auto' ([tasks])")
    use.add_argument("task", help=", ".join(t.value for t in Task))
    use.add_argument("name")
    for verb in (listing, pull, imp, exp, use):
        verb.add_argument(
            "--models", type=Path, default=None, help="models file (default: the user's rs_assistant/models.toml)"
        )
    return models


def run(args: argparse.Namespace) -> int:
    """Run a ``models`` verb; prints its lines on stdout and returns the exit code."""
    from rs_assistant.engine.hub import HubError

    path = (args.models or default_models_file()).expanduser()
    try:
        verb = {"list": _list, "pull": _pull, "import": _import, "export": _export, "use": _use}[args.models_command]
        return verb(args, path)
    except ModelsFileError as exc:
        return _error(f"{exc}", EXIT_CALLER)
    except CliError as exc:
        return _error(exc.message, exc.exit_code)
    except HubError as exc:
        return _error(exc.message, exc.failure.exit_code)
    except KeyboardInterrupt:
        return _error("interrupted; run the same command again to continue", EXIT_FAULT)


def _error(message: str, code: int) -> int:
    print(f"ERROR {' '.join(message.split())}", flush=True)
    return code


# --- list ---------------------------------------------------------------------------------------


def list_models(path: Path) -> dict[str, Any]:
    """What ``models list --json`` prints: the catalogue and the models file's models, and [tasks]."""
    from rs_assistant.engine import hub

    content = read_models_file(path)
    rows = []
    for entry in CATALOG:
        table = content.models.get(entry.name)
        folder = _registered_folder(content, table) if table else hub.find_cached(entry)
        on_disk = folder is not None and not hub.checkpoint_problems(folder, entry.backend)
        rows.append(
            {
                "name": entry.name,
                "backend": entry.backend,
                "tasks": [t.value for t in entry.tasks],
                "in_catalog": True,
                "on_disk": on_disk,
                "path": str(folder) if folder is not None and on_disk else None,
                "size_gb": entry.size_gb,
                "licence": entry.licence,
                "gated": entry.gated,
                "repo_id": entry.repo_id,
                "registered": table is not None,
                "memory_cpu_gb": entry.memory_cpu_gb,
                "memory_gpu_gb": entry.memory_gpu_gb,
                "description": entry.description,
            }
        )
    for name, table in content.models.items():
        if find_entry(name) is not None:
            continue
        backend = str(table.get("backend", ""))
        folder = _registered_folder(content, table)
        on_disk = folder is not None and (
            backend not in hub.MODEL_TYPE_BACKENDS or not hub.checkpoint_problems(folder, backend)
        )
        rows.append(
            {
                "name": name,
                "backend": backend,
                "tasks": [t.value for t in BACKEND_TASKS.get(backend, ())],
                "in_catalog": False,
                "on_disk": on_disk,
                "path": str(folder) if folder is not None else None,
                "size_gb": round(hub.folder_size(folder) / 1e9, 3) if folder is not None and folder.is_dir() else None,
                "licence": str(table.get("licence", "")),
                "gated": False,
                "repo_id": None,
                "registered": True,
            }
        )
    return {"models_file": str(path), "models": rows, "tasks": dict(content.tasks)}


def _registered_folder(content: ModelsFile, table: Any) -> Path | None:
    value = table.get("path") if table else None
    if not isinstance(value, str) or not value:
        return None
    folder = content.resolve(value)
    return folder if folder.exists() else None


def _status(row: dict[str, Any]) -> str:
    if row["on_disk"]:
        return "on disk" + (", registered" if row["registered"] else "")
    if row["registered"]:
        return "registered, files missing"
    return "downloadable" + (" (gated)" if row["gated"] else "")


def _list(args: argparse.Namespace, path: Path) -> int:
    listing = list_models(path)
    if args.json:
        print(json.dumps(listing), flush=True)
        return 0
    header = ("NAME", "TASKS", "SIZE", "LICENCE", "CPU/GPU MEMORY", "STATUS")
    lines = [header]
    for row in listing["models"]:
        size = f"{row['size_gb']:.2f} GB" if row["size_gb"] is not None else "?"
        memory = f"{row['memory_cpu_gb']:g}/{row['memory_gpu_gb']:g} GB" if "memory_cpu_gb" in row else "-"
        lines.append((row["name"], ",".join(row["tasks"]) or "-", size, row["licence"] or "-", memory, _status(row)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    print(f"models file: {listing['models_file']}")
    for line in lines:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    routes = (
        ", ".join(f"{t} -> {m}" for t, m in listing["tasks"].items()) or f"none (model 'auto' means '{DEFAULT_MODEL}')"
    )
    print(f"task routes: {routes}", flush=True)
    return 0


# --- pull, import, export, use -------------------------------------------------------------------


def _catalog(name: str) -> CatalogEntry:
    entry = find_entry(name)
    if entry is None:
        raise CliError(f"{name!r} is not in the catalogue; pull one of: {', '.join(e.name for e in CATALOG)}")
    return entry


def _pull(args: argparse.Namespace, path: Path) -> int:
    from rs_assistant.engine import hub

    entry = _catalog(args.name)
    read_models_file(path)  # a broken models file is reported before a long download

    def progress(done: int, total: int, file: str) -> None:
        print(f"PROGRESS {done} {total} {file}", flush=True)

    folder = hub.pull(entry, progress=progress)
    hub.check_checkpoint(folder, entry.backend)
    table = {"backend": entry.backend, "path": str(folder)}
    write_models_file(read_models_file(path).with_model(entry.name, table))
    print(f"PULLED {entry.name} {folder}", flush=True)
    return 0


def _import(args: argparse.Namespace, path: Path) -> int:
    from rs_assistant.engine import hub

    source = args.source.expanduser()
    content = read_models_file(path)
    if source.is_file():
        manifest = hub.read_manifest(source)
        name = _model_name(args.name or manifest["name"])
        table = dict(manifest["models_entry"])
        backend = args.backend or str(table.get("backend", ""))
        target = (args.into.expanduser() if args.into else path.parent / "models" / name).resolve()
        folder = hub.import_bundle(source, target, name)
        try:
            hub.check_checkpoint(folder, backend)
        except hub.HubError:
            shutil.rmtree(folder, ignore_errors=True)  # never leave a folder that looks like a model
            raise
        table["backend"] = backend
        table["path"] = relative_to_file(content, folder)
    elif source.is_dir():
        backend = args.backend or hub.detect_backend(source)
        if backend is None:
            config = source / "config.json"
            what = (
                "no config.json"
                if not config.exists()
                else f"a config.json whose model_type is not one of {', '.join(hub.MODEL_TYPE_BACKENDS)}"
            )
            raise CliError(
                f"{source} is not a checkpoint folder the engine knows: it has {what}; give --backend if it is one"
            )
        hub.check_checkpoint(source, backend)
        name = _model_name(args.name or source.name)
        folder = source.resolve()
        table = {"backend": backend, "path": str(folder)}
    else:
        raise CliError(f"{source} does not exist; give a checkpoint folder or a bundle .zip from `models export`")
    write_models_file(content.with_model(name, table))
    print(f"IMPORTED {name} {folder}", flush=True)
    return 0


def _model_name(raw: str) -> str:
    name = _NAME.sub("-", raw).strip("-.")
    if not name or name in (AUTO_MODEL,):
        raise CliError(f"{raw!r} cannot be a model name; give --name")
    return name


def _export(args: argparse.Namespace, path: Path) -> int:
    from rs_assistant.engine import hub

    content = read_models_file(path)
    table = content.models.get(args.name)
    entry = find_entry(args.name)
    if table is None and entry is not None:
        cached = hub.find_cached(entry)
        table = {"backend": entry.backend, "path": str(cached)} if cached is not None else None
    if table is None:
        known = ", ".join(content.models) or "none"
        raise CliError(f"model {args.name!r} is neither in {path} nor pulled; registered: {known}")
    folder = _registered_folder(content, table)
    if folder is None or not folder.is_dir():
        raise CliError(
            f"model {args.name!r} has no checkpoint folder on disk ({table.get('path')!r}); pull or import it first"
        )
    zip_path = hub.export_bundle(
        args.name, folder, table, args.zip.expanduser(), catalog_name=entry.name if entry else None
    )
    print(f"EXPORTED {args.name} {zip_path}", flush=True)
    return 0


def _use(args: argparse.Namespace, path: Path) -> int:
    try:
        task = Task(args.task)
    except ValueError:
        raise CliError(f"{args.task!r} is not a task; use one of {', '.join(t.value for t in Task)}") from None
    content = read_models_file(path)
    if args.name != DEFAULT_MODEL and args.name not in content.models:
        raise CliError(
            f"model {args.name!r} is not in {path}; pull or import it first (registered: "
            f"{', '.join(content.models) or 'none'})"
        )
    backend = str(content.models[args.name].get("backend", "")) if args.name in content.models else "rsa"
    if (
        backend in BACKEND_TASKS
        and task not in BACKEND_TASKS[backend]
        and not (task is Task.SEGMENT and "segmenter" in content.models.get(args.name, {}))
    ):
        raise CliError(
            f"model {args.name!r} (backend {backend}) does not do {task.value}; it does: "
            f"{', '.join(t.value for t in BACKEND_TASKS[backend])}"
        )
    write_models_file(content.with_route(task, args.name))
    print(f"ROUTE {task.value} {args.name}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rs_assistant.engine")
    add_parser(parser.add_subparsers(dest="command", required=True))
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    return run(parser.parse_args(argv))
