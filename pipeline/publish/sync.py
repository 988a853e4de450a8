"""Publish a filter dataset to a Hugging Face Hub dataset repo: stage it (stage.py), then sync incrementally.

**Syncing** compares the staged tree with the repo (LFS sha256 / git blob ids
from one tree listing) and sends only new or changed files, in commits of at
most ``MAX_FILES_PER_COMMIT`` files / ``MAX_BYTES_PER_COMMIT`` bytes, oldest
first: data files, then the models' rows (so a row never precedes its files, and
filterlens readers, which follow the rows, always see complete models), then the
manifest and the card in the **last** commit together with the deletions of
removed models' files, so the card only ever describes a complete upload; when an
existing card is about to be superseded, it is first marked "update in
progress". Each commit names its parent, so a concurrent writer is detected, not
overwritten.
A rerun after an interruption skips every committed file and, on the LFS path,
every object already uploaded.

Why not ``HfApi.upload_folder``? In huggingface_hub 2.4 it is the resumable
multi-commit upload only when ``hf_xet`` is in use; without Xet it is a single
commit, and either way it gives no control over ordering (card last) or
deletions of removed models. ``create_commit`` uses Xet when available and the
LFS protocol otherwise, so this module behaves the same on both paths.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline.dataset.hub import check_online, hub_endpoint, resolve_token
from pipeline.dataset.layout import MANIFEST
from pipeline.errors import ConfigError, HubAuthError
from pipeline.publish.card import CARD, CardInputs, render_card
from pipeline.publish.hub_errors import hub_errors
from pipeline.publish.limits import MAX_BYTES_PER_COMMIT, MAX_FILES_PER_COMMIT
from pipeline.publish.stage import StagedFile, StagedTree, stage, staged_file

log = logging.getLogger(__name__)

UPDATING_CARD = ".README.updating.md"
MANAGED_PREFIXES = ("models/", "layers/", "filters/", "failures/")
"""Remote folders publishing owns: files there that the staged tree lacks are deleted."""
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class PublishResult:
    """What a publish did."""

    repo_id: str
    revision: str
    url: str
    staged: StagedTree
    commits: list[str] = field(default_factory=list)
    uploaded: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0
    unchanged: int = 0
    deleted: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return not self.commits


@dataclass
class SyncPlan:
    """What a sync sends, in commit order: data files, then models' rows, then manifest and card with deletions."""

    changed: list[StagedFile]
    deletions: list[str]
    data: list[StagedFile]
    rows: list[StagedFile]
    final: list[StagedFile]


def _same(local: StagedFile, remote: object | None) -> bool:
    """Whether the repo already holds exactly this file (LFS sha256, else git blob id)."""
    if remote is None:
        return False
    lfs = getattr(remote, "lfs", None)
    if lfs is not None:
        return lfs.sha256 == local.sha256 and int(lfs.size) == local.size
    return getattr(remote, "blob_id", None) == local.git_sha1()


def plan_sync(tree: StagedTree, remote: dict[str, object]) -> SyncPlan:
    """The files of ``tree`` that the repo (its files by path) lacks or holds otherwise, and the files to delete."""
    changed = [f for f in tree.files.values() if not _same(f, remote.get(f.path))]
    deletions = sorted(p for p in remote if p.startswith(MANAGED_PREFIXES) and p not in tree.files)
    final_paths = {CARD, MANIFEST}
    data = [f for f in changed if f.path not in final_paths and not f.path.startswith("models/")]
    rows = [f for f in changed if f.path.startswith("models/")]  # after the files they name
    final = sorted((f for f in changed if f.path in final_paths), key=lambda f: (f.path == CARD, f.path))
    return SyncPlan(changed, deletions, data, rows, final)


def commit_batches(files: list[StagedFile], max_files: int, max_bytes: int) -> list[list[StagedFile]]:
    """Split files (in order) into commits of at most ``max_files`` files and ``max_bytes`` bytes (>= 1 file each)."""
    batches: list[list[StagedFile]] = []
    current: list[StagedFile] = []
    current_bytes = 0
    for item in files:
        if current and (len(current) >= max_files or current_bytes + item.size > max_bytes):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += item.size
    if current:
        batches.append(current)
    return batches


def _add(item: StagedFile):  # noqa: ANN202 - huggingface_hub type, imported lazily
    from huggingface_hub import CommitOperationAdd

    operation = CommitOperationAdd(path_in_repo=item.path, path_or_fileobj=item.local)
    operation.upload_info.sha256 = bytes.fromhex(item.sha256)
    return operation


class _Committer:
    """Commits to one branch, each naming the previous head as its parent, so a concurrent writer is detected."""

    def __init__(self, api, result: PublishResult, head: str, bar: tqdm) -> None:  # noqa: ANN001 - HfApi
        self.api, self.result, self.head, self.bar = api, result, head, bar

    def commit(self, operations: list, title: str) -> None:
        info = self.api.create_commit(self.result.repo_id, operations, commit_message=title, repo_type="dataset",
                                      revision=self.result.revision, parent_commit=self.head)
        self.head = info.oid
        self.result.commits.append(info.oid)

    def send(self, files: list[StagedFile], title: str, deletions: list[str] | None = None) -> None:
        """Commit ``files`` (and ``deletions``, recorded as the result's), counting them as uploaded."""
        from huggingface_hub import CommitOperationDelete

        deletes = [CommitOperationDelete(path_in_repo=p) for p in deletions or []]
        self.commit([*(_add(f) for f in files), *deletes], title)
        self.result.uploaded += [f.path for f in files]
        self.result.uploaded_bytes += sum(f.size for f in files)
        if deletions is not None:
            self.result.deleted = deletions
        self.bar.update(sum(f.size for f in files))


def _write_updating_card(tree: StagedTree) -> StagedFile:
    """The card marked 'update in progress', committed first when it supersedes an existing card."""
    manifest = tree.manifest
    inputs = CardInputs(**{**tree.card_inputs.__dict__,
                           "updating": f"dataset version {manifest.get('dataset_version')} "
                                       f"(snapshot {tree.snapshot[:12]}) is being uploaded"})
    local = Path(tree.root) / UPDATING_CARD
    local.write_text(render_card(inputs))
    return staged_file(CARD, local)


def _upload(committer: _Committer, tree: StagedTree, remote: dict[str, object], plan: SyncPlan, message: str,
            max_files: int, max_bytes: int) -> None:
    """Make the plan's commits: the updating card if one is superseded, data, rows, then manifest + card last."""
    if CARD in remote and (plan.data or plan.deletions):
        updating = _write_updating_card(tree)
        if not _same(updating, remote[CARD]):
            committer.commit([_add(updating)], f"{message} (update in progress)")
    for kind, files in (("data", plan.data), ("models", plan.rows)):
        batches = commit_batches(files, max_files, max_bytes)
        for number, batch in enumerate(batches, 1):
            committer.send(batch, f"{message} ({kind} {number}/{len(batches)})")
    final = list(plan.final)
    if committer.result.commits and all(f.path != CARD for f in final):
        final.append(tree.files[CARD])  # a no-op add if unchanged; the card always closes a run that committed
    committer.send(final, message, deletions=plan.deletions)


def sync(api, tree: StagedTree, repo_id: str, revision: str, message: str,  # noqa: ANN001 - HfApi
         max_files: int = MAX_FILES_PER_COMMIT, max_bytes: int = MAX_BYTES_PER_COMMIT,
         progress: bool = True) -> PublishResult:
    """Make ``revision`` of the dataset repo ``repo_id`` hold exactly the staged tree (see the module docstring)."""
    from huggingface_hub.hf_api import RepoFile

    remote = {f.path: f for f in api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True)
              if isinstance(f, RepoFile)}
    head = api.repo_info(repo_id, repo_type="dataset", revision=revision).sha
    url = f"{api.endpoint}/datasets/{repo_id}" + (f"/tree/{revision}" if revision != "main" else "")
    result = PublishResult(repo_id, revision, url, tree)
    plan = plan_sync(tree, remote)
    result.unchanged = len(tree.files) - len(plan.changed)
    if not plan.changed and not plan.deletions:
        log.info("%s@%s is up to date (%d files)", repo_id, revision, len(tree.files))
        return result
    log.info("%s@%s: %d files to send (%.1f MB), %d unchanged, %d to delete", repo_id, revision, len(plan.changed),
             sum(f.size for f in plan.changed) / 1e6, result.unchanged, len(plan.deletions))
    with tqdm(total=sum(f.size for f in plan.changed), unit="B", unit_scale=True, desc=f"publish {repo_id}",
              disable=None if progress else True) as bar:
        _upload(_Committer(api, result, head, bar), tree, remote, plan, message, max_files, max_bytes)
    log.info("published %s@%s in %d commits", repo_id, revision, len(result.commits))
    return result


def _staging_dir(dataset: str) -> str:
    """A fresh staging folder: inside a local dataset root (hard links, no copies) when writable, else in TMPDIR."""
    if "://" not in dataset and os.path.isdir(dataset):
        try:
            return tempfile.mkdtemp(prefix=".publish-", dir=dataset)
        except OSError:
            pass
    return tempfile.mkdtemp(prefix="filterlens-publish-")


def check_repo_id(repo_id: str) -> None:
    """ConfigError unless ``repo_id`` is ORG/NAME as the Hub spells repo ids."""
    if not REPO_ID.match(repo_id or ""):
        raise ConfigError(f"--repo {repo_id!r} must be ORG/NAME (letters, digits, '.', '_', '-')")


def _require_write_token(api, endpoint: str, repo_id: str, origin: str, revision: str) -> None:  # noqa: ANN001
    """HubAuthError when the token is missing, invalid or read-only (checked before anything is written)."""
    with hub_errors(endpoint, repo_id, origin, revision):
        identity = api.whoami()
    role = ((identity.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubAuthError(f"the token from {origin} is read-only ({identity.get('name')}); publishing needs a "
                           f"write token: create one at {endpoint}/settings/tokens")


def publish(dataset: str, repo_id: str, *, token: str | None = None, revision: str | None = None,
            private: bool = False, message: str | None = None, license: str | None = None,
            endpoint: str | None = None, max_files: int = MAX_FILES_PER_COMMIT,
            max_bytes: int = MAX_BYTES_PER_COMMIT, progress: bool = True) -> PublishResult:
    """Publish the committed models of ``dataset`` to the Hub dataset repo ``repo_id`` (created if needed).

    Incremental and resumable: rerunning sends only what the repo lacks, deletes files of
    removed models, and writes the card last. Raises HubAuthError for a missing, invalid or
    read-only token (before anything is written), PublishError for Hub or network failures.
    """
    from huggingface_hub import HfApi

    check_repo_id(repo_id)
    check_online()
    token, origin = resolve_token(token)
    endpoint = hub_endpoint(endpoint)
    revision = revision or "main"
    api = HfApi(endpoint=endpoint, token=token)
    _require_write_token(api, endpoint, repo_id, origin, revision)
    staging = _staging_dir(dataset)
    try:
        tree = stage(dataset, staging, repo_id, revision=revision, license=license)
        message = message or (f"Publish filterlens dataset version {tree.manifest.get('dataset_version')} "
                              f"({tree.n_models} models)")
        from huggingface_hub.utils import disable_progress_bars

        quiet = contextlib.nullcontext() if progress else disable_progress_bars()
        with hub_errors(endpoint, repo_id, origin, revision), quiet:
            api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
            if private and not api.repo_info(repo_id, repo_type="dataset").private:
                log.warning("%s already exists and is public: --private only applies when the repo is created",
                            repo_id)
            if revision != "main":
                api.create_branch(repo_id, repo_type="dataset", branch=revision, exist_ok=True)
            return sync(api, tree, repo_id, revision, message, max_files=max_files, max_bytes=max_bytes,
                        progress=progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
