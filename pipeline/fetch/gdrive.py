"""Google Drive downloads: the virus-scan confirm pages, quota, permission and not-found answers.

``gdrive:<id>`` starts at ``<endpoint>/download?id=<id>&export=download&confirm=t``;
the endpoint is ``https://drive.usercontent.google.com`` unless
``FILTERLENS_GDRIVE_ENDPOINT`` names another (a proxy, or the tests' fake Drive),
read at each download. A large file first answers with a warning page whose
``#download-form`` (action URL + hidden inputs), older ``href="/uc?export=download..."``
link or ``"downloadUrl"`` JSON field leads to the bytes. ``DriveClient`` makes one
download's requests for ``pipeline.fetch.http`` (resume, ``If-Range``, retries and
sizes stay there): one ``requests.Session`` (Drive's cookies), ``Range`` only on
the resolved URL, resolved again once that URL stops serving the file.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urljoin, urlsplit, urlunsplit

from pipeline.errors import (
    DownloadError,
    DriveNotFoundError,
    DrivePageError,
    DrivePermissionError,
    DriveQuotaError,
)
from pipeline.fetch.http import Busy, content_range, download_http, retry_after
from pipeline.fetch.policy import FetchPolicy, TransferGuard
from pipeline.fetch.validators import drop_record, http_record, write_record

log = logging.getLogger(__name__)

ENDPOINT_ENV = "FILTERLENS_GDRIVE_ENDPOINT"
DEFAULT_ENDPOINT = "https://drive.usercontent.google.com"
MAX_HOPS = 4
PAGE_BYTES = 1 << 20
QUOTA_MARKERS = ("too many users have viewed or downloaded this file recently", "quota exceeded",
                 "ratelimitexceeded", "userratelimitexceeded", "download quota")
SIGN_IN_MARKERS = ("servicelogin", "accounts.google.com", "you need access", "request access", "sign in")
SUBCAPTION = re.compile(r'<p class="uc-error-subcaption">(.*?)</p>', re.S)


def endpoint() -> str:
    return (os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT).rstrip("/")


def start_url(file_id: str) -> str:
    """Where a ``gdrive:<id>`` download starts (also the partial file's and the cache record's ``url``)."""
    return f"{endpoint()}/download?id={file_id}&export=download&confirm=t"


class _DownloadForm(HTMLParser):
    """The ``#download-form``'s action and hidden inputs (entities unescaped)."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form" and a.get("id") == "download-form":
            self._inside, self.action = True, a.get("action") or ""
        elif tag == "input" and self._inside and (a.get("type") or "").lower() == "hidden" and a.get("name"):
            self.fields[str(a["name"])] = a.get("value") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False


def confirm_url(page: str, base: str) -> str | None:
    """The URL a warning page leads to (form, ``/uc?export=download`` link or ``downloadUrl``); None if none."""
    form = _DownloadForm()
    form.feed(page)
    if form.action is not None:
        parts = urlsplit(urljoin(base, form.action))
        query = {**dict(parse_qsl(parts.query)), **form.fields}
        return urlunsplit(parts._replace(query=urlencode(query)))
    link = re.search(r'href="(/uc\?export=download[^"]+)"', page)
    if link:
        return urljoin(base, html.unescape(link.group(1)))
    field = re.search(r'"downloadUrl":"((?:[^"\\]|\\.)+)"', page)
    if field:
        try:
            return str(json.loads(f'"{field.group(1)}"'))
        except ValueError:
            return field.group(1).replace("\\u003d", "=").replace("\\u0026", "&")
    return None


def file_name(headers: Any) -> str | None:  # noqa: ANN401 - requests' case-insensitive headers
    """The file name in ``Content-Disposition`` (``filename*=UTF-8''`` first), made safe for a path; None if none."""
    value = headers.get("Content-Disposition") or ""
    match = re.search(r"filename\*=UTF-8''([^;]+)", value, re.I) or re.search(r'filename="([^"]*)"', value)
    if not match:
        return None
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(unquote(match.group(1)).replace("\\", "/")).name)[:120]
    return name.strip("._") or None


def looks_like_checkpoint(path: Path, name: str | None) -> bool:
    """A zip, pickle or safetensors header (or an ``.onnx`` name): what ``pipeline.checkpoints`` can load."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")) or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return True
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return True
    return bool(name and name.lower().endswith(".onnx"))


def _is_file(response: Any, ranged: bool) -> bool:  # noqa: ANN401 - a Response
    ok = (200, 206, 416) if ranged else (200,)
    return response.status_code in ok and "text/html" not in response.headers.get("Content-Type", "")


def _read_page(response: Any) -> str:  # noqa: ANN401 - a Response
    try:
        return response.raw.read(PAGE_BYTES, decode_content=True).decode("utf-8", "replace")
    finally:
        response.close()


class DriveClient:
    """The requests of one Drive file's download (``pipeline.fetch.http.Client``), cookies kept between them."""

    def __init__(self, file_id: str, url: str, policy: FetchPolicy, hand: Path) -> None:
        import requests

        self.file_id, self.url, self.hand = file_id, url, hand
        self.host, self.limit = urlsplit(url).netloc, policy.drive_downloads
        self.session = requests.Session()
        self.resolved: str | None = None
        """The URL that served the bytes last (after the confirm page and any redirect): the one ``Range`` goes to."""
        self.name: str | None = None

    def open(self, headers: dict[str, str], timeout: tuple[float, float]) -> Any:  # noqa: ANN401 - a Response
        """The file's response: from the resolved URL when resuming, else (or once it expired) resolved afresh."""
        ranged = "Range" in headers
        if ranged and self.resolved:
            response = self.session.get(self.resolved, stream=True, headers=headers, timeout=timeout)
            if _is_file(response, ranged):
                return response
            response.close()
            log.info("gdrive:%s: the resolved URL answers HTTP %d now (expired?); resolving again",
                     self.file_id, response.status_code)
        response, sent_range = self._resolve(headers, timeout)
        if sent_range or not ranged:
            return response
        response.close()  # the start URL itself served the file: ask its final URL for the range
        response = self.session.get(self.resolved, stream=True, headers=headers, timeout=timeout)
        if not _is_file(response, ranged):
            self._refuse(response, _read_page(response))
            raise DrivePageError(f"{self._what()} the resolved URL does not serve the file; {self._advice()}")
        return response

    def check(self, part: Path) -> None:
        """Refuse bytes that are no checkpoint (a page sent as a file) before they get a name in the cache."""
        if not looks_like_checkpoint(part, self.name):
            raise DrivePageError(f"{self._what()} Google Drive sent {part.stat().st_size} bytes that are not a "
                                 f"checkpoint (no zip, pickle or safetensors header); {self._advice()}")

    def _resolve(self, headers: dict[str, str], timeout: tuple[float, float]) -> tuple[Any, bool]:
        """Follow warning pages from the start URL to the file: (its response, whether ``Range`` was sent).

        The start URL (a page, or the whole file) gets no ``Range``; the URLs a page leads to do.
        """
        url, seen = self.url, set()
        hop = {k: v for k, v in headers.items() if k not in ("Range", "If-Range")}
        for _ in range(MAX_HOPS):
            seen.add(url)
            response = self.session.get(url, stream=True, headers=hop, timeout=timeout)
            if _is_file(response, "Range" in hop):
                self.resolved, self.name = response.url, file_name(response.headers) or self.name
                return response, "Range" in hop
            page = _read_page(response)
            self._refuse(response, page)
            url, hop = confirm_url(page, response.url) or "", headers
            if not url or url in seen:
                break
        if _signs_in(page, response.url):
            raise DrivePermissionError(f"{self._what()} Google Drive asks to sign in or request access (the file "
                                       f"is not shared with anyone who has the link); {self._advice()}")
        raise DrivePageError(f"{self._what()} Google Drive sent a page with no download form, link or "
                             f"downloadUrl (HTTP {response.status_code}); {self._advice()}")

    def _refuse(self, response: Any, page: str) -> None:  # noqa: ANN401 - a Response
        """Raise what a non-file answer means: quota (transient), not found, access denied, server trouble."""
        status, low = response.status_code, page.lower()
        subcaption = SUBCAPTION.search(page)
        if status == 429 or any(m in low for m in QUOTA_MARKERS) or (subcaption and status != 404):
            wait = retry_after(response.headers)
            after = f" (Retry-After {wait:g} s)" if wait is not None else ""
            raise DriveQuotaError(f"{self._what()} Google Drive refuses for now: too many downloads of this file "
                                  f"recently{after}; retry later, or {self._advice()}", retry_after=wait)
        if status in (404, 410):
            raise DriveNotFoundError(f"{self._what()} Google Drive has no such file (HTTP {status}); check the id "
                                     f"in the zoo, or {self._advice()}")
        if status in (401, 403):
            raise DrivePermissionError(f"{self._what()} Google Drive denies access (HTTP {status}; the file is not "
                                       f"shared with anyone who has the link); {self._advice()}")
        if status >= 500:
            raise Busy(f"HTTP {status}", retry_after(response.headers))
        if status != 200:
            raise DownloadError(f"{self._what()} unexpected HTTP {status} from Google Drive")

    def _what(self) -> str:
        return f"gdrive:{self.file_id}:"

    def _advice(self) -> str:
        return (f"use --mirror (serving <mirror>/gdrive/{self.file_id}), or download the file in a browser and "
                f"save it as {self.hand}")


def _signs_in(page: str, url: str) -> bool:
    low = page.lower()
    return any(m in low or m in url.lower() for m in SIGN_IN_MARKERS)


def hand_path(folder: Path, index: int, file_id: str) -> Path:
    """Where a file fetched by hand goes so that a build uses it: ``<cache>/<model>/<index>-<id>``."""
    return folder / f"{index}-{file_id}"


def find_cached(folder: Path, index: int, file_id: str) -> Path | None:
    """The cached file of this source: downloaded (``<index>-<id>-<name>``) or saved by hand (``<index>-<id>``)."""
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob(f"{index}-{file_id}*")):
        if path.is_file() and not path.name.endswith((".part", ".json", ".tmp")):
            return path
    return None


def fetch_gdrive(file_id: str, url: str, folder: Path, index: int, policy: FetchPolicy,
                 on_bytes: Any = None, guard: TransferGuard | None = None,  # noqa: ANN401 - Callable[[int], None]
                 ) -> tuple[Path, int, int, dict]:
    """Download a Drive file into ``folder`` as ``<index>-<id>-<name>``: (path, size, attempts, record)."""
    stem = hand_path(folder, index, file_id)
    client = DriveClient(file_id, url, policy, stem)
    try:
        size, attempts, record = download_http(url, stem, policy, on_bytes, guard, client)
    finally:
        client.session.close()
    if not client.name:
        return stem, size, attempts, record
    dest, record = stem.with_name(f"{stem.name}-{client.name}"), {**record, "name": client.name}
    os.replace(stem, dest)
    write_record(dest, record)
    drop_record(stem)
    return dest, size, attempts, record


def probe_gdrive(file_id: str, policy: FetchPolicy | None = None, timeout_s: float = 10.0) -> dict | None:
    """What Drive says about the file now (ETag, Last-Modified, md5, size), through its confirm pages; None if
    it cannot tell (a quota page, no network): the caller then treats the file as unchanged."""
    client = DriveClient(file_id, start_url(file_id), policy or FetchPolicy(), Path(os.devnull))
    try:
        response = client.open({"Range": "bytes=0-0", "Accept-Encoding": "identity"}, (timeout_s, timeout_s))
        with response:
            if response.status_code not in (200, 206):
                return None
            total = content_range(response)[2] if response.status_code == 206 else None
            return {**http_record(response.headers), **({"size": total} if total else {})}
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot tell", never a failed plan
        log.info("gdrive:%s: could not ask Drive whether the file changed (%s)", file_id, type(exc).__name__)
        return None
    finally:
        client.session.close()
