"""A local HTTP server on 127.0.0.1 that serves checkpoints with chosen misbehaviours (for tests and benchmarks).

Behaviours per path: ``ok`` (Range supported), ``flaky`` (the first response is cut
after half the bytes, then Range resumes work), ``truncated`` (always cut),
``slow`` (waits before answering), ``html`` (a web page), ``swap`` (the first
response is cut after half the bytes, then ``then`` is served instead: the file
changed), ``endless`` (no Content-Length, bytes until the client hangs up),
``trickle`` (``chunk`` bytes every ``delay_s``), ``huge`` (announces
``announce`` bytes), ``norange`` (cut once, then ignores Range: always 200),
``bad206`` (cut once, then answers a Range with 206 but sends the whole file);
any path not registered answers 404.

Validators (``validator``): ``etag`` (a strong ETag of the content, the default),
``weak`` (a weak ETag), ``last-modified`` (one date per version), ``none``.
``If-Range`` is honoured (a changed file is sent whole with 200) unless
``honour_if_range`` is False. ``HEAD`` answers with the headers of a GET.
Every GET is logged in ``requests`` (path, Range header) and ``seen`` (the
validator headers too); HEADs in ``heads``.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_VERSIONS = itertools.count(1)
FIRST_CUT = ("flaky", "swap", "norange", "bad206")
"""Behaviours whose first response is cut after half the bytes."""


@dataclass
class Served:
    data: bytes | Path
    """The bytes, or a file read from disk at each request (for large benchmark checkpoints)."""
    behaviour: str = "ok"
    delay_s: float = 0.0
    hits: int = 0
    validator: str = "etag"
    honour_if_range: bool = True
    then: bytes | None = None
    chunk: int = 1024
    announce: int | None = None
    version: int = field(default_factory=lambda: next(_VERSIONS))

    def payload(self) -> bytes:
        if self.behaviour == "swap" and self.hits > 1 and self.then is not None:
            return self.then
        return self.data.read_bytes() if isinstance(self.data, Path) else self.data

    def validators(self, data: bytes) -> dict[str, str]:
        tag = '"' + hashlib.sha1(data).hexdigest()[:16] + '"'
        version = self.version + (1000 if data is self.then else 0)
        return {"etag": {"ETag": tag}, "weak": {"ETag": "W/" + tag},
                "last-modified": {"Last-Modified": formatdate(1e9 + version, usegmt=True)},
                "none": {}}[self.validator]


@dataclass
class CheckpointServer:
    files: dict[str, Served] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    seen: list[dict[str, str | None]] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)

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

            def do_HEAD(self) -> None:  # noqa: N802 - http.server API
                server.heads.append(self.path)
                served = server.files.get(self.path)
                if served is None:
                    self.send_error(404)
                    return
                data = served.payload()
                self.send_response(200)
                self._headers(served, data, len(data))

            def _headers(self, served: Served, data: bytes, length: int | None) -> None:
                self.send_header("Content-Type", "application/octet-stream")
                for key, value in served.validators(data).items():
                    self.send_header(key, value)
                if length is not None:
                    self.send_header("Content-Length", str(length))
                self.end_headers()

            def _get(self) -> None:
                range_header = self.headers.get("Range")
                server.requests.append((self.path, range_header))
                server.seen.append({"path": self.path, "Range": range_header, "If-Range": self.headers.get("If-Range")})
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
                if served.behaviour in ("endless", "trickle", "huge"):
                    return self._stream(served)
                self._file(served, range_header)

            def _file(self, served: Served, range_header: str | None) -> None:
                data, start = served.payload(), 0
                if_range = self.headers.get("If-Range")
                current = served.validators(data)
                same = if_range is None or not served.honour_if_range or if_range in current.values()
                if range_header and range_header.startswith("bytes=") and same and served.behaviour != "norange":
                    start = int(range_header[len("bytes="):].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    if served.behaviour == "bad206":
                        start = 0
                else:
                    self.send_response(200)
                body = data[start:]
                self._headers(served, data, len(body))
                cut = served.behaviour == "truncated" or (served.behaviour in FIRST_CUT and served.hits == 1)
                self.wfile.write(body[: len(body) // 2] if cut else body)
                if cut:
                    self.wfile.flush()
                    self.close_connection = True

            def _stream(self, served: Served) -> None:
                """endless: chunks until the client hangs up; trickle: the file, slowly; huge: announce more."""
                data = served.payload()
                self.send_response(200)
                length = {"endless": None, "trickle": len(data), "huge": served.announce}[served.behaviour]
                self._headers(served, data, length)
                if served.behaviour == "huge":
                    self.wfile.write(data)
                    self.close_connection = True
                    return
                for k in itertools.count():
                    piece = data[:served.chunk] if served.behaviour == "endless" else \
                        data[k * served.chunk:(k + 1) * served.chunk]
                    if not piece:
                        return
                    self.wfile.write(piece)
                    self.wfile.flush()
                    if served.delay_s:
                        time.sleep(served.delay_s)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, data: bytes | Path, behaviour: str = "ok", delay_s: float = 0.0, **options: object) -> None:
        self.files[path] = Served(data, behaviour, delay_s, **options)

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
