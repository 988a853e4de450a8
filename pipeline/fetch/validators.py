"""What a server says about a file (ETag, size, Last-Modified, md5, revision), kept to detect changes.

A *record* is a flat dict: ``uri`` (the zoo's source), ``url`` (what was fetched:
the mirror's copy, the gdrive endpoint, the hf:// URI), and any of ``etag``,
``last_modified``, ``md5``, ``size``, ``revision``, ``mtime``. Records are stored
beside cached files (``<file>.json``, ``<file>.part.json`` while a download is
partial) and, without ``url`` (``via``: its hash, no host names), in the models
row's ``metadata_json`` (``source_validators``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

COMPARED = ("etag", "md5", "size", "last_modified", "mtime")
"""Keys that say the content changed (``revision`` is not: a new commit may leave the file as it was)."""


def location_id(url: str) -> str:
    """A short hash of where a file was fetched from (datasets record it instead of a mirror's host name)."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def dataset_records(records: Sequence[Mapping]) -> list[dict]:
    """Records as a dataset stores them (``metadata_json.source_validators``): ``url`` replaced by ``via``."""
    return [{**{k: v for k, v in r.items() if k != "url"}, "via": location_id(str(r.get("url", "")))}
            for r in records]


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_record(path: Path) -> dict | None:
    """The record stored beside ``path``, or None (missing or unreadable)."""
    try:
        record = json.loads(sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(path: Path, record: Mapping) -> None:
    tmp = sidecar(path).with_name(sidecar(path).name + ".tmp")
    tmp.write_text(json.dumps(dict(record), sort_keys=True))
    os.replace(tmp, sidecar(path))


def drop_record(path: Path) -> None:
    sidecar(path).unlink(missing_ok=True)


def _md5_of(headers: Mapping[str, str]) -> str | None:
    for part in (headers.get("x-goog-hash") or "").split(","):  # Google storage: "crc32c=...,md5=..."
        if part.strip().startswith("md5="):
            return part.strip()[4:]
    return headers.get("Content-MD5")


def http_record(headers: Mapping[str, str]) -> dict:
    """The validators of an HTTP response (``headers`` case-insensitive, as requests gives them)."""
    record = {"etag": headers.get("ETag"), "last_modified": headers.get("Last-Modified"), "md5": _md5_of(headers)}
    return {k: v for k, v in record.items() if v}


def if_range_value(record: Mapping) -> str | None:
    """What to send as ``If-Range``: a strong ETag, else Last-Modified; None when resuming is unsafe."""
    etag = record.get("etag")
    if etag and not str(etag).startswith("W/"):
        return str(etag)
    return record.get("last_modified") or None


def fsspec_record(info: Mapping) -> dict:
    """The validators in an fsspec ``info()`` (s3fs: ETag, LastModified, VersionId; gcsfs: md5Hash, generation)."""
    keys = {"etag": ("ETag", "etag"), "last_modified": ("LastModified", "last_modified", "updated", "mtime"),
            "md5": ("md5Hash", "md5"), "revision": ("VersionId", "version_id", "generation"), "size": ("size",)}
    record = {}
    for name, candidates in keys.items():
        value = next((info[k] for k in candidates if info.get(k) not in (None, "")), None)
        if value is not None:
            record[name] = value if name == "size" else str(value)
    return record


def changed(recorded: Sequence[Mapping] | None, current: Sequence[Mapping | None] | None) -> bool:
    """True when any source's current validators contradict the recorded ones.

    Unknown is not a change: no record, a source that could not be asked
    (``None``), or records with no validator key in common count as unchanged.
    """
    if not recorded or current is None:
        return False
    if len(recorded) != len(current):
        return True
    for old, new in zip(recorded, current, strict=True):
        if new is None:
            continue
        common = [k for k in COMPARED if old.get(k) is not None and new.get(k) is not None]
        if any(str(old[k]) != str(new[k]) for k in common):
            return True
    return False
