"""A local HTTP server on 127.0.0.1 that serves checkpoints with chosen misbehaviours (for tests and benchmarks).

Behaviours per path: ``ok`` (Range supported), ``flaky`` (the first response is cut
after half the bytes, then Range resumes work), ``truncated`` (always cut),
``slow`` (waits before answering), ``html`` (a web page), and any path not
registered answers 404. Every request is logged (path, Range header).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Served:
    data: bytes | Path
    """The bytes, or a file read from disk at each request (for large benchmark checkpoints)."""
    behaviour: str = "ok"
    delay_s: float = 0.0
    hits: int = 0

    def payload(self) -> bytes:
        return self.data.read_bytes() if isinstance(self.data, Path) else self.data


@dataclass
class CheckpointServer:
    files: dict[str, Served] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                try:
                    self._get()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeouts in tests)
                    pass

            def _get(self) -> None:
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                served = server.files.get(self.path)
                if served is None:
                    self.send_error(404)
                    return
                served.hits += 1
                if served.behaviour == "slow":
                    time.sleep(served.delay_s)
                if served.behaviour == "html":
                    body = b"<!DOCTYPE html><html><body>Quota exceeded</body></html>"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                data, start = served.payload(), 0
                if range_header and range_header.startswith("bytes="):
                    start = int(range_header[len("bytes="):].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = served.behaviour == "truncated" or (served.behaviour == "flaky" and served.hits == 1)
                self.wfile.write(body[: len(body) // 2] if cut else body)
                if cut:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, data: bytes | Path, behaviour: str = "ok", delay_s: float = 0.0) -> None:
        self.files[path] = Served(data, behaviour, delay_s)

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_directory(directory: Path) -> CheckpointServer:
    """Serve every file below ``directory`` at its relative path (read from disk per request)."""
    server = CheckpointServer()
    for path in directory.rglob("*"):
        if path.is_file():
            server.add("/" + path.relative_to(directory).as_posix(), path)
    return server


if __name__ == "__main__":  # python tests/checkpoint_server.py DIR: serve DIR until killed, print the URL
    import sys

    running = serve_directory(Path(sys.argv[1]))
    print(running.url, flush=True)
    running.thread.join()
