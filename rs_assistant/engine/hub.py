"""Model downloads from the Hugging Face Hub (or a mirror), checkpoint checks, offline bundles.

    from rs_assistant.engine import hub
    folder = hub.find_cached(entry)                       # no network: a complete copy in the HF cache, or None
    folder = hub.pull(entry, progress=lambda done, total, name: ...)
    problems = hub.checkpoint_problems(folder, "florence2")   # [] for a complete checkpoint

How a pull works, with huggingface_hub (2.4) doing the HTTP:

1. ``HfApi.model_info(repo_id, revision, files_metadata=True)`` (``GET /api/models/{repo}/revision/{rev}?blobs=true``)
   gives the commit and, per file, its size, git blob id and, for LFS files, the sha256. Only the
   files the catalogue entry's ``allow_patterns`` select are fetched.
2. Each file is fetched with huggingface_hub's HTTP session (``http_stream_backoff``) from
``{endpoint}/{repo}/resolve/{commit}/{path}``
   into the Hugging Face cache's own layout (``$HF_HOME/hub/models--owner--name/blobs/<etag>``,
   linked from ``snapshots/<commit>/<path>``, ``refs/<revision>``), so other tools find it and it
   finds theirs. The partial file is ``blobs/<etag>.incomplete``, written as the bytes arrive; a pull
   that was interrupted (network cut, Ctrl-C, computer off) continues it with an HTTP Range
   request. huggingface_hub 2.4's own ``hf_hub_download`` deletes its partial file on failure, and
   its ``http_get`` buffers 10 MB before writing, which is why this loop is here.
3. Each finished file is checked before it enters the cache: the sha256 of LFS files against the
   Hub's LFS metadata, the git blob sha1 and size of the others. A corrupt file is deleted and
   reported; pulling again fetches it anew.

An entry with ``companions`` or ``generated_files`` (a bare open_clip ``*.pt`` published without its
config and vocabulary) is pulled source by source as above (one progress bar over all of them), then
assembled: a folder ``<repo folder>/rs_assistant/<entry name>`` in the main repository's cache folder
(removed with it by ``hf cache delete``) holds links to the snapshot files, each under its own file
name, and the generated files. It is built as ``.<name>.*.assembling`` and renamed into place, and
only the stamp ``rs_assistant/<entry name>.json`` written after that (the commits of every source and
every file's size) makes it complete: an interrupted pull never leaves a folder that looks complete.

``HF_ENDPOINT``, ``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_TOKEN`` and the proxy variables
(``HTTPS_PROXY``...) are honoured because huggingface_hub reads them. Nothing here imports torch.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

from rs_assistant.core.catalog import CatalogEntry

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # (done bytes, total bytes, file being fetched)

#: config.json model_type -> the backend that runs it.
MODEL_TYPE_BACKENDS = {
    "qwen2_5_vl": "qwen2_5_vl",
    "florence2": "florence2",
    "sam": "sam",
    "sam2": "sam",  # SAM 2 / 2.1 (the sam backend runs them with Sam2Model)
    "sam2_video": "sam",  # facebook/sam2.1-hiera-*: the video model's conversion, whose image part Sam2Model loads
    "clip": "clip",
    "rsa": "rsa",
}
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
BUNDLE_MANIFEST = "rs_assistant_bundle.json"
BUNDLE_FORMAT = 1
#: Written into a pulled snapshot's repo folder once every file is in: the list of files and sizes.
COMPLETE_STAMP = "rs_assistant-complete-{commit}.json"
#: Assembled checkpoint folders (entries with companions or generated files), inside the main repo's folder.
ASSEMBLED_DIR = "rs_assistant"
#: Tries per file within one pull while a cut connection keeps delivering new bytes.
RETRIES = 3


class Failure(str, Enum):
    """Why a model operation failed; ``exit_code`` follows the CLI's rule (2: the caller's mistake)."""

    UNKNOWN_MODEL = "unknown_model"
    NOT_A_CHECKPOINT = "not_a_checkpoint"
    BAD_BUNDLE = "bad_bundle"
    BAD_MODELS_FILE = "bad_models_file"
    GATED = "gated"
    NOT_FOUND = "not_found"
    NO_NETWORK = "no_network"
    PROXY = "proxy"
    DISK_FULL = "disk_full"
    CORRUPT = "corrupt"
    INTERRUPTED = "interrupted"

    @property
    def exit_code(self) -> int:
        caller = {Failure.UNKNOWN_MODEL, Failure.NOT_A_CHECKPOINT, Failure.BAD_BUNDLE, Failure.BAD_MODELS_FILE}
        return 2 if self in caller else 1


class HubError(Exception):
    """A model operation that failed, with a message saying what to do."""

    def __init__(self, failure: Failure, message: str):
        super().__init__(message)
        self.failure = failure
        self.message = message


@dataclass(frozen=True)
class RemoteFile:
    path: str  # path in the repository
    size: int
    etag: str  # the blob's name in the cache: the LFS sha256, else the git blob id
    sha256: str | None  # LFS files
    blob_id: str | None  # git blob sha1 (non-LFS files)

    def __post_init__(self) -> None:
        if self.size < 0 or not self.etag:
            raise ValueError(f"{self.path}: size and etag are required (got {self.size}, {self.etag!r})")


# --- checkpoints on disk ------------------------------------------------------------------------


def _read_config(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def detect_backend(folder: Path) -> str | None:
    """The backend that runs the checkpoint in ``folder`` (config.json's model_type; open_clip folders: clip)."""
    folder = Path(folder)
    if (folder / "open_clip_config.json").is_file():
        return "clip"
    config = _read_config(folder)
    return MODEL_TYPE_BACKENDS.get(str(config.get("model_type"))) if config else None


def checkpoint_problems(folder: Path, backend: str) -> list[str]:
    """What ``folder`` lacks to be a checkpoint ``backend`` loads (empty list: complete).

    The same checks the backends make before transformers sees the folder (backends/hf.py,
    sam.py, clip.py), without importing them (no torch): config.json and its model_type, the
    weights (every shard an index names), the tokenizer and the processor files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    if backend == "clip" and (folder / "open_clip_config.json").is_file():
        problems = []
        if not any((folder / n).is_file() for n in OPEN_CLIP_WEIGHTS) and not list(folder.glob("*.pt")):
            problems.append(f"weights ({' or '.join(OPEN_CLIP_WEIGHTS)} or one *.pt file)")
        if (
            not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())
            and not (folder / "bpe_simple_vocab_16e6.txt.gz").is_file()
        ):
            problems.append("the BPE vocabulary (vocab.json + merges.txt, or bpe_simple_vocab_16e6.txt.gz)")
        return problems
    config = _read_config(folder)
    if config is None:
        what = "config.json" if not (folder / "config.json").exists() else "a readable config.json"
        return [what + (" (or open_clip_config.json)" if backend == "clip" else "")]
    problems = []
    model_type = config.get("model_type")
    expected = [t for t, b in MODEL_TYPE_BACKENDS.items() if b == backend]
    if expected and model_type not in expected:
        problems.append(
            f"a config.json for backend {backend} (model_type {' or '.join(expected)}; this one is {model_type!r})"
        )
    if backend == "florence2" and "auto_map" in config:
        problems.append(
            "the transformers-native Florence-2 conversion (this is an original release that needs remote code)"
        )
    weights = [p for pattern in ("*.safetensors", "*.bin") for p in folder.glob(pattern)]
    if not weights:
        problems.append("weights (*.safetensors or *.bin)")
    for index in folder.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            problems.append(f"a readable {index.name}")
            continue
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            problems.append(f"weight shard(s) {', '.join(missing)} named by {index.name}")
    if backend in ("qwen2_5_vl", "florence2", "clip") and not any((folder / n).is_file() for n in TOKENIZER_FILES):
        problems.append(f"tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
    needs_processor = backend in ("qwen2_5_vl", "florence2", "clip") or model_type == "sam"  # SAM 2 has defaults
    if needs_processor and not any((folder / n).is_file() for n in PROCESSOR_FILES):
        problems.append(f"the image processor's {' or '.join(PROCESSOR_FILES)}")
    return problems


def check_checkpoint(folder: Path, backend: str) -> None:
    """HubError(NOT_A_CHECKPOINT) naming what ``folder`` lacks for ``backend``."""
    problems = checkpoint_problems(folder, backend)
    if problems:
        raise HubError(
            Failure.NOT_A_CHECKPOINT,
            f"{folder} is not a complete {backend} checkpoint: it has no {'; no '.join(problems)}",
        )


# --- the Hugging Face cache ---------------------------------------------------------------------


def hub_cache() -> Path:
    """The Hugging Face cache folder ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def repo_folder(repo_id: str, cache: Path | None = None) -> Path:
    return (cache or hub_cache()) / ("models--" + repo_id.replace("/", "--"))


def find_cached(entry: CatalogEntry, cache: Path | None = None) -> Path | None:
    """The checkpoint folder of ``entry`` in the HF cache when it is complete, without any request.

    Complete means: pulled here to the end (the stamp lists every file and they are all there),
    or, for a copy another tool downloaded, a folder that passes :func:`checkpoint_problems`.
    For an assembled entry: every source is complete, and so is the assembled folder, for the
    commits the sources are at now.
    """
    if entry.assembled:
        return _find_assembled(entry, cache)
    return _find_snapshot(entry, cache)


def _find_snapshot(entry: CatalogEntry, cache: Path | None = None) -> Path | None:
    """The snapshot folder of ``entry``'s repository holding the files its patterns select, if complete."""
    storage = repo_folder(entry.repo_id, cache)
    revision = entry.revision
    commit = revision if _is_commit(revision) else None
    if commit is None:
        try:
            commit = (storage / "refs" / revision).read_text(encoding="utf-8").strip()
        except OSError:
            return None
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    stamp = storage / COMPLETE_STAMP.format(commit=commit)
    if stamp.is_file():
        try:
            data = json.loads(stamp.read_text(encoding="utf-8"))
            files = data["files"]
            # A stamp written for other patterns (another entry, or a companion's few files) proves nothing here.
            covered = set(entry.allow_patterns) <= set(data.get("allow_patterns", entry.allow_patterns))
            complete = covered and all(
                (snapshot / f["path"]).is_file() and (snapshot / f["path"]).stat().st_size == f["size"] for f in files
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            complete = False
        if complete or entry.assembled:
            return snapshot if complete else None
    if entry.assembled:  # a source of an assembled entry is never a checkpoint on its own
        return None
    return snapshot if not checkpoint_problems(snapshot, entry.backend) else None


def sources(entry: CatalogEntry) -> list[CatalogEntry]:
    """The repositories an entry's checkpoint folder is made from: its own, then its companions'.

    Each is an entry selecting exactly the files to fetch from it (``assembled`` stays true for all
    of them, so that none is mistaken for a checkpoint folder of its own).
    """
    found = [entry]
    for companion in entry.companions:
        found.append(
            replace(entry, repo_id=companion.repo_id, revision=companion.revision, allow_patterns=companion.files)
        )
    return found


def _stamp_files(entry: CatalogEntry, snapshot: Path, cache: Path | None) -> list[str]:
    """The repo paths the stamp of ``snapshot`` lists that ``entry``'s patterns select."""
    storage = repo_folder(entry.repo_id, cache)
    data = json.loads((storage / COMPLETE_STAMP.format(commit=snapshot.name)).read_text(encoding="utf-8"))
    return sorted(f["path"] for f in data["files"] if any(fnmatch(f["path"], p) for p in entry.allow_patterns))


def assembled_folder(entry: CatalogEntry, cache: Path | None = None) -> Path:
    return repo_folder(entry.repo_id, cache) / ASSEMBLED_DIR / entry.name


def _find_assembled(entry: CatalogEntry, cache: Path | None) -> Path | None:
    snapshots = [_find_snapshot(source, cache) for source in sources(entry)]
    if any(s is None for s in snapshots):
        return None
    folder = assembled_folder(entry, cache)
    try:
        stamp = json.loads((folder.parent / f"{entry.name}.json").read_text(encoding="utf-8"))
        wanted = {source.repo_id: snap.name for source, snap in zip(sources(entry), snapshots)}  # type: ignore[union-attr]
        complete = stamp["sources"] == wanted and all(
            (folder / f["name"]).is_file() and (folder / f["name"]).stat().st_size == f["size"] for f in stamp["files"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        complete = False
    return folder if complete else None


def _is_commit(revision: str) -> bool:
    return len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


# --- pulling ------------------------------------------------------------------------------------


def remote_files(entry: CatalogEntry, token: str | None = None) -> tuple[str, list[RemoteFile]]:
    """The commit ``entry.revision`` points at and the files of it that ``allow_patterns`` select."""
    from huggingface_hub import HfApi

    with _translated_errors(entry):
        info = HfApi(token=token).model_info(entry.repo_id, revision=entry.revision, files_metadata=True)
    files = []
    for sibling in info.siblings or []:
        if not any(fnmatch(sibling.rfilename, p) for p in entry.allow_patterns):
            continue
        lfs = sibling.lfs
        sha256 = getattr(lfs, "sha256", None) if lfs is not None else None
        size = int(getattr(lfs, "size", None) or sibling.size or 0) if lfs is not None else int(sibling.size or 0)
        etag = sha256 or sibling.blob_id
        if etag is None:
            raise HubError(
                Failure.NOT_FOUND, f"the Hub sent no checksum for {entry.repo_id}/{sibling.rfilename}; cannot verify it"
            )
        files.append(RemoteFile(sibling.rfilename, size, etag, sha256, sibling.blob_id))
    if not files:
        raise HubError(
            Failure.NOT_FOUND,
            f"{entry.repo_id} at {entry.revision} has no file matching {', '.join(entry.allow_patterns)}; "
            "the repository changed: pin a revision in the catalogue",
        )
    return str(info.sha), files


def pull(
    entry: CatalogEntry,
    progress: Progress | None = None,
    token: str | None = None,
    cache: Path | None = None,
) -> Path:
    """Download ``entry`` into the HF cache (resuming partial files) and return its checkpoint folder.

    A complete copy already in the cache is returned without any request. For an assembled entry
    every source is pulled (one progress bar over all of them) and the folder is then assembled.
    """
    found = find_cached(entry, cache)
    if found is not None:
        log.info("%s is already in the cache at %s", entry.name, found)
        return found
    plans = []  # (source, commit, files) of each source not complete yet
    for source in sources(entry):
        if _find_snapshot(source, cache) is None:
            plans.append((source, *remote_files(source, token)))
    total = sum(f.size for _, _, files in plans for f in files)
    offset = 0
    for source, commit, files in plans:

        def shifted(done: int, _total: int, name: str, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + done, total, name)

        _pull_snapshot(source, commit, files, shifted, token, cache)
        offset += sum(f.size for f in files)
    if not entry.assembled:
        snapshot = _find_snapshot(entry, cache)
        assert snapshot is not None, "a snapshot pulled to the end is complete"
        return snapshot
    return _assemble(entry, cache)


def _pull_snapshot(
    entry: CatalogEntry, commit: str, files: list[RemoteFile], progress: Progress, token: str | None, cache: Path | None
) -> Path:
    """Fetch ``files`` of ``entry``'s repository at ``commit`` into the cache and stamp the snapshot."""
    storage = repo_folder(entry.repo_id, cache)
    snapshot = storage / "snapshots" / commit
    blobs = storage / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    total = sum(f.size for f in files)
    have = {f.path: _bytes_on_disk(blobs, snapshot, f) for f in files}
    _check_free_space(blobs, total - sum(have.values()), entry)
    done = sum(have.values())
    for file in files:
        pointer = snapshot / file.path
        if pointer.is_file() and pointer.stat().st_size == file.size:
            continue
        start = done - have[file.path]

        def report(n: int, file: RemoteFile = file, start: int = start) -> None:
            if progress is not None:
                progress(start + n, total, file.path)

        _fetch(entry, commit, file, blobs, token, report)
        _link(blobs / file.etag, pointer)
        done = start + file.size
        if progress is not None:
            progress(done, total, file.path)
    if not _is_commit(entry.revision):
        refs = storage / "refs"
        refs.mkdir(exist_ok=True)
        _atomic_write(refs / entry.revision, commit)
    _write_stamp(storage, entry, commit, files)
    return snapshot


def _write_stamp(storage: Path, entry: CatalogEntry, commit: str, files: list[RemoteFile]) -> None:
    """Record ``files`` (and the patterns that chose them) as complete, keeping what an earlier pull recorded."""
    path = storage / COMPLETE_STAMP.format(commit=commit)
    listed: dict[str, int] = {}
    patterns: list[str] = []
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        listed = {f["path"]: int(f["size"]) for f in old["files"]}
        patterns = list(old.get("allow_patterns", []))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    listed.update({f.path: f.size for f in files})
    patterns += [p for p in entry.allow_patterns if p not in patterns]
    stamp = {
        "repo_id": entry.repo_id,
        "commit": commit,
        "allow_patterns": patterns,
        "files": [{"path": p, "size": n} for p, n in sorted(listed.items())],
    }
    _atomic_write(path, json.dumps(stamp, indent=1))


def _assemble(entry: CatalogEntry, cache: Path | None) -> Path:
    """Build ``entry``'s checkpoint folder from its complete sources; see the module docstring."""
    placed: dict[str, Path] = {}  # file name in the folder -> the snapshot file it links to
    commits: dict[str, str] = {}
    for source in sources(entry):
        snapshot = _find_snapshot(source, cache)
        if snapshot is None:
            raise HubError(
                Failure.INTERRUPTED, f"{source.repo_id} is not complete in the cache; pull {entry.name} again"
            )
        commits[source.repo_id] = snapshot.name
        for repo_path in _stamp_files(source, snapshot, cache):
            name = PurePosixPath(repo_path).name
            if name in placed or name in dict(entry.generated_files):
                raise HubError(
                    Failure.NOT_FOUND,
                    f"{entry.name}: two of its files are called {name!r} ({source.repo_id}/{repo_path}); "
                    "the catalogue entry must select files with distinct names",
                )
            placed[name] = snapshot / repo_path
    folder = assembled_folder(entry, cache)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stamp_path = folder.parent / f"{entry.name}.json"
    stamp_path.unlink(missing_ok=True)  # from here on the folder is incomplete until the new stamp is written
    work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", suffix=".assembling", dir=folder.parent))
    try:
        for name, target in placed.items():
            _link_or_copy(target, work / name)
        for name, text in entry.generated_files:
            (work / name).write_text(text, encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(work, folder)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    files = [{"name": p.name, "size": p.stat().st_size} for p in sorted(folder.iterdir())]
    _atomic_write(stamp_path, json.dumps({"entry": entry.name, "sources": commits, "files": files}, indent=1))
    log.info("assembled %s in %s from %s", entry.name, folder, ", ".join(f"{r}@{c[:12]}" for r, c in commits.items()))
    return folder


def _link_or_copy(target: Path, link: Path) -> None:
    """``link`` -> ``target``: a relative symlink, else a hard link, else a copy (Windows without symlinks)."""
    try:
        os.symlink(os.path.relpath(target, link.parent), link)
        return
    except OSError:
        pass
    real = target.resolve()
    try:
        os.link(real, link)
    except OSError:
        shutil.copyfile(real, link)


def _bytes_on_disk(blobs: Path, snapshot: Path, file: RemoteFile) -> int:
    """Bytes of ``file`` already here: all of it (in the snapshot or as a blob), or its partial file."""
    for done in (snapshot / file.path, blobs / file.etag):
        if done.is_file() and done.stat().st_size == file.size:
            return file.size
    partial = blobs / f"{file.etag}.incomplete"
    return min(partial.stat().st_size, file.size) if partial.is_file() else 0


def _check_free_space(folder: Path, needed: int, entry: CatalogEntry) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise HubError(
            Failure.DISK_FULL,
            f"not enough disk space for {entry.name}: {needed / 1e9:.2f} GB still to download, {free / 1e9:.2f} GB "
            f"free "
            f"in {folder}. Free some space, or set HF_HOME to a folder on a larger disk, then pull again",
        )


def _fetch(
    entry: CatalogEntry, commit: str, file: RemoteFile, blobs: Path, token: str | None, report: Callable[[int], None]
) -> None:
    """Fetch one file into ``blobs/<etag>``, continuing ``<etag>.incomplete``, and verify it."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    blob = blobs / file.etag
    if blob.is_file() and blob.stat().st_size == file.size:
        return
    partial = blobs / f"{file.etag}.incomplete"
    url = hf_hub_url(entry.repo_id, file.path, revision=commit)
    headers = build_hf_headers(token=token)
    with _translated_errors(entry, partial):
        for attempt in range(1, RETRIES + 1):
            before = partial.stat().st_size if partial.is_file() else 0
            try:
                _stream(url, headers, partial, file.size, report)
                break
            except Exception as exc:  # a cut connection: try again while bytes keep arriving
                grew = (partial.stat().st_size if partial.is_file() else 0) > before
                if not (grew and attempt < RETRIES and _transient(exc)):
                    raise
                log.warning("%s: %s; continuing (attempt %d of %d)", file.path, exc, attempt + 1, RETRIES)
    problem = _verify(partial, file)
    if problem:
        partial.unlink(missing_ok=True)
        raise HubError(
            Failure.CORRUPT,
            f"{entry.repo_id}/{file.path} arrived corrupt ({problem}) and was deleted; pull again to fetch it anew "
            "(if it happens again, a proxy or mirror is altering the file)",
        )
    os.replace(partial, blob)


def _stream(url: str, headers: Mapping[str, str], partial: Path, size: int, report: Callable[[int], None]) -> None:
    """GET ``url`` into ``partial``, continuing it with a Range request; every chunk is on disk when the next is
    asked for."""
    from huggingface_hub import constants
    from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

    resume = partial.stat().st_size if partial.is_file() else 0
    if resume > size:
        partial.unlink()
        resume = 0
    if resume == size:
        return
    request_headers = dict(headers)
    if resume:
        request_headers["Range"] = f"bytes={resume}-"
        log.info("%s: continuing at byte %d of %d", partial.name, resume, size)
    with http_stream_backoff(
        method="GET",
        url=url,
        headers=request_headers,
        timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
        retry_on_exceptions=(),
        retry_on_status_codes=(408, 429),
    ) as response:
        hf_raise_for_status(response)
        with partial.open("ab") as sink:
            if resume and response.status_code == 200:  # the server ignored the Range: start again
                sink.seek(0)
                sink.truncate()
                resume = 0
            done, last = resume, 0.0
            for chunk in response.iter_bytes():  # as it arrives, so a cut loses nothing already received
                sink.write(chunk)
                sink.flush()
                done += len(chunk)
                now = time.monotonic()
                if now - last >= 0.1:
                    last = now
                    report(done)
    if done != size:
        raise OSError(f"Consistency check failed: {partial.name} has {done} bytes, the Hub said {size}")


def _transient(exc: BaseException) -> bool:
    import httpx2

    return isinstance(exc, (httpx2.RemoteProtocolError, httpx2.ReadTimeout, httpx2.ReadError))


def _verify(path: Path, file: RemoteFile) -> str:
    """'' when ``path`` is ``file``; else what differs."""
    size = path.stat().st_size
    if size != file.size:
        return f"{size} bytes instead of {file.size}"
    if file.sha256:
        digest = hashlib.sha256()
    elif file.blob_id:
        digest = hashlib.sha1()
        digest.update(f"blob {size}\0".encode())
    else:
        return ""
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    expected = file.sha256 or file.blob_id
    actual = digest.hexdigest()
    return "" if actual == expected else f"{'sha256' if file.sha256 else 'git sha1'} {actual} instead of {expected}"


def _link(blob: Path, pointer: Path) -> None:
    """``pointer`` (a snapshot path) -> ``blob``: a relative symlink, or the file itself where symlinks are refused."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:  # Windows without developer mode: keep one copy, in the snapshot (as huggingface_hub does)
        os.replace(blob, pointer)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class _translated_errors:
    """Turns huggingface_hub, httpx and OS errors into HubErrors that say what to do."""

    def __init__(self, entry: CatalogEntry, partial: Path | None = None):
        self.entry = entry
        self.partial = partial

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> bool:
        if exc is None or isinstance(exc, HubError):
            return False
        error = translate(exc, self.entry, self.partial)
        if error is None:
            return False
        raise error from exc


def translate(exc: BaseException, entry: CatalogEntry, partial: Path | None = None) -> HubError | None:
    """A HubError for ``exc`` raised while talking to the Hub, or None to let it through."""
    import httpx2
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    hub = endpoint()
    kept = (
        f" The {partial.stat().st_size / 1e6:.1f} MB already fetched are kept: run the same pull again to continue."
        if partial is not None and partial.is_file() and partial.stat().st_size
        else ""
    )
    if isinstance(exc, GatedRepoError) or (
        isinstance(exc, HfHubHTTPError) and getattr(exc.response, "status_code", None) in (401, 403) and entry.gated
    ):
        return HubError(
            Failure.GATED,
            f"{entry.repo_id} is gated: accept its licence at {hub}/{entry.repo_id} while logged in, create a read "
            f"token at "
            f"{hub}/settings/tokens, and set it in the environment variable HF_TOKEN (or run `hf auth login`); then "
            f"pull again",
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubError(Failure.NOT_FOUND, f"{entry.repo_id} has no revision {entry.revision!r} on {hub}")
    if isinstance(exc, RepositoryNotFoundError):
        return HubError(
            Failure.NOT_FOUND,
            f"{entry.repo_id} was not found on {hub} (or it is private: set HF_TOKEN to a token that can read it)",
        )
    if isinstance(exc, httpx2.ProxyError):
        proxy = (
            os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY") or "the proxy"
        )
        return HubError(
            Failure.PROXY,
            f"the proxy {proxy} refused the connection to {hub} ({exc}). Check HTTPS_PROXY (and the proxy's login), "
            f"or copy the model from another computer with `models export` / `models import`.{kept}",
        )
    if isinstance(exc, (httpx2.ConnectError, httpx2.TimeoutException, httpx2.RemoteProtocolError, httpx2.NetworkError)):
        return HubError(
            Failure.NO_NETWORK,
            f"cannot reach {hub} ({type(exc).__name__}: {exc}). Check the network connection, set HTTPS_PROXY if "
            f"you are behind "
            f"a proxy or HF_ENDPOINT for a mirror, or copy the model from another computer with `models export` / "
            f"`models import`.{kept}",
        )
    if isinstance(exc, HfHubHTTPError):
        status = getattr(exc.response, "status_code", "?")
        return HubError(Failure.INTERRUPTED, f"{hub} answered HTTP {status} for {entry.repo_id}: {exc}.{kept}")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return HubError(
            Failure.DISK_FULL,
            f"the disk filled up while writing {exc.filename or partial or 'the download'}. Free some space (or set "
            f"HF_HOME to a "
            f"larger disk) and pull again.{kept}",
        )
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return HubError(Failure.INTERRUPTED, f"the download of {entry.repo_id} stopped early: {exc}.{kept}")
    if isinstance(exc, KeyboardInterrupt):
        return HubError(Failure.INTERRUPTED, f"the download of {entry.repo_id} was interrupted.{kept}")
    return None


# --- offline bundles ----------------------------------------------------------------------------


def export_bundle(
    name: str, folder: Path, table: Mapping[str, Any], zip_path: Path, catalog_name: str | None = None
) -> Path:
    """Write ``folder``'s files and a manifest (the models entry, the catalogue name) into ``zip_path`` atomically."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    entry = {k: v for k, v in table.items() if k != "path"}
    manifest = {
        "format": BUNDLE_FORMAT,
        "name": name,
        "catalog_name": catalog_name,
        "models_entry": entry,
        "files": [
            {"path": p.relative_to(folder).as_posix(), "size": p.stat().st_size, "sha256": _sha256(p)} for p in files
        ],
    }
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{zip_path.name}.", suffix=".part", dir=zip_path.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as bundle:
            bundle.writestr(BUNDLE_MANIFEST, json.dumps(manifest, indent=1))
            for p in files:  # weights do not compress: stored, so export and import run at disk speed
                bundle.write(p, f"{name}/{p.relative_to(folder).as_posix()}")
        os.replace(tmp, zip_path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise HubError(
                Failure.DISK_FULL, f"the disk filled up while writing {zip_path}; free some space and export again"
            ) from exc
        raise
    return zip_path


def read_manifest(zip_path: Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(zip_path) as bundle:
            manifest = json.loads(bundle.read(BUNDLE_MANIFEST))
    except (OSError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise HubError(
            Failure.BAD_BUNDLE,
            f"{zip_path} is not a model bundle written by `models export` ({type(exc).__name__}: {exc})",
        ) from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != BUNDLE_FORMAT
        or not isinstance(manifest.get("models_entry"), dict)
    ):
        raise HubError(
            Failure.BAD_BUNDLE, f"{zip_path}: its {BUNDLE_MANIFEST} is not a bundle manifest of format {BUNDLE_FORMAT}"
        )
    return manifest


def import_bundle(zip_path: Path, target: Path, name: str) -> Path:
    """Unpack the bundle's files into ``target`` (checked against the manifest); a temp folder renamed at the end."""
    manifest = read_manifest(zip_path)
    source_name = manifest["name"]
    target = Path(target)
    if target.exists():
        raise HubError(Failure.BAD_BUNDLE, f"{target} already exists; remove it or import under another --name")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".importing", dir=target.parent))
    try:
        with zipfile.ZipFile(zip_path) as bundle:
            for item in manifest["files"]:
                rel = Path(item["path"])
                if rel.is_absolute() or ".." in rel.parts:
                    raise HubError(Failure.BAD_BUNDLE, f"{zip_path}: unsafe path {item['path']!r} in the manifest")
                out = work / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                with bundle.open(f"{source_name}/{rel.as_posix()}") as src, out.open("wb") as dst:
                    while chunk := src.read(1 << 20):
                        digest.update(chunk)
                        dst.write(chunk)
                if digest.hexdigest() != item["sha256"]:
                    raise HubError(
                        Failure.CORRUPT,
                        f"{zip_path}: {rel} is corrupt (sha256 differs from the manifest); copy the bundle again",
                    )
        os.replace(work, target)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise HubError(
                Failure.DISK_FULL, f"the disk filled up while unpacking into {target.parent}; free some space"
            ) from exc
        raise
    except KeyError as exc:
        raise HubError(Failure.BAD_BUNDLE, f"{zip_path} lacks a file its manifest lists: {exc}") from None
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
