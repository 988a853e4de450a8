"""http(s) downloads that cannot splice two versions of a file, fill the disk or hang.

Bytes go to ``<name>.part``; ``<name>.part.json`` holds the validator (a strong
ETag, else Last-Modified) and the size of the first response. A later attempt
resumes with ``Range`` + ``If-Range`` only when that record exists; a 200
answer, a 206 with another ETag, start or total restarts from zero. The final
size must equal the announced size. The ``TransferGuard`` enforces the size cap,
the minimum rate and the deadline. A partial file is deleted on any failure or
interrupt unless it can be resumed safely.

Requests go through a *client* (``PlainClient``; Google Drive's in
``pipeline.fetch.gdrive``): every attempt starts again at the source URL, so a
redirect to a signed, short-lived URL (GitHub release assets, S3 presigned, the
Hub's CDN) is followed afresh and never reused. ``Retry-After`` (429, 503, Drive's
quota) lengthens the jittered backoff; ``host_slot`` caps downloads per host.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable, Mapping
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from pipeline.errors import (
    CheckpointTooLargeError,
    DownloadDeadlineError,
    DownloadError,
    FilterlensError,
    RefusedDownloadError,
    SizeMismatchError,
    SourceNotFoundError,
)
from pipeline.fetch.policy import FetchPolicy, TransferGuard, host_slot
from pipeline.fetch.validators import (
    drop_record,
    http_record,
    if_range_value,
    read_record,
    write_record,
)

log = logging.getLogger(__name__)

CHUNK = 1 << 18
MAX_RETRY_AFTER_S = 3600.0
"""The longest ``Retry-After`` honoured (the deadline may end the wait sooner)."""
FINAL = (SourceNotFoundError, RefusedDownloadError, CheckpointTooLargeError, DownloadDeadlineError)
"""Failures another attempt cannot fix (or must not try: the deadline is spent)."""


class _Restart(ConnectionError):
    """The partial file does not belong to the file now served: discarded, the next attempt starts from zero."""


class Busy(ConnectionError):
    """HTTP 429 or 5xx: try again, not before ``retry_after`` seconds when the server said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Client(Protocol):
    """How one download's requests are made: ``open`` a response for these headers, ``check`` the finished part."""

    host: str
    limit: int
    """Downloads from ``host`` in flight at once in this process (0: no limit)."""

    def open(self, headers: dict[str, str], timeout: tuple[float, float]) -> Any: ...  # noqa: ANN401 - a Response

    def check(self, part: Path) -> None: ...


class PlainClient:
    """GET the source URL itself on every attempt (redirects followed afresh)."""

    def __init__(self, url: str, policy: FetchPolicy) -> None:
        self.url, self.host, self.limit = url, urlsplit(url).netloc, policy.host_downloads

    def open(self, headers: dict[str, str], timeout: tuple[float, float]) -> Any:  # noqa: ANN401 - a Response
        import requests

        return requests.get(self.url, stream=True, headers=headers, timeout=timeout)

    def check(self, part: Path) -> None:
        """Nothing beyond the size, which ``_attempt`` checks."""


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (seconds or an HTTP date); None when absent or unreadable."""
    value = (headers.get("Retry-After") or "").strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def part_of(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    drop_record(part)


def resumable(part: Path, url: str) -> dict | None:
    """The record of a partial download of ``url`` that may be resumed (a validator was seen), else None."""
    record = read_record(part)
    if part.is_file() and record and record.get("url") == url and if_range_value(record):
        return record
    return None


def _wait_before_retry(url: str, exc: Exception, attempt: int, policy: FetchPolicy, guard: TransferGuard) -> None:
    """Jittered exponential backoff, or the server's ``Retry-After`` (plus up to 25 %) when longer.

    A server that asks to wait past the deadline ends the retries now, with its own error.
    """
    delay = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
    asked = getattr(exc, "retry_after", None)
    if asked:
        asked = min(float(asked), MAX_RETRY_AFTER_S)
        delay = max(delay, asked * (1 + random.random() / 4))
    left = guard.remaining()
    if asked and left is not None and asked > left:
        raise _final_error(url, exc, attempt) from None
    time.sleep(delay if left is None else max(0.0, min(delay, left)))


def download_http(url: str, dest: Path, policy: FetchPolicy, on_bytes: Callable[[int], None] | None = None,
                  guard: TransferGuard | None = None, client: Client | None = None) -> tuple[int, int, dict]:
    """Download ``url`` to ``dest`` with safe resume and retries: (size, attempts, validators record).

    ``url`` names the file (the partial file's record keeps it); ``client`` makes
    the requests (default: GET ``url``) and checks the finished part before it is
    given its final name.
    """
    part = part_of(dest)
    part.parent.mkdir(parents=True, exist_ok=True)
    guard = guard or TransferGuard(url, policy)
    client = client or PlainClient(url, policy)
    try:
        record, attempt = _attempts(url, part, policy, guard, on_bytes, client)
        client.check(part)
    except BaseException as exc:  # failures, KeyboardInterrupt: keep only a partial file that can be resumed safely
        if not (getattr(exc, "transient", True) and resumable(part, url)):
            discard(part)
        raise
    size = part.stat().st_size
    record = {**record, "url": url, "size": size}
    os.replace(part, dest)
    drop_record(part)
    write_record(dest, record)
    return size, attempt, record


def _attempts(url: str, part: Path, policy: FetchPolicy, guard: TransferGuard,
              on_bytes: Callable[[int], None] | None, client: Client) -> tuple[dict, int]:
    """Attempt until one succeeds, a final error, the deadline or the last retry: (validators record, attempts)."""
    import requests
    import urllib3

    retryable = (FilterlensError, requests.RequestException, urllib3.exceptions.HTTPError, ConnectionError,
                 TimeoutError, OSError)
    last_error: Exception | None = None
    attempt = 0
    for attempt in range(1, max(1, policy.retries) + 1):
        try:
            guard.check_deadline()
        except DownloadDeadlineError as exc:
            exc.attempts = max(1, attempt - 1)  # the attempts made, for the failures row
            raise
        try:
            with host_slot(client.host, client.limit, guard):
                return _attempt(url, part, policy, guard, on_bytes, client), attempt
        except FINAL as exc:
            exc.attempts = attempt
            raise
        except retryable as exc:
            last_error = exc
            if isinstance(exc, (SizeMismatchError, _Restart)):
                discard(part)
            log.info("%s: attempt %d/%d failed (%s: %s)", url, attempt, policy.retries, type(exc).__name__, exc)
            if attempt < policy.retries:
                _wait_before_retry(url, exc, attempt, policy, guard)
    raise _final_error(url, last_error, attempt)


def _final_error(url: str, exc: Exception | None, attempts: int) -> DownloadError:
    if isinstance(exc, DownloadError):  # stalled, size mismatch: keep the class
        exc.attempts = attempts
        return exc
    text = str(exc).splitlines()[0] if exc is not None and str(exc) else ""
    return DownloadError(f"{url}: failed after {attempts} attempts ({type(exc).__name__}: {text})", attempts=attempts)


def _attempt(url: str, part: Path, policy: FetchPolicy, guard: TransferGuard,
             on_bytes: Callable[[int], None] | None, client: Client) -> dict:
    """One request: resume or start over, stream into ``part``; returns the validators record."""
    saved = resumable(part, url)
    if saved is None:
        discard(part)
    have = part.stat().st_size if saved else 0
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers.update({"Range": f"bytes={have}-", "If-Range": if_range_value(saved)})
    timeout = (guard.timeout(policy.connect_timeout_s), guard.timeout(policy.read_timeout_s))
    with client.open(headers, timeout) as response:
        _check_status(url, response, bool(have))
        if response.status_code == 416:  # nothing left to send: the part is complete if the total agrees
            total = content_range(response)[2]
            if total != have or total != saved.get("size"):
                raise _Restart(f"range not satisfiable and the file is now {total} bytes, not {have}")
            return _record_of(saved)
        offset, total, record = _accept(url, response, part, saved, have)
        guard.start_attempt(offset, total)
        with open(part, "ab" if offset else "wb") as out:
            while chunk := response.raw.read1(CHUNK, decode_content=True):
                out.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
                guard.add(len(chunk))
    size = part.stat().st_size
    if total is not None and size < total:
        raise ConnectionError(f"connection closed after {size} of {total} bytes")
    return record


def _record_of(saved: dict) -> dict:
    return {k: v for k, v in saved.items() if k not in ("url", "size")}


def _accept(url: str, response, part: Path, saved: dict | None, have: int) -> tuple[int, int | None, dict]:  # noqa: ANN001
    """Decide where this response's bytes go: (offset to append at, announced total, validators record)."""
    record = http_record(response.headers)
    encoded = response.headers.get("Content-Encoding", "identity") not in ("identity", "")
    if response.status_code == 206:
        start, _, total = content_range(response)
        if not have or start != have or total != saved.get("size"):
            raise _Restart(f"the server sent bytes {start}- of {total}, not the {have}- asked for")
        if record.get("etag") and saved.get("etag") and record["etag"] != saved["etag"]:
            raise _Restart("the file changed on the server (another ETag) while resuming")
        return have, total, _record_of(saved)
    length = response.headers.get("Content-Length")
    total = int(length) if length is not None and length.isdigit() and not encoded else None
    if have:
        log.info("%s: the server sent the whole file again (changed, or no Range support); starting over", url)
    part.unlink(missing_ok=True)
    if if_range_value(record) and total is not None:
        write_record(part, {**record, "url": url, "size": total})
    else:
        drop_record(part)
    return 0, total, record


def content_range(response) -> tuple[int | None, int | None, int | None]:  # noqa: ANN001
    """(start, end, total) of a ``Content-Range`` header; None for what it does not say."""
    match = re.fullmatch(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    if not match:
        return None, None, None
    start, end, total = (int(g) if g and g != "*" else None for g in match.groups())
    return start, end, total


def _check_status(url: str, response, resuming: bool) -> None:  # noqa: ANN001
    """Raise the error an HTTP status means (no body is ever quoted)."""
    status = response.status_code
    if status in (404, 410):
        raise SourceNotFoundError(f"{url}: HTTP {status} (not found)")
    if status == 416 and resuming:
        return
    if status in (401, 403):
        raise RefusedDownloadError(f"{url}: HTTP {status} (access denied; quota or credentials)")
    if status == 429 or status >= 500:
        raise Busy(f"HTTP {status}", retry_after(response.headers))
    if status not in (200, 206):
        raise DownloadError(f"{url}: unexpected HTTP {status}")
    if "text/html" in response.headers.get("Content-Type", ""):
        raise RefusedDownloadError(f"{url}: the server sent a web page instead of a file "
                                   "(Google Drive quota exceeded or a login page?)")


def _announced(response, size: int | None) -> dict | None:  # noqa: ANN001
    """The validators of a probe's answer; None when it is a web page (a quota or warning page, not the file)."""
    if "text/html" in response.headers.get("Content-Type", ""):
        return None
    return {**http_record(response.headers), **({"size": size} if size else {})}


def probe_http(url: str, timeout_s: float = 10.0) -> dict | None:
    """The validators the server announces now (HEAD, else a one-byte GET), or None when it cannot tell."""
    import requests

    headers = {"Accept-Encoding": "identity"}
    try:
        with requests.head(url, headers=headers, timeout=timeout_s, allow_redirects=True) as response:
            if response.status_code == 200:
                length = response.headers.get("Content-Length", "")
                return _announced(response, int(length) if length.isdigit() else None)
        with requests.get(url, headers={**headers, "Range": "bytes=0-0"}, stream=True, timeout=timeout_s) as response:
            if response.status_code == 206:
                return _announced(response, content_range(response)[2])
    except (requests.RequestException, OSError) as exc:
        log.info("%s: could not ask the server whether the file changed (%s)", url, type(exc).__name__)
    return None
