"""``filterlens zoo refresh``: RobustBench's current leaderboard metadata into the user cache.

One GET per leaderboard entry, ``<base_url>/<dataset>/<threat_model>/<name>.json``
(RobustBench's ``model_info/`` folder on GitHub by default); HTTP 404 means the entry
has no metadata upstream. All or nothing: the cache file is replaced (atomically)
only when every request was answered; otherwise nothing changes. Light at import:
``requests`` is imported when fetching.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pipeline.atomic_write import atomic_target
from pipeline.errors import DownloadError, RefusedDownloadError, SourceNotFoundError
from pipeline.zoo.leaderboard import SNAPSHOT_DATE, Key, cached_model_info_path, with_key

MODEL_INFO_BASE_URL = "https://raw.githubusercontent.com/RobustBench/robustbench/master/model_info"


@dataclass
class RefreshOptions:
    """Where to fetch from and how (the flags of ``filterlens zoo refresh``)."""

    base_url: str = MODEL_INFO_BASE_URL
    timeout_s: float = 10.0
    workers: int = 8
    cache_dir: str | None = None


@dataclass
class RefreshResult:
    """What a refresh wrote: the cache file, how many entries, and the entries without metadata upstream."""

    path: Path
    fetched: int
    missing: list[Key] = field(default_factory=list)


_local = threading.local()


def _session() -> object:
    import requests

    if not hasattr(_local, "session"):
        _local.session = requests.Session()
    return _local.session


def _in_use(options: RefreshOptions) -> str:
    cached = cached_model_info_path(options.cache_dir)
    return (f"the earlier refresh ({cached}) stays in use" if cached.is_file()
            else f"the shipped snapshot (RobustBench model_info of {SNAPSHOT_DATE}) stays in use")


def fetch_entry(key: Key, options: RefreshOptions) -> dict | None:
    """One entry's model_info as a JSON-lines row; None when the server has none (404)."""
    import requests

    dataset, threat_model, name = key
    url = f"{options.base_url.rstrip('/')}/{dataset}/{threat_model}/{name}.json"
    try:
        response = _session().get(url, timeout=options.timeout_s)
    except requests.RequestException as exc:
        raise DownloadError(f"zoo refresh: cannot reach {options.base_url} ({type(exc).__name__}); offline? "
                            f"Nothing was changed: {_in_use(options)}") from None
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise DownloadError(f"zoo refresh: {url} answered HTTP {response.status_code}; nothing was changed: "
                            f"{_in_use(options)}")
    try:
        row = response.json()
    except ValueError:
        row = None
    if not isinstance(row, dict):
        raise RefusedDownloadError(f"zoo refresh: {url} is not a model_info JSON object; nothing was changed: "
                                   f"{_in_use(options)}")
    return with_key(row, key)


def refresh_model_info(keys: Sequence[Key], options: RefreshOptions | None = None) -> RefreshResult:
    """Fetch every entry's model_info and replace the user cache with them (all requests, or no change)."""
    options = options or RefreshOptions()
    keys = sorted(set(keys))
    with ThreadPoolExecutor(max(1, options.workers)) as pool:
        futures = [pool.submit(fetch_entry, key, options) for key in keys]
        try:
            rows = [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    missing = [key for key, row in zip(keys, rows, strict=True) if row is None]
    found = [row for row in rows if row is not None]
    if not found:
        raise SourceNotFoundError(f"zoo refresh: {options.base_url} has none of the {len(keys)} entries (HTTP 404 "
                                  f"for all): is it RobustBench's model_info/ folder? Nothing was changed: "
                                  f"{_in_use(options)}")
    path = cached_model_info_path(options.cache_dir)
    with atomic_target(str(path)) as target:
        Path(target).write_text("".join(json.dumps(row, sort_keys=False) + "\n" for row in found))
    record = {"fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "base_url": options.base_url,
              "entries": len(found), "missing": ["/".join(key) for key in missing]}
    with atomic_target(str(path.with_name("refresh.json"))) as target:
        Path(target).write_text(json.dumps(record, indent=2) + "\n")
    return RefreshResult(path, len(found), missing)
