"""A small fake Hugging Face Hub on 127.0.0.1 for offline tests of publishing and hf:// reading.

It implements exactly the HTTP endpoints that huggingface_hub 2.4's client calls
for our flows, with the Hub's response shapes and error headers (X-Error-Code),
so ``HfApi`` and ``HfFileSystem`` run unmodified against it:

- ``GET /api/whoami-v2``; ``POST /api/repos/create`` (409 + url when it exists);
  ``POST /api/{type}s/{repo}/branch/{branch}``; ``GET /api/{type}s/{repo}[/revision/{rev}]``
- ``POST /api/validate-yaml`` (parses the card's YAML front matter, checks ``configs``)
- ``POST /api/{type}s/{repo}/preupload/{rev}`` (upload mode from .gitattributes, remote oid)
- ``POST /{prefix}{repo}.git/info/lfs/objects/batch`` (basic transfer; no action for stored objects),
  ``PUT /lfs-upload/{oid}`` (sha256 and size checked), ``POST /lfs-verify/{oid}``
- ``POST /api/{type}s/{repo}/commit/{rev}`` (ndjson: file, lfsFile, deletedFile, deletedFolder; parentCommit)
- ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]``, ``POST /api/{type}s/{repo}/paths-info/{rev}``
- ``GET|HEAD /{prefix}{repo}/resolve/{rev}/{path}`` with Range requests

Xet is not implemented (tests run with ``HF_HUB_DISABLE_XET=1``). Everything the
client sent is recorded (``requests``, ``lfs_uploads``, ``commits``) and one-shot
faults can be injected with :meth:`FakeHub.fail` to simulate interruptions.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

DEFAULT_GITATTRIBUTES = b"""*.parquet filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
"""
REGULAR_MAX_BYTES = 10 * 1024 * 1024
TYPE_PREFIXES = {"datasets": "dataset", "models": "model", "spaces": "space"}


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Blob:
    """A file in a commit: regular (content) or LFS (oid of the stored object)."""

    size: int
    content: bytes | None = None
    lfs_oid: str | None = None

    @property
    def git_oid(self) -> str:
        if self.lfs_oid is not None:
            return git_blob_sha1(lfs_pointer(self.lfs_oid, self.size))
        return git_blob_sha1(self.content or b"")


@dataclass
class Commit:
    oid: str
    parent: str | None
    tree: dict[str, Blob]
    message: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


@dataclass
class CommitRecord:
    """What one /commit call changed, in order (for assertions)."""

    repo_id: str
    revision: str
    oid: str
    message: str
    added: list[str]
    deleted: list[str]


@dataclass
class Fault:
    kind: str
    skip: int
    status: int
    message: str


class HubHTTPError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class FakeHub:
    """The fake Hub's state and server. Use as a context manager; ``url`` is the endpoint."""

    def __init__(self, users: dict[str, str] | None = None, orgs: dict[str, list[str]] | None = None) -> None:
        self.tokens = users if users is not None else {"hf_writer": "alice"}
        """token -> user name."""
        self.orgs = orgs if orgs is not None else {"lab": ["alice"]}
        """organisation -> members (who may write there)."""
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.lfs_uploads: list[str] = []
        self.commits: list[CommitRecord] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clock = 0

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fakehub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake hub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- test helpers ------------------------------------------------------------------------
    def fail(self, kind: str, after: int = 0, status: int = 507, message: str = "simulated failure") -> None:
        """Answer the (after+1)-th next request of ``kind`` with ``status`` (one shot).

        Kinds: commit, preupload, lfs-batch, lfs-upload, tree, paths-info, resolve, create, whoami.
        507 is not retried by the client, so the call fails at once like a dropped connection would.
        """
        with self.lock:
            self.faults.append(Fault(kind, after, status, message))

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        """The repo's files at ``revision`` as path -> bytes (LFS objects resolved)."""
        commit = self.repo(repo_id, repo_type).resolve(revision)
        assert commit is not None, f"no revision {revision}"
        return {path: self._content(blob) for path, blob in commit.tree.items()}

    def export(self, repo_id: str, dest: Path, revision: str = "main", repo_type: str = "dataset") -> Path:
        """Write the repo's tree at ``revision`` to ``dest`` (to load it with local readers)."""
        for path, content in self.files(repo_id, revision, repo_type).items():
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        return dest

    def _content(self, blob: Blob) -> bytes:
        return self.lfs_objects[blob.lfs_oid] if blob.lfs_oid is not None else (blob.content or b"")

    # --- state changes -----------------------------------------------------------------------
    def _new_oid(self, *parts: str) -> str:
        self._clock += 1
        return hashlib.sha1("\0".join([str(self._clock), *parts]).encode()).hexdigest()

    def create_repo(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_type, repo_id, private)
        oid = self._new_oid(repo_id, "initial")
        tree = {".gitattributes": Blob(len(DEFAULT_GITATTRIBUTES), content=DEFAULT_GITATTRIBUTES)}
        repo.commits[oid] = Commit(oid, None, tree, "initial commit")
        repo.branches["main"] = oid
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def can_write(self, user: str | None, repo_id: str) -> bool:
        namespace = repo_id.split("/", 1)[0]
        return user is not None and (namespace == user or user in self.orgs.get(namespace, []))

    def take_fault(self, kind: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.kind == kind:
                    if fault.skip:
                        fault.skip -= 1
                        return None
                    self.faults.remove(fault)
                    return fault
        return None


def _lfs_patterns(gitattributes: bytes) -> list[str]:
    patterns = []
    for line in gitattributes.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _matches(path: str, pattern: str) -> bool:
    if "/" in pattern:
        return fnmatch.fnmatch(path, pattern.lstrip("/"))
    return fnmatch.fnmatch(path.rsplit("/", 1)[-1], pattern)


def _validate_card(content: str) -> list[str]:
    """Errors the Hub would report for a README's YAML front matter (the parts we rely on)."""
    if not content.startswith("---\n"):
        return []
    end = content.find("\n---\n", 4)
    if end < 0:
        return ["the YAML front matter is not closed by a '---' line"]
    try:
        meta = yaml.safe_load(content[4:end])
    except yaml.YAMLError as exc:
        return [f"invalid YAML: {exc}"]
    if meta is None:
        return []
    if not isinstance(meta, dict):
        return ["the YAML front matter must be a mapping"]
    errors = []
    for config in meta.get("configs", []) or []:
        if not isinstance(config, dict) or "config_name" not in config or "data_files" not in config:
            errors.append(f"configs entry {config!r} needs config_name and data_files")
    if "license" in meta and not isinstance(meta["license"], str):
        errors.append("license must be a string")
    return errors


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the default stderr log
        pass

    # --- plumbing ----------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)
        self.fake.requests.append((self.command, self.path, status))

    def _json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers=headers)

    def _error(self, error: HubHTTPError, head: bool = False) -> None:
        headers = {"X-Error-Message": error.message}
        if error.code:
            headers["X-Error-Code"] = error.code
        self._send(error.status, json.dumps({"error": error.message}).encode(), headers=headers, head=head)

    def _user(self, required: bool) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if token is None:
            if required:
                raise HubHTTPError(401, "You must be authenticated to access this resource")
            return None
        user = self.fake.tokens.get(token)
        if user is None:
            raise HubHTTPError(401, "Invalid credentials in Authorization header")
        return user

    def _repo(self, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        user = self._user(required=write)
        repo = self.fake.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not self.fake.can_write(user, repo_id)):
            raise HubHTTPError(404, "Repository not found", "RepoNotFound")
        if write and not self.fake.can_write(user, repo_id):
            raise HubHTTPError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubHTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _fault(self, kind: str) -> None:
        fault = self.fake.take_fault(kind)
        if fault is not None:
            raise HubHTTPError(fault.status, fault.message)

    # --- dispatch ----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        segments = [unquote(s) for s in split.path.strip("/").split("/")]
        query = parse_qs(split.query)
        body = self._body() if method in ("POST", "PUT") else b""
        try:
            with self.fake.lock:
                self._route(method, segments, query, body)
        except HubHTTPError as error:
            self._error(error, head=method == "HEAD")

    def _route(self, method: str, seg: list[str], query: dict, body: bytes) -> None:
        if seg[:1] == ["api"]:
            if seg[1:] == ["whoami-v2"] and method == "GET":
                return self._whoami()
            if seg[1:] == ["validate-yaml"] and method == "POST":
                return self._validate_yaml(body)
            if seg[1:] == ["repos", "create"] and method == "POST":
                return self._create_repo(body)
            if len(seg) >= 4 and seg[1] in TYPE_PREFIXES:
                repo_type, repo_id, rest = TYPE_PREFIXES[seg[1]], f"{seg[2]}/{seg[3]}", seg[4:]
                if not rest and method == "GET":
                    return self._repo_info(repo_type, repo_id, "main")
                if rest[:1] == ["revision"] and len(rest) == 2 and method == "GET":
                    return self._repo_info(repo_type, repo_id, rest[1])
                if rest[:1] == ["branch"] and len(rest) == 2 and method == "POST":
                    return self._create_branch(repo_type, repo_id, rest[1], body)
                if rest[:1] == ["preupload"] and len(rest) == 2 and method == "POST":
                    return self._preupload(repo_type, repo_id, rest[1], body, query)
                if rest[:1] == ["commit"] and len(rest) == 2 and method == "POST":
                    return self._commit_files(repo_type, repo_id, rest[1], body, query)
                if rest[:1] == ["tree"] and len(rest) >= 2 and method == "GET":
                    return self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]), query)
                if rest[:1] == ["paths-info"] and len(rest) == 2 and method == "POST":
                    return self._paths_info(repo_type, repo_id, rest[1], body)
        if seg[:1] == ["lfs-upload"] and len(seg) == 2 and method == "PUT":
            return self._lfs_upload(seg[1], body)
        if seg[:1] == ["lfs-verify"] and len(seg) == 2 and method == "POST":
            return self._lfs_verify(seg[1])
        repo_type, rest = ("model", seg)
        if seg and seg[0] in TYPE_PREFIXES:
            repo_type, rest = TYPE_PREFIXES[seg[0]], seg[1:]
        if len(rest) >= 2 and rest[1].endswith(".git") and rest[2:] == ["info", "lfs", "objects", "batch"] \
                and method == "POST":
            return self._lfs_batch(repo_type, f"{rest[0]}/{rest[1][:-4]}", body)
        if len(rest) >= 5 and rest[2] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(repo_type, f"{rest[0]}/{rest[1]}", rest[3], "/".join(rest[4:]), method == "HEAD")
        raise HubHTTPError(404, f"fake hub: no route for {method} {self.path}")

    # --- endpoints ---------------------------------------------------------------------------
    def _whoami(self) -> None:
        self._fault("whoami")
        user = self._user(required=True)
        orgs = [{"name": org, "type": "org"} for org, members in self.fake.orgs.items() if user in members]
        self._json(200, {"type": "user", "name": user, "orgs": orgs,
                         "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})

    def _validate_yaml(self, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        errors = _validate_card(payload.get("content", ""))
        status = 400 if errors else 200
        self._json(status, {"errors": [{"message": e} for e in errors], "warnings": []})

    def _create_repo(self, body: bytes) -> None:
        self._fault("create")
        user = self._user(required=True)
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.fake.url}/{prefix}{repo_id}"
        if not self.fake.can_write(user, repo_id):
            raise HubHTTPError(403, f"You don't have the rights to create a repo under {repo_id.split('/')[0]}")
        if (repo_type, repo_id) in self.fake.repos:
            self._json(409, {"error": f"You already created this {repo_type} repo", "url": url})
            return
        self.fake.create_repo(repo_type, repo_id, payload.get("visibility") == "private" or bool(payload.get("private")))
        self._json(200, {"url": url, "name": repo_id})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = self._commit(repo, revision)
        self._json(200, {"id": repo_id, "author": repo_id.split("/")[0], "sha": commit.oid, "private": repo.private,
                         "disabled": False, "gated": False, "tags": [],
                         "siblings": [{"rfilename": p} for p in sorted(commit.tree)]})

    def _create_branch(self, repo_type: str, repo_id: str, branch: str, body: bytes) -> None:
        repo = self._repo(repo_type, repo_id, write=True)
        payload = json.loads(body or b"{}")
        if branch in repo.branches:
            raise HubHTTPError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._commit(repo, payload.get("startingPoint") or "main")
        repo.branches[branch] = start.oid
        self._json(200, {})

    def _preupload(self, repo_type: str, repo_id: str, revision: str, body: bytes, query: dict) -> None:
        self._fault("preupload")
        repo = self._repo(repo_type, repo_id, write=True)
        if query.get("create_pr"):
            raise HubHTTPError(400, "fake hub: pull requests are not supported")
        commit = self._commit(repo, revision)
        attributes = commit.tree.get(".gitattributes")
        patterns = _lfs_patterns(self.fake._content(attributes)) if attributes else []
        files = []
        for item in json.loads(body)["files"]:
            path, size = item["path"], int(item["size"])
            sample = base64.b64decode(item["sample"])
            lfs = size >= REGULAR_MAX_BYTES or b"\0" in sample or any(_matches(path, p) for p in patterns)
            existing = commit.tree.get(path)
            oid = None
            if existing is not None:
                oid = existing.lfs_oid if existing.lfs_oid is not None else existing.git_oid
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": files, "commitOid": commit.oid})

    def _lfs_batch(self, repo_type: str, repo_id: str, body: bytes) -> None:
        self._fault("lfs-batch")
        self._repo(repo_type, repo_id, write=True)
        payload = json.loads(body)
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], int(obj["size"])
            entry: dict = {"oid": oid, "size": size}
            if oid not in self.fake.lfs_objects:
                entry["authenticated"] = True
                entry["actions"] = {"upload": {"href": f"{self.fake.url}/lfs-upload/{oid}", "header": {}},
                                    "verify": {"href": f"{self.fake.url}/lfs-verify/{oid}", "header": {}}}
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _lfs_upload(self, oid: str, body: bytes) -> None:
        self._fault("lfs-upload")
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubHTTPError(400, f"content does not match sha256 {oid}")
        self.fake.lfs_objects[oid] = body
        self.fake.lfs_uploads.append(oid)
        self._send(200)

    def _lfs_verify(self, oid: str) -> None:
        if oid not in self.fake.lfs_objects:
            raise HubHTTPError(404, f"object {oid} not found")
        self._json(200, {})

    def _commit_files(self, repo_type: str, repo_id: str, revision: str, body: bytes, query: dict) -> None:
        self._fault("commit")
        repo = self._repo(repo_type, repo_id, write=True)
        if query.get("create_pr"):
            raise HubHTTPError(400, "fake hub: pull requests are not supported")
        if revision not in repo.branches:
            raise HubHTTPError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        head = repo.commits[repo.branches[revision]]
        tree = dict(head.tree)
        header: dict = {}
        added, deleted = [], []
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                content = base64.b64decode(value["content"])
                tree[value["path"]] = Blob(len(content), content=content)
                added.append(value["path"])
            elif key == "lfsFile":
                oid = value["oid"]
                if oid not in self.fake.lfs_objects:
                    raise HubHTTPError(400, f"Your push was rejected because an LFS pointer pointed to a file that "
                                            f"does not exist: {value['path']}")
                tree[value["path"]] = Blob(len(self.fake.lfs_objects[oid]), lfs_oid=oid)
                added.append(value["path"])
            elif key == "deletedFile":
                if value["path"] not in tree:
                    raise HubHTTPError(404, "A file with this name doesn't exist", "EntryNotFound")
                del tree[value["path"]]
                deleted.append(value["path"])
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                gone = [p for p in tree if p.startswith(prefix)]
                if not gone:
                    raise HubHTTPError(404, "A folder with this name doesn't exist", "EntryNotFound")
                for path in gone:
                    del tree[path]
                deleted.extend(gone)
            else:
                raise HubHTTPError(400, f"fake hub: unknown commit operation {key!r}")
        parent = header.get("parentCommit")
        if parent is not None and not head.oid.startswith(parent):
            raise HubHTTPError(412, "A commit has happened since. Please refresh and try again.")
        oid = self.fake._new_oid(repo_id, header.get("summary", ""))
        repo.commits[oid] = Commit(oid, head.oid, tree, header.get("summary", ""))
        repo.branches[revision] = oid
        self.fake.commits.append(CommitRecord(repo_id, revision, oid, header.get("summary", ""), added, deleted))
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self._json(200, {"success": True, "commitOid": oid, "commitUrl": f"{self.fake.url}/{prefix}{repo_id}/commit/{oid}",
                         "pullRequestUrl": None})

    def _entry(self, path: str, blob: Blob | None) -> dict:
        if blob is None:
            return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path}
        entry = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": path}
        if blob.lfs_oid is not None:
            entry["lfs"] = {"oid": blob.lfs_oid, "size": blob.size,
                            "pointerSize": len(lfs_pointer(blob.lfs_oid, blob.size))}
        return entry

    def _entries(self, tree: dict[str, Blob], base: str, recursive: bool) -> Iterator[dict]:
        prefix = base + "/" if base else ""
        directories: set[str] = set()
        for path in sorted(tree):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    directories.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                yield self._entry(path, tree[path])
        for directory in sorted(directories):
            yield self._entry(directory, None)

    def _tree(self, repo_type: str, repo_id: str, revision: str, path: str, query: dict) -> None:
        self._fault("tree")
        commit = self._commit(self._repo(repo_type, repo_id), revision)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        path = path.strip("/")
        if path and not any(p.startswith(path + "/") for p in commit.tree):
            raise HubHTTPError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        self._json(200, list(self._entries(commit.tree, path, recursive)))

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, body: bytes) -> None:
        self._fault("paths-info")
        commit = self._commit(self._repo(repo_type, repo_id), revision)
        form = parse_qs(body.decode())
        out = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.tree:
                out.append(self._entry(path, commit.tree[path]))
            elif any(p.startswith(path + "/") for p in commit.tree):
                out.append(self._entry(path, None))
        self._json(200, out)

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str, head: bool) -> None:
        self._fault("resolve")
        repo = self._repo(repo_type, repo_id)
        commit = self._commit(repo, revision)
        blob = commit.tree.get(path)
        if blob is None:
            raise HubHTTPError(404, f"{path} not found", "EntryNotFound")
        content = self.fake._content(blob)
        etag = blob.lfs_oid or blob.git_oid
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes",
                   "Last-Modified": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())}
        if blob.lfs_oid is not None:
            headers.update({"X-Linked-Etag": f'"{blob.lfs_oid}"', "X-Linked-Size": str(blob.size)})
        ranged = self.headers.get("Range")
        if ranged and ranged.startswith("bytes="):
            start_text, _, end_text = ranged[6:].partition("-")
            start = int(start_text) if start_text else max(0, len(content) - int(end_text))
            end = min(int(end_text), len(content) - 1) if end_text and start_text else len(content) - 1
            if start >= len(content):
                headers["Content-Range"] = f"bytes */{len(content)}"
                self._send(416, b"", content_type="application/octet-stream", headers=headers, head=head)
                return
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            self._send(206, content[start:end + 1], content_type="application/octet-stream", headers=headers, head=head)
            return
        self._send(200, content, content_type="application/octet-stream", headers=headers, head=head)
