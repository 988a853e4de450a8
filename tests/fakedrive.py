"""A fake Google Drive and a fake GitHub on 127.0.0.1, answering as the real services do (for tests).

``FakeDrive``: ``/download?id=<id>&export=download&confirm=t`` (where ``gdrive:<id>``
starts) answers per file ``page``: ``direct`` (the bytes, ``Range`` ignored),
``form`` / ``form-at`` (the virus-scan warning page with ``#download-form`` and its
hidden ``id``, ``export``, ``confirm``, ``uuid`` [and ``at``] inputs), ``link`` (the
older page: a ``download_warning`` cookie and ``href="/uc?export=download&amp;..."``;
``/uc`` without the cookie answers the page again, with it 302s to a signed URL),
``json`` (a ``"downloadUrl"`` field, ``\\u003d``/``\\u0026`` escaped). ``refuse``:
``quota`` (the quota page, HTTP 200), ``quota403``, ``subcaption`` (only a
``uc-error-subcaption``), ``signin`` (302 to a sign-in page), ``denied`` (403 "You
need access"); ``busy=n`` answers 429 with ``Retry-After`` n times first; an unknown
id answers 404. Resolved URLs (the form's, ``/file/<token>``) honour ``Range`` and
``If-Range``, send ``Content-Disposition`` and an ETag, and expire after
``token_uses`` responses (then 403). ``cut_first`` cuts the first byte response in half.

``FakeGitHub``: ``/<owner>/<repo>/releases/download/<tag>/<name>`` 302s to a fresh
``/signed/<token>?X-Amz-Expires=...`` that serves one response, then answers 403.

Every request is logged in ``log`` as (kind, token or id, Range header).
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

QUOTA_PAGE = ("<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>"
              "<a href=\"https://accounts.google.com/ServiceLogin\">Sign in</a><div class=\"uc-main\">"
              "<p class=\"uc-error-caption\">Sorry, you can&#39;t view or download this file at this time.</p>"
              "<p class=\"uc-error-subcaption\">Too many users have viewed or downloaded this file recently. "
              "Please try accessing the file again later. If the file you are trying to access is particularly "
              "large or is shared with many people, it may take up to 24 hours to be able to view or download "
              "the file.</p></div></body></html>")
SUBCAPTION_PAGE = ("<!DOCTYPE html><html><head><title>Google Drive</title></head><body><div class=\"uc-main\">"
                   "<p class=\"uc-error-caption\">Sorry, you can&#39;t view or download this file at this time.</p>"
                   "<p class=\"uc-error-subcaption\">Please try again in a while.</p></div></body></html>")
SIGNIN_PAGE = ("<!DOCTYPE html><html><head><title>Sign in - Google Accounts</title></head><body>"
               "<form action=\"/signin/v2/identifier\"><input type=\"email\" name=\"identifier\"></form>"
               "</body></html>")
DENIED_PAGE = ("<!DOCTYPE html><html><head><title>Google Drive - You need access</title></head><body>"
               "<h1>You need access</h1><p>Request access, or switch to an account with access.</p></body></html>")
NOT_FOUND_PAGE = ("<!DOCTYPE html><html><head><title>Error 404 (Not Found)!!1</title></head><body>"
                  "<p><b>404.</b> <ins>That's an error.</ins></p></body></html>")
_TOKENS = itertools.count(1)


@dataclass
class DriveFile:
    data: bytes
    name: str = "model.pt"
    page: str = "form"
    refuse: str | None = None
    busy: int = 0
    retry_after: int = 1
    cut_first: bool = False
    token_uses: int = 100
    delay_s: float = 0.0
    served: int = 0


class _Fake:
    """The HTTP server, the log and the byte serving both fakes share."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, str | None]] = []
        self.tokens: dict[str, list] = {}  # token -> [key, uses left]
        self.lock = threading.Lock()
        self.active = self.max_active = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                try:
                    fake.route(self, urlsplit(self.path))
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def route(self, h: BaseHTTPRequestHandler, parts) -> None:  # noqa: ANN001
        raise NotImplementedError

    def mint(self, key: str, uses: int) -> str:
        token = f"t{next(_TOKENS)}"
        self.tokens[token] = [key, uses]
        return token

    def spend(self, token: str) -> str | None:
        """The key of a live token (one use spent), or None when it is unknown or expired."""
        with self.lock:
            entry = self.tokens.get(token)
            if not entry or entry[1] <= 0:
                return None
            entry[1] -= 1
            return entry[0]

    @staticmethod
    def page(h: BaseHTTPRequestHandler, status: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        h.send_response(status)
        h.send_header("Content-Type", "text/html; charset=utf-8")
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def send_bytes(self, h: BaseHTTPRequestHandler, f: DriveFile, ranged: bool) -> None:
        """The file, honouring ``Range`` + ``If-Range`` when ``ranged``; the first answer cut when asked."""
        data, etag, start = f.data, '"' + hashlib.sha1(f.data).hexdigest()[:16] + '"', 0
        asked, if_range = h.headers.get("Range"), h.headers.get("If-Range")
        f.served += 1
        if ranged and asked and (if_range is None or if_range == etag):
            start = int(asked[len("bytes="):].split("-")[0])
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Disposition", f"attachment; filename=\"{f.name}\"; filename*=UTF-8''{quote(f.name)}")
        h.send_header("ETag", etag)
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(f.delay_s)
            body = data[start:]
            cut = f.cut_first and f.served == 1
            h.wfile.write(body[: len(body) // 2] if cut else body)
            if cut:
                h.wfile.flush()
                h.close_connection = True
        finally:
            with self.lock:
                self.active -= 1


class FakeDrive(_Fake):
    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, DriveFile] = {}

    def add(self, file_id: str, data: bytes, **options: object) -> DriveFile:
        self.files[file_id] = DriveFile(data, **options)
        return self.files[file_id]

    def kinds(self) -> list[tuple[str, str | None]]:
        """(kind, Range) of each request, tokens left out."""
        return [(kind, rng) for kind, _, rng in self.log]

    def route(self, h: BaseHTTPRequestHandler, parts) -> None:  # noqa: ANN001
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        rng = h.headers.get("Range")
        if parts.path == "/download" and "uuid" in query:
            self.log.append(("confirmed", query["uuid"], rng))
            key = self.spend(query["uuid"])
            if key and self.files[key].page == "form-at" and query.get("at") != f"at-{query['uuid']}":
                key = None
            return self._resolved(h, key)
        if parts.path == "/download":
            self.log.append(("start", query.get("id", ""), rng))
            return self._start(h, query.get("id", ""))
        if parts.path == "/uc":
            self.log.append(("uc", query.get("id", ""), rng))
            return self._uc(h, query)
        if parts.path.startswith("/file/"):
            self.log.append(("file", parts.path[len("/file/"):], rng))
            return self._resolved(h, self.spend(parts.path[len("/file/"):]))
        if parts.path == "/ServiceLogin":
            self.log.append(("signin", "", rng))
            return self.page(h, 200, SIGNIN_PAGE)
        self.page(h, 404, NOT_FOUND_PAGE)

    def _resolved(self, h: BaseHTTPRequestHandler, key: str | None) -> None:
        if key is None:
            return self.page(h, 403, "<html><body>Access denied: this link has expired.</body></html>")
        self.send_bytes(h, self.files[key], ranged=True)

    def _start(self, h: BaseHTTPRequestHandler, file_id: str) -> None:
        f = self.files.get(file_id)
        if f is None:
            return self.page(h, 404, NOT_FOUND_PAGE)
        if f.busy > 0:
            f.busy -= 1
            return self.page(h, 429, "<html><body>Too Many Requests</body></html>",
                             {"Retry-After": str(f.retry_after)})
        refusals = {"quota": (200, QUOTA_PAGE), "quota403": (403, QUOTA_PAGE), "subcaption": (200, SUBCAPTION_PAGE),
                    "denied": (403, DENIED_PAGE)}
        if f.refuse in refusals:
            return self.page(h, *refusals[f.refuse])
        if f.refuse == "signin":
            h.send_response(302)
            h.send_header("Location", f"{self.url}/ServiceLogin?continue=/download?id={file_id}")
            h.end_headers()
            return
        if f.page == "direct":
            return self.send_bytes(h, f, ranged=False)
        self.page(h, 200, *self._warning(file_id, f))

    def _warning(self, file_id: str, f: DriveFile) -> tuple[str, dict[str, str]]:
        """The virus-scan warning page of a file's variant, and its headers."""
        token = self.mint(file_id, f.token_uses)
        head = ("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
                "<a href=\"https://accounts.google.com/ServiceLogin\">Sign in</a>"
                f"<p class=\"uc-warning-caption\">Google Drive can't scan this file for viruses.</p>"
                f"<p class=\"uc-warning-subcaption\">{f.name} is too large for Google to scan.</p>")
        if f.page in ("form", "form-at"):
            at = f'<input type="hidden" name="at" value="at-{token}">' if f.page == "form-at" else ""
            return (head + f'<form id="download-form" action="{self.url}/download" method="get">'
                    '<input type="submit" id="uc-download-link" value="Download anyway">'
                    f'<input type="hidden" name="id" value="{file_id}"><input type="hidden" name="export" '
                    f'value="download"><input type="hidden" name="confirm" value="t">'
                    f'<input type="hidden" name="uuid" value="{token}">{at}</form></body></html>', {})
        if f.page == "link":
            return (head + f'<a id="uc-download-link" href="/uc?export=download&amp;confirm={token}&amp;'
                    f'id={file_id}">Download anyway</a></body></html>',
                    {"Set-Cookie": f"download_warning_{file_id}={token}; Path=/; HttpOnly"})
        escaped = f"{self.url}/file/{token}?e\\u003ddownload\\u0026id\\u003d{file_id}".replace("/", "\\/")
        return head + f'<script>var data = {{"title":"{f.name}","downloadUrl":"{escaped}"}};</script>' \
                      "</body></html>", {}

    def _uc(self, h: BaseHTTPRequestHandler, query: dict[str, str]) -> None:
        file_id, token = query.get("id", ""), query.get("confirm", "")
        f = self.files.get(file_id)
        if f is None:
            return self.page(h, 404, NOT_FOUND_PAGE)
        if f"download_warning_{file_id}={token}" not in (h.headers.get("Cookie") or ""):
            return self.page(h, 200, *self._warning(file_id, f))  # no cookie: the warning again
        h.send_response(302)
        h.send_header("Location", f"{self.url}/file/{token}")
        h.end_headers()


class FakeGitHub(_Fake):
    """Release assets that redirect to signed URLs good for one response."""

    def __init__(self) -> None:
        super().__init__()
        self.assets: dict[str, DriveFile] = {}

    def add(self, path: str, data: bytes, **options: object) -> str:
        self.assets[path] = DriveFile(data, name=path.rsplit("/", 1)[-1], **options)
        return self.url + path

    def route(self, h: BaseHTTPRequestHandler, parts) -> None:  # noqa: ANN001
        rng = h.headers.get("Range")
        if parts.path in self.assets:
            token = self.mint(parts.path, 1)
            self.log.append(("release", parts.path, rng))
            h.send_response(302)
            h.send_header("Location", f"{self.url}/signed/{token}?X-Amz-Expires=300&X-Amz-Signature={token}")
            h.end_headers()
            return
        if parts.path.startswith("/signed/"):
            token = parts.path[len("/signed/"):]
            self.log.append(("signed", token, rng))
            key = self.spend(token)
            if key is None:
                return self.page(h, 403, "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code>"
                                         "<Message>Request has expired</Message></Error>")
            return self.send_bytes(h, self.assets[key], ranged=True)
        self.page(h, 404, NOT_FOUND_PAGE)
