"""Connecting to a Hugging Face Hub: endpoint, token, and ``hf://`` roots for reading.

huggingface_hub reads ``HF_ENDPOINT`` once, when it is imported
(``constants.ENDPOINT``). filterlens reads it again at call time and passes it
explicitly to ``HfApi`` and ``HfFileSystem``, so a private hub set in the
environment of a long-lived process (or a test) is always the one used.
"""

from __future__ import annotations

import logging
import os

import pyarrow.fs as pafs

from pipeline.errors import DatasetNotFoundError, HubAuthError, PublishError, StoreError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"


def quiet_http_logs() -> None:
    """Keep httpx's one-INFO-line-per-request out of filterlens' stderr unless debugging (-vv)."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("httpx", "httpx2"):
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)


def hub_endpoint(endpoint: str | None = None) -> str:
    """The Hub endpoint: ``endpoint``, else ``$HF_ENDPOINT`` (read now), else huggingface_hub's default."""
    if endpoint:
        return endpoint.rstrip("/")
    if os.environ.get("HF_ENDPOINT"):
        return os.environ["HF_ENDPOINT"].rstrip("/")
    from huggingface_hub import constants

    return (constants.ENDPOINT or DEFAULT_ENDPOINT).rstrip("/")


def resolve_token(token: str | None = None) -> tuple[str, str]:
    """(token, where it came from): ``--token``, else ``$HF_TOKEN``, else the saved login; HubAuthError if none."""
    if token:
        return token, "--token"
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return os.environ.get("HF_TOKEN") or os.environ["HUGGING_FACE_HUB_TOKEN"], "HF_TOKEN"
    from huggingface_hub import get_token

    saved = get_token()
    if saved:
        return saved, "the saved login (hf auth login)"
    raise HubAuthError("no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login` "
                       "with a token that has write access to the repo")


def check_online() -> None:
    """Raise PublishError when huggingface_hub is in offline mode (it would refuse every request)."""
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise PublishError("HF_HUB_OFFLINE is set, so huggingface_hub refuses every request; "
                           "unset HF_HUB_OFFLINE to publish or read hf:// datasets")


def _refuse_write(*args: object, **kwargs: object) -> None:
    raise StoreError("hf:// dataset roots are read-only: build the dataset locally (or on S3), then "
                     "`filterlens publish DATASET --repo ORG/NAME`")


class ReadOnlyFSSpecHandler(pafs.FSSpecHandler):
    """pyarrow's FSSpecHandler with every write refused: hf:// roots are pinned to a commit and read-only.

    (Writing a dataset file by file through HfFileSystem would make one commit per
    file; build locally and ``filterlens publish`` instead.)
    """

    create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = _refuse_write
    move = copy_file = open_output_stream = open_append_stream = _refuse_write


def split_hf_uri(uri: str) -> tuple[str, str, str | None, str]:
    """``hf://datasets/ORG/NAME[@rev][/path]`` -> (repo_type, repo_id, revision, path_in_repo)."""
    from huggingface_hub.utils import parse_hf_uri

    parsed = parse_hf_uri(uri.rstrip("/"))
    if parsed.is_bucket:
        raise StoreError(f"{uri}: Hub buckets are not filter datasets; use hf://datasets/ORG/NAME")
    return parsed.type, parsed.id, parsed.revision, parsed.path_in_repo


def open_hub_root(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path) for an ``hf://`` dataset root, pinned to one commit.

    The revision (default ``main``) is resolved to its commit sha once, so every
    file a reader lists and reads comes from the same snapshot even while a new
    version is being published. Reads go through huggingface_hub's
    ``HfFileSystem`` (fsspec) wrapped for pyarrow; no DuckDB extension is needed.
    Writes are refused with a StoreError (publish with ``filterlens publish``).
    """
    import httpx2
    from huggingface_hub import HfApi, HfFileSystem
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from pyarrow.fs import PyFileSystem

    repo_type, repo_id, revision, path_in_repo = split_hf_uri(uri)
    quiet_http_logs()
    try:
        check_online()
    except PublishError as exc:
        raise StoreError(f"{uri}: {exc}") from None
    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint)  # token: $HF_TOKEN or the saved login, looked up per request
    try:
        sha = api.repo_info(repo_id, repo_type=repo_type, revision=revision).sha
    except RevisionNotFoundError:
        raise DatasetNotFoundError(f"{uri}: {repo_id} has no revision {revision!r} on {endpoint}") from None
    except RepositoryNotFoundError:
        raise DatasetNotFoundError(f"{uri}: no {repo_type} repo {repo_id} on {endpoint} (if it is private, "
                                   "set HF_TOKEN or log in with `hf auth login`)") from None
    except HfHubHTTPError as exc:
        if exc.response is not None and exc.response.status_code == 401:
            raise HubAuthError(f"{uri}: {endpoint} rejected the token (401); fix HF_TOKEN or log in again") from None
        raise StoreError(f"{uri}: the Hub answered {exc}".splitlines()[0]) from None
    except (OSError, httpx2.HTTPError) as exc:
        raise StoreError(f"{uri}: cannot reach {endpoint} ({exc})") from None
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    path = f"{prefix}{repo_id}@{sha or revision or 'main'}"
    if path_in_repo:
        path = f"{path}/{path_in_repo}"
    log.debug("%s -> %s on %s", uri, path, endpoint)
    fs = HfFileSystem(endpoint=endpoint, skip_instance_cache=True)
    return PyFileSystem(ReadOnlyFSSpecHandler(fs)), path
