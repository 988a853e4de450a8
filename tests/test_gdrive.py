"""Google Drive and GitHub release downloads against the fakes in tests/fakedrive.py (no --mirror)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
import yaml
from fakedrive import FakeDrive, FakeGitHub
from zoo_fixtures import tiny_bytes

from pipeline.dataset.layout import slugify
from pipeline.dataset.query import open_dataset
from pipeline.errors import (
    DriveNotFoundError,
    DrivePageError,
    DrivePermissionError,
    DriveQuotaError,
)
from pipeline.fetch.download import fetch_entry, resolve_remote
from pipeline.fetch.gdrive import ENDPOINT_ENV, confirm_url, file_name
from pipeline.fetch.http import retry_after
from pipeline.fetch.policy import FetchPolicy
from pipeline.zoo.zoo_file import ZooEntry

FAST = FetchPolicy(retries=2, backoff_base_s=0.01, backoff_max_s=0.05, deadline_s=30)


@pytest.fixture
def drive(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDrive]:
    fake = FakeDrive()
    monkeypatch.setenv(ENDPOINT_ENV, fake.url)
    yield fake
    fake.close()


def fetch(file_id: str, cache: Path, policy: FetchPolicy = FAST) -> Path:
    got = fetch_entry(ZooEntry(model_id=f"lab/{file_id}", sources=[f"gdrive:{file_id}"]), cache, policy=policy)
    return Path(got.paths[0])


def hand(cache: Path, file_id: str) -> Path:
    return cache / slugify(f"lab/{file_id}") / f"0-{file_id}"


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# --- the way to the bytes -------------------------------------------------------------------------
def test_the_endpoint_override_points_gdrive_sources_at_another_host(drive: FakeDrive) -> None:
    assert resolve_remote("gdrive:1AbC", None) == f"{drive.url}/download?id=1AbC&export=download&confirm=t"
    assert resolve_remote("gdrive:1AbC", "http://mirror/") == "http://mirror/gdrive/1AbC"


@pytest.mark.parametrize(("page", "kinds"), [
    ("direct", ["start"]),
    ("form", ["start", "confirmed"]),
    ("form-at", ["start", "confirmed"]),
    ("link", ["start", "uc", "file"]),  # /uc answers only with the warning page's cookie, then redirects
    ("json", ["start", "file"]),
])
def test_each_confirm_page_variant_leads_to_the_file(drive: FakeDrive, tmp_path: Path, page: str,
                                                     kinds: list[str]) -> None:
    drive.add("F1", tiny_bytes(1), page=page, name="resnet 18.pt")
    path = fetch("F1", tmp_path)
    assert path == hand(tmp_path, "F1").with_name("0-F1-resnet_18.pt")  # the name from Content-Disposition
    assert path.read_bytes() == tiny_bytes(1)
    assert [k for k, _ in drive.kinds()] == kinds
    assert sorted(p.name for p in path.parent.iterdir()) == ["0-F1-resnet_18.pt", "0-F1-resnet_18.pt.json"]


def test_confirm_url_reads_each_page_form() -> None:
    base = "https://drive.usercontent.google.com/download?id=X&export=download"
    form = ('<form id="download-form" action="https://drive.usercontent.google.com/download?x=1&amp;y=2">'
            '<input type="hidden" name="id" value="X"><input type="hidden" name="uuid" value="u&amp;1">'
            '<input type="text" name="ignored" value="no"></form>')
    assert confirm_url(form, base) == "https://drive.usercontent.google.com/download?x=1&y=2&id=X&uuid=u%261"
    assert confirm_url('<a href="/uc?export=download&amp;confirm=ab&amp;id=X">', "https://drive.google.com/uc?id=X") \
        == "https://drive.google.com/uc?export=download&confirm=ab&id=X"
    assert confirm_url('"downloadUrl":"https:\\/\\/doc.example\\/d?e\\u003ddownload\\u0026id\\u003dX"', base) \
        == "https://doc.example/d?e=download&id=X"
    assert confirm_url("<html>nothing</html>", base) is None


def test_file_names_and_retry_after_are_read_from_headers() -> None:
    assert file_name({"Content-Disposition": "attachment; filename=\"a.pt\"; filename*=UTF-8''b%20c.pt"}) == "b_c.pt"
    assert file_name({"Content-Disposition": 'attachment; filename="../../etc/passwd"'}) == "passwd"
    assert file_name({}) is None
    assert retry_after({"Retry-After": "7"}) == 7.0 and retry_after({}) is None
    assert 88 <= retry_after({"Retry-After": formatdate(time.time() + 90, usegmt=True)}) <= 90


# --- refusals -----------------------------------------------------------------------------------
def advice(cache: Path, file_id: str) -> str:
    return (f"use --mirror (serving <mirror>/gdrive/{file_id}), or download the file in a browser and save it as "
            f"{hand(cache, file_id)}")


@pytest.mark.parametrize(("refuse", "error", "attempts", "says"), [
    ("quota", DriveQuotaError, 2, "Google Drive refuses for now: too many downloads of this file recently; "
                                  "retry later, or "),
    ("quota403", DriveQuotaError, 2, "Google Drive refuses for now: too many downloads of this file recently; "
                                     "retry later, or "),
    ("subcaption", DriveQuotaError, 2, "Google Drive refuses for now: too many downloads of this file recently; "
                                       "retry later, or "),
    ("signin", DrivePermissionError, 1, "Google Drive asks to sign in or request access (the file is not shared "
                                        "with anyone who has the link); "),
    ("denied", DrivePermissionError, 1, "Google Drive denies access (HTTP 403; the file is not shared with anyone "
                                        "who has the link); "),
    (None, DriveNotFoundError, 1, "Google Drive has no such file (HTTP 404); check the id in the zoo, or "),
])
def test_refusals_fail_with_their_class_and_one_line_saying_what_to_do(drive: FakeDrive, tmp_path: Path,
                                                                       refuse: str | None, error: type,
                                                                       attempts: int, says: str) -> None:
    if refuse:
        drive.add("F2", tiny_bytes(2), refuse=refuse)
    with pytest.raises(error) as caught:
        fetch("F2", tmp_path)
    assert str(caught.value) == f"gdrive:F2: {says}{advice(tmp_path, 'F2')}"
    assert caught.value.attempts == attempts and caught.value.transient is (error is DriveQuotaError)
    assert files_under(tmp_path) == []


def test_a_page_sent_as_the_file_never_reaches_the_cache(drive: FakeDrive, tmp_path: Path) -> None:
    drive.add("F3", b"<!DOCTYPE html><html>Sign in</html>", page="direct")
    with pytest.raises(DrivePageError) as caught:
        fetch("F3", tmp_path)
    assert str(caught.value) == ("gdrive:F3: Google Drive sent 35 bytes that are not a checkpoint (no zip, pickle "
                                 f"or safetensors header); {advice(tmp_path, 'F3')}")
    assert files_under(tmp_path) == []


def test_429_waits_as_long_as_retry_after_says(drive: FakeDrive, tmp_path: Path) -> None:
    drive.add("F4", tiny_bytes(4), page="form", busy=1, retry_after=1)
    started = time.monotonic()
    assert fetch("F4", tmp_path).read_bytes() == tiny_bytes(4)
    assert 1.0 <= time.monotonic() - started < 1.5 + 1  # 1 s plus at most 25 % jitter (and the requests)
    assert [k for k, _ in drive.kinds()] == ["start", "start", "confirmed"]


def test_a_retry_after_past_the_deadline_fails_at_once(drive: FakeDrive, tmp_path: Path) -> None:
    drive.add("F5", tiny_bytes(5), busy=5, retry_after=100)
    started = time.monotonic()
    with pytest.raises(DriveQuotaError) as caught:
        fetch("F5", tmp_path, FetchPolicy(retries=3, deadline_s=10))
    assert time.monotonic() - started < 1.0 and caught.value.attempts == 1 and caught.value.retry_after == 100
    assert str(caught.value).startswith("gdrive:F5: Google Drive refuses for now: too many downloads of this file "
                                        "recently (Retry-After 100 s); retry later, or use --mirror")


# --- resume ----------------------------------------------------------------------------------------
def test_a_cut_download_resumes_with_range_on_the_resolved_url_only(drive: FakeDrive, tmp_path: Path) -> None:
    data = tiny_bytes(6)
    drive.add("F6", data, page="form", cut_first=True)
    assert fetch("F6", tmp_path).read_bytes() == data
    assert drive.kinds() == [("start", None), ("confirmed", None), ("confirmed", f"bytes={len(data) // 2}-")]
    assert drive.log[1][1] == drive.log[2][1]  # the same resolved URL


def test_an_expired_resolved_url_is_resolved_again_and_the_range_sent_there(drive: FakeDrive,
                                                                             tmp_path: Path) -> None:
    data = tiny_bytes(7)
    drive.add("F7", data, page="form-at", cut_first=True, token_uses=1)
    assert fetch("F7", tmp_path).read_bytes() == data
    rest = f"bytes={len(data) // 2}-"
    assert drive.kinds() == [("start", None), ("confirmed", None), ("confirmed", rest), ("start", None),
                             ("confirmed", rest)]
    assert drive.log[1][1] == drive.log[2][1] != drive.log[4][1]  # the expired URL, then a fresh one


def test_a_file_saved_by_hand_is_used_without_asking_drive(drive: FakeDrive, tmp_path: Path) -> None:
    hand(tmp_path, "F8").parent.mkdir(parents=True)
    hand(tmp_path, "F8").write_bytes(tiny_bytes(8))
    assert fetch("F8", tmp_path) == hand(tmp_path, "F8") and drive.log == []


def test_signed_release_redirects_are_followed_afresh_on_resume(tmp_path: Path) -> None:
    github = FakeGitHub()
    try:
        data = tiny_bytes(9)
        url = github.add("/lab/models/releases/download/v1/m.pt", data, cut_first=True)
        got = fetch_entry(ZooEntry(model_id="lab/m", sources=[url]), tmp_path, policy=FAST)
        assert Path(got.paths[0]).read_bytes() == data
        rest = f"bytes={len(data) // 2}-"
        assert [(k, r) for k, _, r in github.log] == [("release", None), ("signed", None), ("release", rest),
                                                        ("signed", rest)]
        assert github.log[1][1] != github.log[3][1]  # a new signed URL, the first one had expired
        assert got.validators[0]["url"] == url  # the release URL is what the cache remembers
    finally:
        github.close()


# --- politeness ------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", [1, 2])
def test_drive_downloads_in_flight_are_capped_per_host(drive: FakeDrive, tmp_path: Path, limit: int) -> None:
    for k in range(5):
        drive.add(f"P{k}", tiny_bytes(k), page="direct", delay_s=0.2)
    policy = FetchPolicy(retries=1, drive_downloads=limit)
    threads = [threading.Thread(target=fetch, args=(f"P{k}", tmp_path / str(k), policy)) for k in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert drive.max_active == limit and sum(f.served for f in drive.files.values()) == 5


# --- a whole build from the fake Drive ------------------------------------------------------------
def test_a_build_from_drive_keeps_the_good_models_and_classifies_the_bad(cli, drive: FakeDrive,  # noqa: ANN001
                                                                        tmp_path: Path) -> None:
    good = {"G1": {"page": "direct"}, "G2": {"page": "form"}, "G3": {"page": "form-at", "cut_first": True},
            "G4": {"page": "link"}, "G5": {"page": "json"}, "G6": {"busy": 1, "retry_after": 1}}
    bad = {"B1": ({"refuse": "quota"}, "DriveQuotaError", True, 2),
           "B2": ({"refuse": "signin"}, "DrivePermissionError", False, 1),
           "B3": (None, "DriveNotFoundError", False, 1),
           "B4": ({"page": "direct", "data": b"<html>no</html>"}, "DrivePageError", False, 1)}
    for k, (file_id, options) in enumerate(good.items()):
        drive.add(file_id, tiny_bytes(10 + k), **options)
    for file_id, (options, *_) in bad.items():
        if options is not None:
            drive.add(file_id, options.pop("data", tiny_bytes(0)), **options)
    models = [{"id": f"lab/{i}", "source": f"gdrive:{i}", "dataset": "cifar10", "arch": "zoo_fixtures:tiny_net"}
              for i in [*good, *bad]]
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"models": models}))
    result = cli("build", zoo, "--out", tmp_path / "ds", "--backend", "local", "--cache-dir", tmp_path / "cache",
                 "--retries", "2", "--drive-downloads", "2", "--no-progress")
    assert result.code == 3, result.err
    with open_dataset(str(tmp_path / "ds")) as ds:
        done = [r[0] for r in ds.con.execute("SELECT model_id FROM models ORDER BY 1").fetchall()]
        failures = ds.con.execute("SELECT model_id, stage, error_class, transient, attempts FROM failures "
                                  "ORDER BY 1").fetchall()
    assert done == [f"lab/{i}" for i in good]
    assert failures == [(f"lab/{i}", "download", cls, transient, attempts)
                        for i, (_, cls, transient, attempts) in bad.items()]
    assert files_under(tmp_path / "cache") == []


def test_a_changed_drive_file_is_noticed_without_a_digest(drive: FakeDrive, tmp_path: Path) -> None:
    from pipeline.fetch.download import probe_recorded
    from pipeline.fetch.validators import changed, dataset_records

    drive.add("F9", tiny_bytes(1), page="form")
    fetched = fetch_entry(ZooEntry(model_id="lab/F9", sources=["gdrive:F9"]), tmp_path, policy=FAST)
    stored = dataset_records(fetched.validators)
    assert stored and stored[0]["etag"].startswith('"')
    assert not changed(stored, probe_recorded(stored, None))  # asked through the confirm page: the same file
    drive.files["F9"].data = tiny_bytes(2)
    assert changed(stored, probe_recorded(stored, None))
    drive.files["F9"].refuse = "quota"  # Drive cannot tell now: unknown, not "changed"
    assert probe_recorded(stored, None) == [None]
