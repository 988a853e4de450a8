"""Fetch a zoo entry's checkpoint file(s) into the local cache, verified.

* http(s): streamed, resumed with Range after a broken connection, retried with
  exponential backoff and jitter on transient errors (timeouts, resets, 5xx, 429);
* ``gdrive:<id>``: Google Drive's direct-download endpoint, as RobustBench uses;
* ``hf://<org>/<repo>[@revision]/<path>``: the Hugging Face Hub through its own cache;
* ``s3://``, ``gs://``, ...: fsspec;
* local paths and ``file://``: used in place (never copied, never deleted).

Bytes go to ``<name>.part`` and get their final name only once complete; the
sha256 of the final file(s) is then verified against the zoo's expected digest
(a mismatching copy is deleted, never reused).
``mirror`` (a URL prefix or a directory) redirects every remote source to
``<mirror>/<mirror_path(uri)>`` - for clusters with a private mirror, and tests.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.dataset.layout import slugify
from pipeline.digest import sha256_of_files
from pipeline.errors import (
    ChecksumMismatchError,
    DownloadError,
    RefusedDownloadError,
    SourceNotFoundError,
)
from pipeline.zoo.zoo_file import ZooEntry

log = logging.getLogger(__name__)

GDRIVE_URL = "https://drive.usercontent.google.com/download?id={id}&export=download&confirm=t"
CHUNK = 1 << 18


@dataclass
class FetchPolicy:
    """How hard to try: attempts per file, timeouts, backoff."""

    retries: int = 3
    connect_timeout_s: float = 15.0
    read_timeout_s: float = 60.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0


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

    def delete_owned(self) -> None:
        for path, owned in zip(self.paths, self.owned, strict=True):
            if owned:
                Path(path).unlink(missing_ok=True)


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


def _sleep_backoff(attempt: int, policy: FetchPolicy) -> None:
    delay = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (attempt - 1))
    time.sleep(delay * (0.5 + random.random() / 2))


def download_http(url: str, dest: Path, policy: FetchPolicy, on_bytes: Callable[[int], None] | None = None,
                  ) -> tuple[int, int]:
    """Download ``url`` to ``dest`` with resume and retries: (size, attempts).

    Bytes go to ``dest.part``; after a broken transfer the next attempt asks for
    the rest with a Range header (or starts over if the server ignores it).
    """
    import requests

    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(1, policy.retries + 1):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with requests.get(url, stream=True, headers=headers,
                              timeout=(policy.connect_timeout_s, policy.read_timeout_s)) as response:
                if response.status_code in (404, 410):
                    raise SourceNotFoundError(f"{url}: HTTP {response.status_code} (not found)")
                if response.status_code == 416 and have:  # nothing left to send: the part is complete
                    break
                if response.status_code in (401, 403):
                    raise RefusedDownloadError(f"{url}: HTTP {response.status_code} (access denied; quota or credentials)")
                if response.status_code == 429 or response.status_code >= 500:
                    raise ConnectionError(f"HTTP {response.status_code}")
                if response.status_code not in (200, 206):
                    raise DownloadError(f"{url}: unexpected HTTP {response.status_code}")
                if "text/html" in response.headers.get("Content-Type", ""):
                    raise RefusedDownloadError(f"{url}: the server sent a web page instead of a file "
                                        "(Google Drive quota exceeded or a login page?)")
                resumed = response.status_code == 206
                expected = response.headers.get("Content-Length")
                expected = int(expected) if expected is not None else None
                received = 0
                with open(part, "ab" if resumed else "wb") as f:
                    for chunk in response.iter_content(CHUNK):
                        f.write(chunk)
                        received += len(chunk)
                        if on_bytes:
                            on_bytes(len(chunk))
                if expected is not None and received < expected:
                    raise ConnectionError(f"connection closed after {received} of {expected} bytes")
            last_error = None
            break
        except (SourceNotFoundError, DownloadError):
            raise
        except (requests.RequestException, ConnectionError, TimeoutError, OSError) as exc:
            last_error = exc
            log.info("%s: attempt %d/%d failed (%s: %s)", url, attempt, policy.retries, type(exc).__name__, exc)
            if attempt < policy.retries:
                _sleep_backoff(attempt, policy)
    if last_error is not None:
        raise DownloadError(f"{url}: failed after {policy.retries} attempts ({type(last_error).__name__}: "
                            f"{str(last_error).splitlines()[0] if str(last_error) else ''})",
                            attempts=policy.retries)
    size = part.stat().st_size
    os.replace(part, dest)
    return size, attempt


def _copy_fsspec(uri: str, dest: Path) -> int:
    import fsspec

    part = dest.with_name(dest.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    try:
        with fsspec.open(uri, "rb") as src, open(part, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
                size += len(chunk)
    except FileNotFoundError:
        raise SourceNotFoundError(f"{uri}: not found") from None
    except (OSError, ValueError) as exc:
        raise DownloadError(f"{uri}: {type(exc).__name__}: {exc}") from None
    os.replace(part, dest)
    return size


def _from_hub(uri: str, cache_dir: Path) -> Path:
    """A model repo file through huggingface_hub's own cache (kept under ``<cache>/hf``), at the revision asked."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, revision, path = parse_hf_uri(uri)
    try:  # endpoint and token read now: huggingface_hub reads HF_ENDPOINT only when it is imported
        return Path(hf_hub_download(repo_id=repo, filename=path, revision=revision, cache_dir=cache_dir / "hf",
                                    endpoint=os.environ.get("HF_ENDPOINT") or None,
                                    token=os.environ.get("HF_TOKEN") or None))
    except LocalEntryNotFoundError:
        raise DownloadError(f"{uri}: the Hub is unreachable (offline, or HF_HUB_OFFLINE is set) and the file "
                            "is not in the cache") from None
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise SourceNotFoundError(f"{uri}: {type(exc).__name__}") from None
    except Exception as exc:  # network and hub errors
        raise DownloadError(f"{uri}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def resolve_remote(uri: str, mirror: str | None) -> str:
    """The URL/URI actually fetched for a remote source (after mirror redirection)."""
    if mirror:
        relative = mirror_path(uri)
        if "://" in mirror:
            return mirror.rstrip("/") + "/" + relative
        return str(Path(mirror) / relative)
    if uri.startswith("gdrive:"):
        return GDRIVE_URL.format(id=uri[len("gdrive:"):])
    return uri


def fetch_entry(entry: ZooEntry, cache_dir: str | os.PathLike, mirror: str | None = None,
                policy: FetchPolicy | None = None, on_bytes: Callable[[int], None] | None = None,
                ) -> FetchedCheckpoint:
    """Make all of an entry's checkpoint files local and verify the digest.

    Files already in the cache are reused (and re-hashed). Raises
    SourceNotFoundError, DownloadError or ChecksumMismatchError.
    """
    policy = policy or FetchPolicy()
    started = time.perf_counter()
    if not entry.sources:
        raise SourceNotFoundError(f"{entry.model_id}: the zoo gives no source for this model")
    paths, owned, downloaded, attempts = [], [], 0, 1
    cache = Path(cache_dir) / slugify(entry.model_id)
    for index, uri in enumerate(entry.sources):
        if is_local(uri):
            path = local_path(uri)
            if not path.is_file():
                raise SourceNotFoundError(f"{entry.model_id}: {path} does not exist")
            paths.append(str(path))
            owned.append(False)
            continue
        target = resolve_remote(uri, mirror)
        if uri.startswith("hf://") and not mirror:
            paths.append(str(_from_hub(uri, Path(cache_dir))))
            owned.append(False)
            continue
        name = Path(urlsplit(target).path).name or f"member-{index}"
        dest = cache / f"{index}-{name}"
        if not dest.is_file():
            if target.startswith(("http://", "https://")):
                size, attempts_here = download_http(target, dest, policy, on_bytes)
                attempts = max(attempts, attempts_here)
            elif "://" in target:
                size = _copy_fsspec(target, dest)
            else:  # a mirror directory
                source = Path(target)
                if not source.is_file():
                    raise SourceNotFoundError(f"{entry.model_id}: {source} not found in the mirror")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest.with_name(dest.name + ".part"))
                os.replace(dest.with_name(dest.name + ".part"), dest)
                size = dest.stat().st_size
            downloaded += size
        paths.append(str(dest))
        owned.append(True)
    sha256, n_bytes = sha256_of_files(paths)
    if entry.sha256 and entry.sha256.lower() != sha256:
        for path, mine in zip(paths, owned, strict=True):
            if mine:
                Path(path).unlink(missing_ok=True)  # a bad copy must not be reused from the cache
        raise ChecksumMismatchError(f"{entry.model_id}: sha256 {sha256[:16]}... does not match the expected "
                                    f"{entry.sha256[:16]}...; the source changed or the download is corrupt")
    return FetchedCheckpoint(paths, sha256, n_bytes, downloaded, time.perf_counter() - started, attempts, owned)
