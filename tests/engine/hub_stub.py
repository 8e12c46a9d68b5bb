"""A stand-in Hugging Face Hub on 127.0.0.1: the routes huggingface_hub 2.4 calls for a model download.

    hub = HubStub(); hub.add_repo("florence-community/Florence-2-base", folder); hub.start()
    env = {"HF_ENDPOINT": hub.url, ...}

Routes (as huggingface.co answers them):

- ``GET /api/models/{owner}/{name}[/revision/{rev}]`` (``?blobs=true``): id, sha and siblings with
  ``size``, ``blobId`` (git blob sha1) and, for LFS files (``*.safetensors``, ``*.bin``, ``*.pt``),
  ``lfs: {sha256, size, pointerSize}``. A gated repo answers 401 with ``X-Error-Code: GatedRepo``
  unless the request carries the token ``hub.token``.
- ``GET|HEAD /{owner}/{name}/resolve/{rev}/{path}``: the bytes, with ``ETag``, ``X-Repo-Commit``,
  ``Content-Length``, ``Accept-Ranges`` and ``Range: bytes=N-`` support (206 + Content-Range).

Switches: ``corrupt`` (a path whose bytes are served with one byte flipped), ``drop_after`` (path ->
bytes: the connection is cut after that many bytes of the body, and later requests for the path get
503 until the switch is cleared). ``served`` counts body bytes served per path and ``ranges`` the
Range headers seen.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Repo:
    def __init__(self, repo_id: str, files: dict[str, Path], gated: bool = False):
        self.repo_id = repo_id
        self.files = files  # repo path -> file on disk
        self.gated = gated
        digest = hashlib.sha1(repo_id.encode())
        for path in sorted(files):
            digest.update(path.encode() + files[path].read_bytes()[:1024])
        self.commit = digest.hexdigest()
        self.meta: dict[str, dict] = {}
        for path, file in files.items():
            data = file.read_bytes()
            entry = {"rfilename": path, "size": len(data), "blobId": git_blob_sha1(data)}
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            self.meta[path] = entry

    def etag(self, path: str) -> str:
        meta = self.meta[path]
        return meta["lfs"]["sha256"] if "lfs" in meta else meta["blobId"]


class HubStub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.token = "hf_stub_token"
        self.corrupt: set[str] = set()
        self.drop_after: dict[str, int] = {}
        self.served: dict[str, int] = {}
        self.ranges: list[tuple[str, str | None]] = []
        self.requests: list[str] = []
        self._lock = threading.Lock()
        self._dropped: set[str] = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def add_repo(self, repo_id: str, folder: Path, gated: bool = False) -> Repo:
        folder = Path(folder)
        files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        repo = self.repos[repo_id] = Repo(repo_id, files, gated)
        return repo

    def start(self) -> HubStub:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset_counters(self) -> None:
        with self._lock:
            self.served.clear()
            self.ranges.clear()
            self.requests.clear()
            self._dropped.clear()

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self.served[path] = self.served.get(path, 0) + n

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _send_error(self, status: int, code: str | None = None, message: str = "") -> None:
                body = json.dumps({"error": message or code or "error"}).encode()
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                    self.send_header("X-Error-Message", message)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authorised(self, repo: Repo) -> bool:
                return not repo.gated or self.headers.get("Authorization") == f"Bearer {hub.token}"

            def _serve(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                api = re.match(r"^/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?$", path)
                if api:
                    return self._info(api.group(1), api.group(2) or "main", body)
                resolve = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if resolve:
                    return self._file(resolve.group(1), resolve.group(2), resolve.group(3), body)
                self._send_error(404, "RepoNotFound", "Repository not found")

            def _repo(self, repo_id: str) -> Repo | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    self._send_error(404, "RepoNotFound", "Repository not found")
                elif not self._authorised(repo):
                    self._send_error(
                        401,
                        "GatedRepo",
                        "Access to model is restricted. You must have access to it and be authenticated.",
                    )
                    return None
                return repo

            def _info(self, repo_id: str, revision: str, body: bool) -> None:
                repo = self._repo(repo_id)
                if repo is None:
                    return
                if revision not in ("main", repo.commit):
                    return self._send_error(404, "RevisionNotFound", "Invalid rev id")
                data = json.dumps(
                    {"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                     "gated": "manual" if repo.gated else False, "siblings": list(repo.meta.values())}
                ).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _file(self, repo_id: str, revision: str, file: str, body: bool) -> None:
                repo = self._repo(repo_id)
                if repo is None:
                    return
                if revision not in ("main", repo.commit):
                    return self._send_error(404, "RevisionNotFound", "Invalid rev id")
                if file not in repo.files:
                    return self._send_error(404, "EntryNotFound", "Entry not found")
                if body and file in hub._dropped:
                    return self._send_error(503, None, "temporarily unavailable")
                data = repo.files[file].read_bytes()
                if file in hub.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                wanted = self.headers.get("Range")
                hub.ranges.append((file, wanted))
                match = re.match(r"bytes=(\d+)-$", wanted or "")
                self.send_response(206 if match else 200)
                if match:
                    start = int(match.group(1))
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", f'"{repo.etag(file)}"')
                self.send_header("X-Repo-Commit", repo.commit)
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if not body:
                    return
                payload = data[start:]
                cut = hub.drop_after.get(file)
                if cut is not None and cut - start < len(payload):
                    part = payload[: max(cut - start, 0)]
                    self.wfile.write(part)
                    self.wfile.flush()
                    hub._count(file, len(part))
                    hub._dropped.add(file)
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                for i in range(0, len(payload), 1 << 20):
                    chunk = payload[i : i + (1 << 20)]
                    self.wfile.write(chunk)
                    hub._count(file, len(chunk))

        return Handler
