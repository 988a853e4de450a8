"""Sources that are not plain http(s): fsspec URIs (s3://, gs://), the Hugging Face Hub, a mirror directory.

Each copy returns the validators record of what it fetched and is bounded by the
``TransferGuard`` where the bytes pass through filterlens (fsspec, directories);
``hf_hub_download`` streams by itself, so the Hub gets the size cap up front only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import DownloadError, SizeMismatchError, SourceNotFoundError
from pipeline.fetch.http import CHUNK, discard, part_of
from pipeline.fetch.policy import TransferGuard
from pipeline.fetch.validators import fsspec_record

log = logging.getLogger(__name__)


def _stream(src, part: Path, guard: TransferGuard, total: int | None,  # noqa: ANN001 - a binary file object
            on_bytes: Callable[[int], None] | None) -> int:
    """Copy ``src`` into ``part`` under the guard; the size must be ``total`` when it is known."""
    guard.start_attempt(0, total)
    size = 0
    with open(part, "wb") as out:
        while chunk := src.read(CHUNK):
            out.write(chunk)
            size += len(chunk)
            if on_bytes:
                on_bytes(len(chunk))
            guard.add(len(chunk))
    if total is not None and size != total:
        raise SizeMismatchError(f"{guard.what}: {size} bytes read, {total} announced")
    return size


def copy_fsspec(uri: str, dest: Path, guard: TransferGuard, on_bytes: Callable[[int], None] | None = None,
                ) -> tuple[int, dict]:
    """Copy an fsspec URI to ``dest`` through ``dest.part``: (size, validators record)."""
    import fsspec

    part = part_of(dest)
    part.parent.mkdir(parents=True, exist_ok=True)
    try:
        fs, path = fsspec.core.url_to_fs(uri, skip_instance_cache=True)  # the endpoint may change (env)
        record = fsspec_record(fs.info(path))
        with fs.open(path, "rb") as src:
            size = _stream(src, part, guard, record.get("size"), on_bytes)
    except FileNotFoundError:
        discard(part)
        raise SourceNotFoundError(f"{uri}: not found") from None
    except (OSError, ValueError) as exc:
        discard(part)
        raise DownloadError(f"{uri}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    except BaseException:
        discard(part)
        raise
    os.replace(part, dest)
    return size, {**record, "url": uri, "size": size}


def copy_file(source: Path, dest: Path, guard: TransferGuard) -> tuple[int, dict]:
    """Copy a mirror directory's file to ``dest`` through ``dest.part``: (size, validators record)."""
    if not source.is_file():
        raise SourceNotFoundError(f"{source}: not found in the mirror")
    part = part_of(dest)
    part.parent.mkdir(parents=True, exist_ok=True)
    stat = source.stat()
    try:
        with open(source, "rb") as src:
            size = _stream(src, part, guard, stat.st_size, None)
    except BaseException:
        discard(part)
        raise
    os.replace(part, dest)
    return size, {"url": str(source), "size": size, "mtime": stat.st_mtime_ns}


def probe_file(path: str) -> dict | None:
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return {"size": stat.st_size, "mtime": stat.st_mtime_ns}


def probe_fsspec(uri: str) -> dict | None:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri, skip_instance_cache=True)  # the endpoint may change (env)
        fs.invalidate_cache(path)  # fsspec instances are shared: ask the store, not a listing seen before
        return fsspec_record(fs.info(path))
    except Exception as exc:  # noqa: BLE001 - any failure means: cannot tell
        log.info("%s: could not ask whether the file changed (%s)", uri, type(exc).__name__)
        return None


def _hub_args() -> dict:
    """Endpoint and token read now: huggingface_hub reads HF_ENDPOINT only when it is imported."""
    return {"endpoint": os.environ.get("HF_ENDPOINT") or None, "token": os.environ.get("HF_TOKEN") or None}


def probe_hub(repo: str, revision: str | None, path: str) -> dict | None:
    """The file's blob id (LFS sha256 or git sha1), size and the commit it resolves to now; None if unreachable."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    args = _hub_args()
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, path, revision=revision, endpoint=args["endpoint"]),
                                    token=args["token"], endpoint=args["endpoint"])
    except Exception as exc:  # noqa: BLE001 - offline, not found, server error: the download will say which
        log.info("hf://%s/%s: could not ask the Hub whether the file changed (%s)", repo, path, type(exc).__name__)
        return None
    record = {"etag": meta.etag, "size": meta.size, "revision": meta.commit_hash}
    return {k: v for k, v in record.items() if v is not None}


def _cached_record(local: Path) -> dict:
    """What the Hub's cache says about a file: the snapshot's commit and the blob's id."""
    record: dict = {"size": local.stat().st_size}
    parts = local.parts
    if "snapshots" in parts[:-1]:
        record["revision"] = parts[parts.index("snapshots") + 1]
    blob = local.resolve()
    if blob.parent.name == "blobs":
        record["etag"] = blob.name
    return record


def from_hub(uri: str, repo: str, revision: str | None, path: str, cache_dir: Path, guard: TransferGuard,
             ) -> tuple[Path, dict]:
    """A model repo file through huggingface_hub's own cache (under ``<cache>/hf``): (path, validators record)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    announced = probe_hub(repo, revision, path)
    if announced:
        guard.check_announced(announced.get("size"))
    try:
        local = Path(hf_hub_download(repo_id=repo, filename=path, revision=revision, cache_dir=cache_dir / "hf",
                                     **_hub_args()))
    except LocalEntryNotFoundError:
        raise DownloadError(f"{uri}: the Hub is unreachable (offline, or HF_HUB_OFFLINE is set) and the file "
                            "is not in the cache") from None
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise SourceNotFoundError(f"{uri}: {type(exc).__name__}") from None
    except Exception as exc:  # network and hub errors
        raise DownloadError(f"{uri}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    return local, {**_cached_record(local), "url": uri}
