"""Fetch a zoo entry's checkpoint file(s) into the local cache, verified.

* http(s): streamed, resumed with ``Range`` + ``If-Range`` only when the server
  gave a validator (``pipeline.fetch.http``), retried with exponential backoff
  and jitter on transient errors (timeouts, resets, 5xx, 429);
* ``gdrive:<id>``: Google Drive, through its confirm pages (``pipeline.fetch.gdrive``;
  ``FILTERLENS_GDRIVE_ENDPOINT`` points it elsewhere), as RobustBench stores its models;
* ``hf://<org>/<repo>[@revision]/<path>``: the Hugging Face Hub through its own cache;
* ``s3://``, ``gs://``, ...: fsspec (``pipeline.fetch.remote``);
* local paths and ``file://``: used in place (never copied, never deleted).

Bytes go to ``<name>.part`` and get their final name only once complete; the
sha256 of the final file(s) is then verified against the zoo's expected digest
(a mismatching copy is deleted, never reused). ``FetchPolicy`` caps the size,
the rate and the time. Every remote source's validators (ETag, size, ...) are
returned in ``FetchedCheckpoint.validators`` so a build can tell a changed file.
``mirror`` (a URL prefix or a directory) redirects every remote source to
``<mirror>/<mirror_path(uri)>`` - for clusters with a private mirror, and tests.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.dataset.layout import slugify
from pipeline.digest import sha256_of_files
from pipeline.errors import ChecksumMismatchError, SourceNotFoundError
from pipeline.fetch.gdrive import fetch_gdrive, find_cached, probe_gdrive, start_url
from pipeline.fetch.http import download_http, probe_http
from pipeline.fetch.policy import FetchPolicy, TransferGuard
from pipeline.fetch.remote import (
    copy_file,
    copy_fsspec,
    from_hub,
    probe_file,
    probe_fsspec,
    probe_hub,
)
from pipeline.fetch.validators import changed, drop_record, location_id, read_record, write_record
from pipeline.zoo.zoo_file import ZooEntry

log = logging.getLogger(__name__)

@dataclass
class FetchedCheckpoint:
    """Local checkpoint file(s) of one entry and what it took to get them."""

    paths: list[str]
    sha256: str
    n_bytes: int
    downloaded_bytes: int = 0
    seconds: float = 0.0
    attempts: int = 1
    owned: list[bool] = field(default_factory=list)
    """Per path: True when the file lives in our cache and may be deleted after extraction."""
    validators: list[dict] = field(default_factory=list)
    """Per remote source, in order: what the server said (``pipeline.fetch.validators`` records)."""

    def delete_owned(self) -> None:
        """Delete the cached files (and their records), then their model's folder when it is empty."""
        for path, owned in zip(self.paths, self.owned, strict=True):
            if owned:
                Path(path).unlink(missing_ok=True)
                drop_record(Path(path))
                remove_if_empty(Path(path).parent)


def remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty, or gone
        pass


def is_local(uri: str) -> bool:
    return "://" not in uri and not uri.startswith("gdrive:") or uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def mirror_path(uri: str) -> str:
    """Where a source lives under a mirror: gdrive/<id>, http/<host>/<path>, hf/<repo>/<rev>/<path>, s3/<bucket>/<key>."""
    if uri.startswith("gdrive:"):
        return f"gdrive/{uri[len('gdrive:'):]}"
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return f"http/{parts.netloc}{parts.path}"
    if parts.scheme == "hf":
        repo, revision, path = parse_hf_uri(uri)
        return f"hf/{repo}/{revision or 'main'}/{path}"
    return f"{parts.scheme}/{parts.netloc}{parts.path}"


def parse_hf_uri(uri: str) -> tuple[str, str | None, str]:
    """hf://org/repo[@rev]/path/in/repo -> (org/repo, rev, path)."""
    rest = uri[len("hf://"):]
    parts = rest.split("/")
    if len(parts) < 3:
        raise SourceNotFoundError(f"{uri}: expected hf://<org>/<repo>[@revision]/<file>")
    org, repo = parts[0], parts[1]
    revision = None
    if "@" in repo:
        repo, revision = repo.split("@", 1)
    return f"{org}/{repo}", revision, "/".join(parts[2:])


def resolve_remote(uri: str, mirror: str | None) -> str:
    """The URL/URI actually fetched for a remote source (after mirror redirection)."""
    if mirror:
        relative = mirror_path(uri)
        if "://" in mirror:
            return mirror.rstrip("/") + "/" + relative
        return str(Path(mirror) / relative)
    if uri.startswith("gdrive:"):
        return start_url(uri[len("gdrive:"):])
    return uri




def probe_source(url: str) -> dict | None:
    """What the source at ``url`` (as fetched: after mirror redirection) says about its file now; None if unknown."""
    if url.startswith(("http://", "https://")):
        return probe_http(url)
    if url.startswith("hf://"):
        return probe_hub(*parse_hf_uri(url))
    if "://" in url:
        return probe_fsspec(url)
    return probe_file(url) if url else None


def probe_recorded(records: list[dict], mirror: str | None) -> list[dict | None]:
    """Ask each recorded source again, where this build would fetch it; None where the location differs."""
    current: list[dict | None] = []
    for record in records:
        uri = str(record.get("uri", ""))
        url = resolve_remote(uri, mirror)
        if location_id(url) != record.get("via"):
            current.append(None)
        elif uri.startswith("gdrive:") and not mirror:  # through the confirm pages, as the download went
            current.append(probe_gdrive(uri[len("gdrive:"):]))
        else:
            current.append(probe_source(url))
    return current


def _cached_is_current(dest: Path, url: str, check: bool) -> bool:
    """May a finished file in the cache be reused? With a digest to verify, always; else if its source is unchanged."""
    record = read_record(dest)
    if not check or record is None:
        return True
    if record.get("url") == url and not changed([record], [probe_source(url)]):
        return True
    log.info("%s: the cached copy of %s is out of date; fetching it again", dest, url)
    dest.unlink(missing_ok=True)
    drop_record(dest)
    return False


@dataclass
class _Got:
    path: str
    owned: bool
    record: dict
    downloaded: int = 0
    attempts: int = 1


def _fetch_remote(entry: ZooEntry, index: int, uri: str, cache_dir: Path, mirror: str | None, policy: FetchPolicy,
                  on_bytes: Callable[[int], None] | None, started: float) -> _Got:
    """One remote source into the cache (or the Hub's cache), under the policy's caps and the entry's deadline."""
    target = resolve_remote(uri, mirror)
    guard = TransferGuard(target, policy, started)
    if uri.startswith("hf://") and not mirror:
        local, record = from_hub(uri, *parse_hf_uri(uri), cache_dir, guard)
        return _Got(str(local), False, record)
    if uri.startswith("gdrive:") and not mirror:
        return _fetch_drive(entry, index, uri[len("gdrive:"):], target, cache_dir, policy, on_bytes, guard)
    name = Path(urlsplit(target).path).name or f"member-{index}"
    dest = cache_dir / slugify(entry.model_id) / f"{index}-{name}"
    if dest.is_file() and _cached_is_current(dest, target, check=not entry.sha256):
        return _Got(str(dest), True, read_record(dest) or {"url": target, "size": dest.stat().st_size})
    if target.startswith(("http://", "https://")):
        size, attempts, record = download_http(target, dest, policy, on_bytes, guard)
        return _Got(str(dest), True, record, size, attempts)
    if "://" in target:
        size, record = copy_fsspec(target, dest, guard, on_bytes)
    else:  # a mirror directory
        size, record = copy_file(Path(target), dest, guard)
    write_record(dest, record)
    return _Got(str(dest), True, record, size)


def _fetch_drive(entry: ZooEntry, index: int, file_id: str, target: str, cache_dir: Path, policy: FetchPolicy,
                 on_bytes: Callable[[int], None] | None, guard: TransferGuard) -> _Got:
    """A Drive file into the cache, unless it is there (downloaded before, or saved by hand)."""
    folder = cache_dir / slugify(entry.model_id)
    cached = find_cached(folder, index, file_id)
    if cached is not None and _cached_is_current(cached, target, check=not entry.sha256):
        return _Got(str(cached), True, read_record(cached) or {"url": target, "size": cached.stat().st_size})
    path, size, attempts, record = fetch_gdrive(file_id, target, folder, index, policy, on_bytes, guard)
    return _Got(str(path), True, record, size, attempts)


def fetch_entry(entry: ZooEntry, cache_dir: str | os.PathLike, mirror: str | None = None,
                policy: FetchPolicy | None = None, on_bytes: Callable[[int], None] | None = None,
                ) -> FetchedCheckpoint:
    """Make all of an entry's checkpoint files local, verify the digest, and say what each server said.

    Files already in the cache are reused (and re-hashed; without a zoo digest,
    only while their source is unchanged). Raises SourceNotFoundError,
    DownloadError (and its subclasses) or ChecksumMismatchError.
    """
    policy = policy or FetchPolicy()
    started, clock_started = time.perf_counter(), time.monotonic()
    if not entry.sources:
        raise SourceNotFoundError(f"{entry.model_id}: the zoo gives no source for this model")
    cache = Path(cache_dir) / slugify(entry.model_id)
    got: list[_Got] = []
    try:
        for index, uri in enumerate(entry.sources):
            if is_local(uri):
                path = local_path(uri)
                if not path.is_file():
                    raise SourceNotFoundError(f"{entry.model_id}: {path} does not exist")
                got.append(_Got(str(path), False, {}))
                continue
            one = _fetch_remote(entry, index, uri, Path(cache_dir), mirror, policy, on_bytes, clock_started)
            one.record = {**one.record, "uri": uri}
            got.append(one)
    except BaseException:
        remove_if_empty(cache)
        raise
    fetched = FetchedCheckpoint([g.path for g in got], "", 0, sum(g.downloaded for g in got), 0.0,
                                max(g.attempts for g in got), [g.owned for g in got],
                                [g.record for g in got if g.record])
    fetched.sha256, fetched.n_bytes = sha256_of_files(fetched.paths)
    if entry.sha256 and entry.sha256.lower() != fetched.sha256:
        fetched.delete_owned()  # a bad copy must not be reused from the cache
        raise ChecksumMismatchError(f"{entry.model_id}: sha256 {fetched.sha256[:16]}... does not match the expected "
                                    f"{entry.sha256[:16]}...; the source changed or the download is corrupt")
    fetched.seconds = time.perf_counter() - started
    return fetched
