"""A static file server that answers HTTP range requests, as a cloud-optimised GeoTIFF host does.

    python -m tests.engine.range_server FOLDER     # prints its port, then serves FOLDER on 127.0.0.1

Run it in its own process: rasterio holds the GIL while GDAL fetches, so a server thread in the
engine's process would never answer. Every request is appended to FOLDER/requests.log.
"""

from __future__ import annotations

import http.server
import re
import sys
from pathlib import Path


def serve(root: Path) -> None:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
            self._send(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._send(head=False)

        def _send(self, head: bool) -> None:
            with (root / "requests.log").open("a", encoding="utf-8") as log:
                log.write(f"{self.command} {self.path}\n")
            path = root / self.path.lstrip("/")
            if not path.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            wanted = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if wanted:
                start = int(wanted[1])
                end = min(int(wanted[2]) if wanted[2] else len(data) - 1, len(data) - 1)
                body = data[start : end + 1]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            else:
                body = data
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
