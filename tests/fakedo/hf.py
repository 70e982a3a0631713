"""A stand-in for Hugging Face's file downloads at a stated bandwidth: `/<repo>/resolve/<revision>/<file>` on
127.0.0.1, HEAD with Content-Length and GET with Range (what infra/fetch-url.sh uses), the body paced to
`bytes_per_s`, so a download on a fake droplet takes the time the stated bandwidth gives and can be seen.

    with serve_files({"/org/repo/resolve/main/m.gguf": path}, bytes_per_s=4 << 20) as hf:
        options["hf_endpoint"] = hf.url
        ...
        hf.served   # bytes sent, by path

Files are read from disk when asked for (a model file may be large). Pacing: each 64 KiB chunk is sent no earlier
than its share of the bandwidth allows since the response began; a client that reads slower just takes longer.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHUNK = 64 << 10


@dataclass
class StandInHF:
    url: str
    files: dict[str, Path]
    bytes_per_s: float
    served: Counter[str] = field(default_factory=Counter)  # bytes sent per path
    gets: Counter[str] = field(default_factory=Counter)  # GET requests per path


def _handler(hf: StandInHF) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _file(self) -> Path | None:
            path = hf.files.get(self.path.split("?")[0])
            if path is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
            return path

        def do_HEAD(self) -> None:  # noqa: N802
            path = self._file()
            if path is not None:
                self.send_response(200)
                self.send_header("Content-Length", str(path.stat().st_size))
                self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            path = self._file()
            if path is None:
                return
            size = path.stat().st_size
            start = int(self.headers.get("Range", "bytes=0-").split("=")[1].split("-")[0] or 0)
            self.send_response(206 if start else 200)
            self.send_header("Content-Length", str(size - start))
            self.end_headers()
            hf.gets[self.path] += 1
            began, sent = time.monotonic(), 0
            with open(path, "rb") as f:
                f.seek(start)
                while chunk := f.read(CHUNK):
                    due = began + (sent + len(chunk)) / hf.bytes_per_s
                    pause = due - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    sent += len(chunk)
                    hf.served[self.path] += len(chunk)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def serve_files(files: dict[str, Path], *, bytes_per_s: float) -> Iterator[StandInHF]:
    hf = StandInHF(url="", files=dict(files), bytes_per_s=bytes_per_s)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hf))
    server.daemon_threads = True
    hf.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield hf
    finally:
        server.shutdown()
        server.server_close()
