"""Publish a filter dataset to a Hugging Face Hub dataset repo: stage, then sync incrementally.

**Staging** turns the committed part of a dataset (never orphans of crashed
writes, never ``failures/``) into the tree the repo should hold::

    README.md                 the dataset card (pipeline/publish/card.py)
    _manifest.json            versions, builds (no host names or paths), snapshot digest
    models/part-<m>.parquet   one row per model (the model's commit marker, as in the dataset)
    layers/dataset=<d>/model=<m>/part-<write_id>.parquet
    filters/dataset=<d>/model=<m>/part-<write_id>-<k>.parquet

The layout is the dataset's own, so the repo is itself a filter dataset (read it
as ``hf://datasets/ORG/NAME``, or download it and keep building on it). Files
are hard-linked (or copied, or downloaded from a remote root) as they are; a
file whose size or row groups exceed what the Hub and its dataset viewer handle
is re-chunked (``MAX_FILE_BYTES``, ``MAX_ROW_GROUP_BYTES``) and the model's row
rewritten with the new ``n_filter_files``. Staging is deterministic: the same
dataset stages to byte-identical files, which is what makes reruns and
republishing incremental.

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
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline import __version__
from pipeline.dataset.hub import check_online, hub_endpoint, resolve_token
from pipeline.dataset.layout import (
    COMPRESSION,
    CONSTANT_COLUMNS,
    FLOAT_ENCODING,
    MANIFEST,
    WEIGHT_COLUMNS,
    StoredModel,
    stored_models_of,
)
from pipeline.dataset.schema import arrow_schema, schema_version
from pipeline.dataset.store import DatasetStore
from pipeline.digest import sha256_file
from pipeline.errors import (
    ConfigError,
    FilterlensError,
    HubAuthError,
    HubConflictError,
    HubLimitError,
    PublishError,
    StoreError,
)
from pipeline.publish.card import CardInputs, render_card

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 500_000_000
"""Largest data file staged (the shard size ``datasets.push_to_hub`` uses); larger filters files are split."""
MAX_ROW_GROUP_BYTES = 128 * 2**20
"""Largest uncompressed row group; the dataset viewer refuses row groups over ~286 MiB."""
MAX_ENTRIES_PER_FOLDER = 10_000
"""The Hub's recommended maximum of entries in one folder."""
MAX_FILES_PER_REPO = 100_000
"""The Hub's recommended maximum of files in one repo."""
MAX_FILES_PER_COMMIT = 100
"""Files per commit (the Hub recommends fewer than 100 per commit over HTTP)."""
MAX_BYTES_PER_COMMIT = 2 * 2**30
"""Bytes uploaded per commit: bounds the work a commit-level resume can lose."""
CARD = "README.md"
UPDATING_CARD = ".README.updating.md"
MANAGED_PREFIXES = ("models/", "layers/", "filters/", "failures/")
"""Remote folders publishing owns: files there that the staged tree lacks are deleted."""
BUILD_KEYS = ("command", "backend", "pipeline_version", "finished_at", "models", "done", "skipped", "failed",
              "seconds", "model_id")
"""Build-record keys copied to the published manifest (host names and local paths stay private)."""
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_GIT_HASH_MAX_BYTES = 50 * 2**20


# --- staging -----------------------------------------------------------------------------------
@dataclass
class StagedFile:
    """One file of the staged tree: where it goes in the repo, where it is locally, its digest."""

    path: str
    local: str
    size: int
    sha256: str

    def git_sha1(self) -> str | None:
        """The git blob id (how the Hub identifies non-LFS files); None for files too big to be regular."""
        if self.size > _GIT_HASH_MAX_BYTES:
            return None
        digest = hashlib.sha1(b"blob %d\0" % self.size)
        with open(self.local, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


@dataclass
class StagedTree:
    """The tree a repo should hold, ready to sync (see the module docstring)."""

    root: str
    files: dict[str, StagedFile]
    card_inputs: CardInputs
    manifest: dict
    rows: dict[str, int]
    snapshot: str
    rechunked: list[str] = field(default_factory=list)

    @property
    def n_models(self) -> int:
        return len(self.card_inputs.models)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files.values())


def fits_hub(path: str, check_size: bool = True) -> bool:
    """True when a Parquet file's row groups are within the viewer's limit (and, with ``check_size``, its size)."""
    if check_size and os.path.getsize(path) > MAX_FILE_BYTES:
        return False
    meta = pq.read_metadata(path)
    return all(meta.row_group(i).total_byte_size <= MAX_ROW_GROUP_BYTES for i in range(meta.num_row_groups))


def _place(store: DatasetStore, source: str, target: Path) -> None:
    """Put a dataset file at ``target``: hard link when possible, else copy, else download."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    if store.local:
        try:
            os.link(source, target)
            return
        except OSError:
            shutil.copyfile(source, target)
            return
    with store.fs.open_input_stream(source) as src, open(target, "wb") as dst:
        while chunk := src.read(8 << 20):
            dst.write(chunk)


def _rebatch(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Regroup record batches into tables of exactly ``size`` rows (the last may be shorter)."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if not batch.num_rows:
            continue
        pending.append(batch)
        rows += batch.num_rows
        while rows >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending)


def _writer(path: Path, schema: pa.Schema, table: str) -> pq.ParquetWriter:
    """A writer with the store's encodings, so re-chunked files read exactly like the originals."""
    if table == "filters":
        return pq.ParquetWriter(path, schema, compression=COMPRESSION, write_statistics=True, store_schema=False,
                                use_dictionary=[*CONSTANT_COLUMNS, "conv_index", "sparse"],
                                column_encoding={c: FLOAT_ENCODING for c in WEIGHT_COLUMNS})
    return pq.ParquetWriter(path, schema, compression=COMPRESSION, write_statistics=True)


def _write_chunks(sources: list[Path], table: str, out_dir: Path, rows_per_group: int,
                  rows_per_file: int | None) -> list[Path]:
    """Stream the sources' rows into files of ``rows_per_file`` rows (one file if None) in groups of ``rows_per_group``."""
    schema = arrow_schema(table).remove_metadata() if table == "filters" else None
    batches = (batch for source in sources for batch in pq.ParquetFile(source).iter_batches(batch_size=65536))
    outputs: list[Path] = []
    writer = None
    file_rows = 0
    try:
        for chunk in _rebatch(batches, rows_per_group):
            if schema is not None:
                chunk = chunk.cast(schema)
            if writer is None:
                outputs.append(out_dir / f"{len(outputs)}.parquet")
                writer = _writer(outputs[-1], chunk.schema, table)
                file_rows = 0
            writer.write_table(chunk, row_group_size=rows_per_group)
            file_rows += chunk.num_rows
            if rows_per_file is not None and file_rows >= rows_per_file:
                writer.close()
                writer = None
    finally:
        if writer is not None:
            writer.close()
    return outputs


def rechunk(sources: list[Path], table: str, name: Callable[[int], Path], split_files: bool = True) -> list[Path]:
    """Rewrite Parquet ``sources`` (one model's files of ``table``, in order) into files within the Hub limits.

    Row groups are sized from the sources' uncompressed bytes per row to stay under
    ``MAX_ROW_GROUP_BYTES``; with ``split_files``, files from their compressed bytes per
    row to stay under ``MAX_FILE_BYTES`` (halving the rows per file while a file still
    comes out too big; likewise for row groups). ``name(k)`` gives the path of the k-th output file. Rows keep
    their order and exact values; the result is the same bytes for the same input.
    """
    metas = [pq.read_metadata(s) for s in sources]
    n_rows = sum(m.num_rows for m in metas)
    uncompressed = sum(m.row_group(i).total_byte_size for m in metas for i in range(m.num_row_groups))
    compressed = sum(os.path.getsize(s) for s in sources)
    rows_per_group = max(1, min(n_rows, int(MAX_ROW_GROUP_BYTES / max(uncompressed / max(n_rows, 1), 1e-9))))
    rows_per_file = None
    if split_files:
        estimate = int(0.9 * MAX_FILE_BYTES / max(compressed / max(n_rows, 1), 1e-9))
        rows_per_file = max(rows_per_group, estimate // rows_per_group * rows_per_group)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".rechunk-", dir=sources[0].parent))
    try:
        while True:  # the estimates ignore per-group and per-file overheads: shrink until the output fits
            outputs = _write_chunks(sources, table, tmp_dir, rows_per_group, rows_per_file)
            groups_fit = all(fits_hub(str(o), check_size=False) for o in outputs)
            files_fit = rows_per_file is None or all(o.stat().st_size <= MAX_FILE_BYTES for o in outputs)
            if not groups_fit and rows_per_group > 1:
                rows_per_group //= 2
                if rows_per_file is not None:
                    rows_per_file = max(rows_per_group, rows_per_file // rows_per_group * rows_per_group)
            elif not files_fit and rows_per_file > rows_per_group:
                rows_per_file = max(rows_per_group, rows_per_file // 2 // rows_per_group * rows_per_group)
            else:
                break
            for output in outputs:
                output.unlink()
        for source in sources:
            source.unlink()  # a hard link: unlinking leaves the dataset's own file untouched
        final = []
        for k, output in enumerate(outputs):
            os.replace(output, name(k))
            final.append(Path(name(k)))
        return final
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def published_manifest(manifest: dict, snapshot: str, rows: dict[str, int], n_models: int) -> dict:
    """The manifest as published: versions and dates, build records without hosts or paths, the snapshot."""
    keep = ("format", "dataset_version", "schema_version", "pipeline_version", "created_at", "updated_at")
    out = {key: manifest[key] for key in keep if key in manifest}
    out.setdefault("format", "filterlens")
    out.setdefault("schema_version", schema_version())
    out["builds"] = [{k: b[k] for k in BUILD_KEYS if k in b} for b in manifest.get("builds", []) if isinstance(b, dict)]
    out["published"] = {"snapshot": snapshot, "models": n_models, "rows": rows, "published_with": __version__}
    return out


def check_layout(paths: list[str]) -> None:
    """HubLimitError when the tree exceeds the Hub's files-per-repo or entries-per-folder limits."""
    if len(paths) > MAX_FILES_PER_REPO:
        raise HubLimitError(f"the dataset would be {len(paths):,} files; the Hub handles at most "
                            f"{MAX_FILES_PER_REPO:,} per repo: publish subsets (e.g. per training dataset) to separate repos")
    entries: dict[str, set[str]] = {}
    for path in paths:
        parts = path.split("/")
        for depth in range(len(parts)):
            entries.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
    for folder, names in sorted(entries.items()):
        if len(names) > MAX_ENTRIES_PER_FOLDER:
            raise HubLimitError(f"folder {folder or '/'!r} would hold {len(names):,} entries; the Hub handles at most "
                                f"{MAX_ENTRIES_PER_FOLDER:,} per folder: publish subsets to separate repos")


def _stage_model_files(store: DatasetStore, model: StoredModel, out: Path, prefix: str) -> tuple[list[Path], bool]:
    """Place one model's layers and filters files under ``out``; re-chunk those beyond the limits.

    Returns the staged paths (the layers file first) and whether anything was re-chunked.
    """
    layer_target = out / store.layer_file(model)[len(prefix):]
    _place(store, store.layer_file(model), layer_target)
    rechunked = False
    if not fits_hub(str(layer_target), check_size=False):  # one layers file per model: only its row groups
        rechunk([layer_target], "layers", lambda k: layer_target, split_files=False)
        rechunked = True
    targets = []
    for source in store.filter_files(model):
        targets.append(out / source[len(prefix):])
        _place(store, source, targets[-1])
    if not all(fits_hub(str(t)) for t in targets):
        base = targets[0].parent
        targets = rechunk(targets, "filters", lambda k: base / f"part-{model.write_id}-{k}.parquet")
        rechunked = True
    return [layer_target, *targets], rechunked


def _stage_row(store: DatasetStore, models: pa.Table, position: int, n_filter_files: int, out: Path,
               prefix: str, row_files: set[str]) -> Path:
    """Place one model's row file; rewrite it when re-chunking changed ``n_filter_files`` (or it is missing)."""
    model_id = models.column("model_id")[position].as_py()
    slug = models.column("model")[position].as_py()
    source = store.model_row_path(slug)
    target = out / source[len(prefix):]
    if source in row_files and n_filter_files == models.column("n_filter_files")[position].as_py():
        _place(store, source, target)
        return target
    row = models.slice(position, 1)
    index = row.schema.get_field_index("n_filter_files")
    row = row.set_column(index, row.schema.field(index), pa.array([n_filter_files], pa.int32()))
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(row, target, compression=COMPRESSION)
    log.debug("%s: row file written for the published tree", model_id)
    return target


def stage(dataset: str, out_dir: str | os.PathLike, repo_id: str, revision: str | None = None,
          license: str | None = None) -> StagedTree:
    """Stage the committed part of ``dataset`` (a path or URI) into ``out_dir`` for publishing to ``repo_id``."""
    store = DatasetStore(dataset)
    store.require()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: the staging folder must be new or empty")
    out.mkdir(parents=True, exist_ok=True)
    models = store.models().sort_by("model_id")
    stored = stored_models_of(models)
    missing = store.incomplete_models(stored.values())
    if missing:
        raise StoreError(f"{dataset}: {len(missing)} committed models have missing files (e.g. {missing[0]}); "
                         "rebuild them (filterlens build/extract --force) or delete them before publishing")
    prefix = store.root.rstrip("/") + "/"
    check_layout([p[len(prefix):] for m in stored.values() for p in
                  [store.model_row_path(m.slug), store.layer_file(m), *store.filter_files(m)]])  # fail fast
    files: dict[str, Path] = {}
    n_filter_files: dict[str, int] = {}
    rechunked: list[str] = []
    for model_id, model in stored.items():
        paths, changed = _stage_model_files(store, model, out, prefix)
        n_filter_files[model_id] = len(paths) - 1
        rechunked += [model_id] if changed else []
        files.update({str(p.relative_to(out)): p for p in paths})
    row_files = set(store.part_files("models"))
    for position, model_id in enumerate(models.column("model_id").to_pylist()):
        row = _stage_row(store, models, position, n_filter_files[model_id], out, prefix, row_files)
        files[str(row.relative_to(out))] = row
    if rechunked:
        log.info("re-chunked %d models' files to fit the Hub's limits", len(rechunked))
    local_sources = [s for s in models.column("source_uri").to_pylist() if s and "://" not in s]
    if local_sources:
        log.warning("%d models' source_uri are local paths (e.g. %s); they are published as they are",
                    len(local_sources), local_sources[0])
    index = models.schema.get_field_index("n_filter_files")
    models = models.set_column(index, models.schema.field(index),
                               pa.array([n_filter_files[m] for m in models.column("model_id").to_pylist()], pa.int32()))

    staged = {path: StagedFile(path, str(local), local.stat().st_size, sha256_file(str(local)))
              for path, local in sorted(files.items())}
    rows = {t: 0 for t in ("models", "layers", "filters")}
    size = {t: 0 for t in rows}
    for path, item in staged.items():
        rows[path.split("/", 1)[0]] += pq.read_metadata(item.local).num_rows
        size[path.split("/", 1)[0]] += item.size
    snapshot = hashlib.sha256("".join(f"{p}\t{f.sha256}\n" for p, f in staged.items()).encode()).hexdigest()
    manifest = published_manifest(store.read_manifest(), snapshot, rows, models.num_rows)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    n_failures = store.failures().num_rows
    inputs = CardInputs(
        repo_id=repo_id, models=models.to_pylist(), rows=rows, bytes=size, manifest=manifest,
        files=dict(Counter(path.split("/", 1)[0] for path in staged)),
        snapshot=snapshot, revision=revision, license=license, pipeline_version=__version__,
        excluded=[f"`failures` ({n_failures} models whose latest extraction failed)"] if n_failures else [],
    )
    (out / CARD).write_text(render_card(inputs))
    for path in (MANIFEST, CARD):
        local = out / path
        staged[path] = StagedFile(path, str(local), local.stat().st_size, sha256_file(str(local)))
    check_layout([*staged, ".gitattributes"])
    return StagedTree(str(out), dict(sorted(staged.items())), inputs, manifest, rows, snapshot, sorted(rechunked))


# --- syncing -----------------------------------------------------------------------------------
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


def _same(local: StagedFile, remote: object | None) -> bool:
    """Whether the repo already holds exactly this file (LFS sha256, else git blob id)."""
    if remote is None:
        return False
    lfs = getattr(remote, "lfs", None)
    if lfs is not None:
        return lfs.sha256 == local.sha256 and int(lfs.size) == local.size
    return getattr(remote, "blob_id", None) == local.git_sha1()


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


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a huggingface_hub error, looking through wrapping exceptions."""
    from huggingface_hub.errors import HfHubHTTPError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, HfHubHTTPError) and exc.response is not None:
            return exc.response.status_code
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _status_error(status: int | None, exc: BaseException, endpoint: str, repo_id: str, token_origin: str,
                  revision: str) -> FilterlensError:
    """The filterlens error for a failed Hub request with HTTP ``status``."""
    if status == 401:
        return HubAuthError(f"{endpoint} rejected the token from {token_origin} (401 Unauthorized): it is invalid "
                            f"or expired; create a write token at {endpoint}/settings/tokens and pass --token or "
                            "set HF_TOKEN")
    if status == 403:
        return HubAuthError(f"the token from {token_origin} may not write to {repo_id} on {endpoint} "
                            f"(403 Forbidden): use a token with write access to {repo_id.split('/')[0]}")
    if status in (409, 412):
        return HubConflictError(f"{repo_id}@{revision} changed on {endpoint} while publishing (another writer?); "
                                "rerun to publish on top of the new state")
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return PublishError(f"{repo_id}: the Hub at {endpoint} answered {status or 'with an error'} ({first}); "
                        f"{RESUME}")


RESUME = "rerun the same command to resume (files already on the Hub are not sent again)"


@contextlib.contextmanager
def hub_errors(endpoint: str, repo_id: str, token_origin: str, revision: str = "main") -> Iterator[None]:
    """Turn huggingface_hub and network exceptions into filterlens errors with one clear line each."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    context = (endpoint, repo_id, token_origin, revision)
    try:
        yield
    except FilterlensError:
        raise
    except HfHubHTTPError as exc:
        raise _status_error(_http_status(exc), exc, *context) from exc
    except (RuntimeError, ValueError) as exc:  # huggingface_hub wraps failed uploads / reports bad input this way
        status = _http_status(exc)
        if status is not None:
            raise _status_error(status, exc, *context) from exc
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, (OSError, httpx2.HTTPError)):
            raise PublishError(f"{repo_id}: cannot reach {endpoint} ({type(cause).__name__}: {cause}); "
                               f"{RESUME}") from exc
        if isinstance(exc, ValueError):
            raise PublishError(f"{repo_id}: {(str(exc).splitlines() or ['invalid request'])[0]}") from exc
        raise
    except (OSError, httpx2.HTTPError) as exc:
        raise PublishError(f"{repo_id}: cannot reach {endpoint} ({type(exc).__name__}: {exc}); check the network "
                           f"or HF_ENDPOINT, then {RESUME}") from exc


def _write_updating_card(tree: StagedTree) -> StagedFile:
    """The card marked 'update in progress', committed first when it supersedes an existing card."""
    manifest = tree.manifest
    inputs = CardInputs(**{**tree.card_inputs.__dict__,
                           "updating": f"dataset version {manifest.get('dataset_version')} "
                                       f"(snapshot {tree.snapshot[:12]}) is being uploaded"})
    local = Path(tree.root) / UPDATING_CARD
    local.write_text(render_card(inputs))
    return StagedFile(CARD, str(local), local.stat().st_size, sha256_file(str(local)))


def sync(api, tree: StagedTree, repo_id: str, revision: str, message: str,  # noqa: ANN001 - HfApi
         max_files: int = MAX_FILES_PER_COMMIT, max_bytes: int = MAX_BYTES_PER_COMMIT,
         progress: bool = True) -> PublishResult:
    """Make ``revision`` of the dataset repo ``repo_id`` hold exactly the staged tree (see the module docstring)."""
    from huggingface_hub import CommitOperationDelete
    from huggingface_hub.hf_api import RepoFile

    remote = {f.path: f for f in api.list_repo_tree(repo_id, repo_type="dataset", revision=revision, recursive=True)
              if isinstance(f, RepoFile)}
    head = api.repo_info(repo_id, repo_type="dataset", revision=revision).sha
    url = f"{api.endpoint}/datasets/{repo_id}" + (f"/tree/{revision}" if revision != "main" else "")
    result = PublishResult(repo_id, revision, url, tree)
    changed = [f for f in tree.files.values() if not _same(f, remote.get(f.path))]
    deletions = sorted(p for p in remote if p.startswith(MANAGED_PREFIXES) and p not in tree.files)
    result.unchanged = len(tree.files) - len(changed)
    final_paths = {CARD, MANIFEST}
    data = [f for f in changed if f.path not in final_paths and not f.path.startswith("models/")]
    rows = [f for f in changed if f.path.startswith("models/")]  # after the files they name
    final = sorted((f for f in changed if f.path in final_paths), key=lambda f: (f.path == CARD, f.path))
    if not changed and not deletions:
        log.info("%s@%s is up to date (%d files)", repo_id, revision, len(tree.files))
        return result
    log.info("%s@%s: %d files to send (%.1f MB), %d unchanged, %d to delete", repo_id, revision, len(changed),
             sum(f.size for f in changed) / 1e6, result.unchanged, len(deletions))

    def commit(operations: list, title: str) -> None:
        nonlocal head
        info = api.create_commit(repo_id, operations, commit_message=title, repo_type="dataset", revision=revision,
                                 parent_commit=head)
        head = info.oid
        result.commits.append(info.oid)

    batches = commit_batches(data, max_files, max_bytes)
    row_batches = commit_batches(rows, max_files, max_bytes)
    with tqdm(total=sum(f.size for f in changed), unit="B", unit_scale=True, desc=f"publish {repo_id}",
              disable=None if progress else True) as bar:
        if CARD in remote and (data or deletions):
            updating = _write_updating_card(tree)
            if not _same(updating, remote[CARD]):
                commit([_add(updating)], f"{message} (update in progress)")
        for number, batch in enumerate(batches, 1):
            commit([_add(f) for f in batch], f"{message} (data {number}/{len(batches)})")
            result.uploaded += [f.path for f in batch]
            result.uploaded_bytes += sum(f.size for f in batch)
            bar.update(sum(f.size for f in batch))
        for number, batch in enumerate(row_batches, 1):
            commit([_add(f) for f in batch], f"{message} (models {number}/{len(row_batches)})")
            result.uploaded += [f.path for f in batch]
            result.uploaded_bytes += sum(f.size for f in batch)
            bar.update(sum(f.size for f in batch))
        if result.commits and all(f.path != CARD for f in final):
            final.append(tree.files[CARD])  # a no-op add if unchanged; the card always closes a run that committed
        commit([*(_add(f) for f in final), *(CommitOperationDelete(path_in_repo=p) for p in deletions)], message)
        result.uploaded += [f.path for f in final]
        result.uploaded_bytes += sum(f.size for f in final)
        result.deleted = deletions
        bar.update(sum(f.size for f in final))
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
    if not REPO_ID.match(repo_id or ""):
        raise ConfigError(f"--repo {repo_id!r} must be ORG/NAME (letters, digits, '.', '_', '-')")


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
    with hub_errors(endpoint, repo_id, origin, revision):
        identity = api.whoami()
    role = ((identity.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubAuthError(f"the token from {origin} is read-only ({identity.get('name')}); publishing needs a "
                           f"write token: create one at {endpoint}/settings/tokens")
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
