"""Downloads that cannot splice two versions, fill the disk or hang: real local HTTP servers, small limits."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from checkpoint_server import CheckpointServer

from pipeline.build.config import BuildConfig
from pipeline.errors import (
    CheckpointTooLargeError,
    DownloadDeadlineError,
    DownloadError,
    SizeMismatchError,
    StalledDownloadError,
)
from pipeline.fetch.download import fetch_entry
from pipeline.fetch.policy import FetchPolicy, TransferGuard
from pipeline.fetch.validators import read_record
from pipeline.zoo.zoo_file import ZooEntry

V1 = bytes(range(256)) * 2048          # 512 KiB
V2 = bytes(reversed(range(256))) * 2048  # same size, other bytes
HALF = len(V1) // 2


@pytest.fixture
def server() -> Iterator[CheckpointServer]:
    s = CheckpointServer()
    yield s
    s.close()


def policy(**kw: object) -> FetchPolicy:
    options = {"retries": 2, "backoff_base_s": 0.01, "backoff_max_s": 0.01, "connect_timeout_s": 2.0,
               "read_timeout_s": 2.0, **kw}
    return FetchPolicy(**options)  # type: ignore[arg-type]


def fetch(server: CheckpointServer, cache: Path, path: str = "/m.pt", **kw: object):  # noqa: ANN201
    return fetch_entry(ZooEntry(model_id="lab/m", sources=[server.url + path]), cache, policy=policy(**kw))


def files_under(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*")) if cache.exists() else []


def ranges(server: CheckpointServer) -> list[tuple[str | None, str | None]]:
    return [(s["Range"], s["If-Range"]) for s in server.seen]


# --- resume only with a validator ---------------------------------------------------------------
@pytest.mark.parametrize("validator", ["etag", "last-modified"])
def test_a_cut_transfer_resumes_with_if_range(server: CheckpointServer, tmp_path: Path, validator: str) -> None:
    server.add("/m.pt", V1, "flaky", validator=validator)
    fetched = fetch(server, tmp_path)
    sent = server.files["/m.pt"].validators(V1)
    assert ranges(server) == [(None, None), (f"bytes={HALF}-", next(iter(sent.values())))]
    assert Path(fetched.paths[0]).read_bytes() == V1 and fetched.attempts == 2
    key = "etag" if validator == "etag" else "last_modified"
    assert fetched.validators == [{"uri": server.url + "/m.pt", "url": server.url + "/m.pt", "size": len(V1),
                                   key: next(iter(sent.values()))}]
    assert files_under(tmp_path) == ["lab--m", "lab--m/0-m.pt", "lab--m/0-m.pt.json"]  # no .part left


@pytest.mark.parametrize("validator", ["etag", "last-modified"])
def test_a_file_swapped_between_the_cut_and_the_resume_gives_exactly_the_new_file(
        server: CheckpointServer, tmp_path: Path, validator: str) -> None:
    server.add("/m.pt", V1, "swap", then=V2, validator=validator)
    fetched = fetch(server, tmp_path)
    assert Path(fetched.paths[0]).read_bytes() == V2  # never V1[:HALF] + V2[HALF:]
    assert [r for r, _ in ranges(server)] == [None, f"bytes={HALF}-"]  # If-Range failed: the server sent 200
    assert fetched.validators[0]["size"] == len(V2)


def test_a_server_ignoring_if_range_is_caught_by_its_new_etag(server: CheckpointServer, tmp_path: Path) -> None:
    server.add("/m.pt", V1, "swap", then=V2, honour_if_range=False)
    fetched = fetch(server, tmp_path, retries=3)
    assert Path(fetched.paths[0]).read_bytes() == V2
    assert [r for r, _ in ranges(server)] == [None, f"bytes={HALF}-", None]  # 206 with another ETag: restart


@pytest.mark.parametrize("validator", ["none", "weak"])
def test_without_a_strong_validator_a_cut_transfer_restarts_from_zero(server: CheckpointServer, tmp_path: Path,
                                                                      validator: str) -> None:
    server.add("/m.pt", V1, "flaky", validator=validator)
    fetched = fetch(server, tmp_path)
    assert ranges(server) == [(None, None), (None, None)]
    assert Path(fetched.paths[0]).read_bytes() == V1


def test_a_200_answer_to_a_range_restarts_from_zero(server: CheckpointServer, tmp_path: Path) -> None:
    server.add("/m.pt", V1, "norange")
    fetched = fetch(server, tmp_path)
    assert [r for r, _ in ranges(server)] == [None, f"bytes={HALF}-"]
    assert Path(fetched.paths[0]).read_bytes() == V1


def test_more_bytes_than_announced_discard_the_partial(server: CheckpointServer, tmp_path: Path) -> None:
    server.add("/m.pt", V1, "bad206")  # the resumed 206 carries the whole file again
    with pytest.raises(SizeMismatchError) as caught:
        fetch(server, tmp_path)
    assert caught.value.transient and caught.value.attempts == 2
    assert "announced" in str(caught.value) and files_under(tmp_path) == []
    server.add("/m.pt", V1, "bad206")
    fetched = fetch(server, tmp_path, retries=3)  # a third attempt starts from zero and gets it whole
    assert Path(fetched.paths[0]).read_bytes() == V1
    assert [r for r, _ in ranges(server)][-3:] == [None, f"bytes={HALF}-", None]


class Interrupt:
    """An on_bytes callback that presses Ctrl-C once ``after`` bytes have arrived."""

    def __init__(self, after: int) -> None:
        self.after, self.seen = after, 0

    def __call__(self, n: int) -> None:
        self.seen += n
        if self.seen >= self.after:
            raise KeyboardInterrupt


def test_ctrl_c_keeps_a_resumable_part_and_the_resume_never_splices(server: CheckpointServer, tmp_path: Path) -> None:
    server.add("/m.pt", V1, "trickle", chunk=64 * 1024)
    entry = ZooEntry(model_id="lab/m", sources=[server.url + "/m.pt"])
    with pytest.raises(KeyboardInterrupt):
        fetch_entry(entry, tmp_path, policy=policy(), on_bytes=Interrupt(HALF))
    part, etag = tmp_path / "lab--m" / "0-m.pt.part", server.files["/m.pt"].validators(V1)["ETag"]
    kept = part.stat().st_size
    assert HALF <= kept < len(V1) and read_record(part)["etag"] == etag
    server.add("/m.pt", V2)  # the file changes while the build is down
    fetched = fetch_entry(entry, tmp_path, policy=policy())
    assert Path(fetched.paths[0]).read_bytes() == V2
    assert ranges(server)[-1] == (f"bytes={kept}-", etag)  # asked to resume; the server sent the new file whole
    assert files_under(tmp_path) == ["lab--m", "lab--m/0-m.pt", "lab--m/0-m.pt.json"]


def test_ctrl_c_without_a_validator_leaves_nothing(server: CheckpointServer, tmp_path: Path) -> None:
    server.add("/m.pt", V1, "trickle", chunk=64 * 1024, validator="none")
    entry = ZooEntry(model_id="lab/m", sources=[server.url + "/m.pt"])
    with pytest.raises(KeyboardInterrupt):
        fetch_entry(entry, tmp_path, policy=policy(), on_bytes=Interrupt(HALF))
    assert files_under(tmp_path) == []  # no .part, no empty model folder


# --- caps and deadlines ---------------------------------------------------------------------------
def test_an_endless_response_without_content_length_stops_at_the_cap(server: CheckpointServer, tmp_path: Path) -> None:
    server.add("/m.pt", b"\0" * 65536, "endless")
    started = time.monotonic()
    with pytest.raises(CheckpointTooLargeError) as caught:
        fetch(server, tmp_path, max_bytes=1_000_000)
    assert time.monotonic() - started < 5 and not caught.value.transient and caught.value.attempts == 1
    assert str(caught.value) == (f"{server.url}/m.pt: more than the 1.0 MB cap (--max-checkpoint-gb) received; "
                                 "download stopped")
    assert files_under(tmp_path) == [] and len(server.seen) == 1  # deterministic: not retried


def test_a_too_large_content_length_is_refused_before_reading(server: CheckpointServer, tmp_path: Path) -> None:
    server.add("/m.pt", V1, "huge", announce=10**12)
    with pytest.raises(CheckpointTooLargeError) as caught:
        fetch(server, tmp_path, max_bytes=10**9)
    assert str(caught.value) == (f"{server.url}/m.pt: the server announces 1000.0 GB, more than the 1.0 GB cap "
                                 "(--max-checkpoint-gb)")
    assert files_under(tmp_path) == [] and len(server.seen) == 1


def test_a_trickling_server_fails_as_stalled(server: CheckpointServer, tmp_path: Path) -> None:
    server.add("/m.pt", V1, "trickle", chunk=512, delay_s=0.05, validator="none")  # ~10 KB/s
    started = time.monotonic()
    with pytest.raises(StalledDownloadError) as caught:
        fetch(server, tmp_path, min_rate_bps=100_000, rate_window_s=0.4)
    assert time.monotonic() - started < 5 and caught.value.transient and caught.value.attempts == 2
    message = str(caught.value)
    assert message.startswith(f"{server.url}/m.pt: stalled: ") and message.endswith(
        " in the last 0.4 s (minimum 100.0 KB/s, --min-download-rate)")
    assert "\n" not in message and files_under(tmp_path) == []


@pytest.mark.parametrize("validator", ["none", "etag"])
def test_the_deadline_ends_a_download_that_keeps_its_rate(server: CheckpointServer, tmp_path: Path,
                                                          validator: str) -> None:
    server.add("/m.pt", V1, "trickle", chunk=4096, delay_s=0.02, validator=validator)  # ~200 KB/s: 2.6 s
    started = time.monotonic()
    with pytest.raises(DownloadDeadlineError) as caught:
        fetch(server, tmp_path, min_rate_bps=1000, rate_window_s=0.2, deadline_s=0.5)
    assert time.monotonic() - started < 1.5 and caught.value.transient and caught.value.attempts == 1
    assert str(caught.value) == f"{server.url}/m.pt: not done after 0.5 s (download deadline, --download-deadline)"
    if validator == "none":
        assert files_under(tmp_path) == []
        return
    # with a validator the partial is kept for the next run, which resumes it
    assert files_under(tmp_path) == ["lab--m", "lab--m/0-m.pt.part", "lab--m/0-m.pt.part.json"]
    kept = (tmp_path / "lab--m" / "0-m.pt.part").stat().st_size
    server.add("/m.pt", V1)
    fetched = fetch(server, tmp_path)
    assert Path(fetched.paths[0]).read_bytes() == V1 and server.seen[-1]["Range"] == f"bytes={kept}-"


def test_a_silent_server_is_a_transient_download_error(server: CheckpointServer, tmp_path: Path) -> None:
    server.add("/m.pt", V1, "slow", delay_s=1.0)
    with pytest.raises(DownloadError) as caught:
        fetch(server, tmp_path, read_timeout_s=0.2)
    assert type(caught.value) is DownloadError and caught.value.transient and caught.value.attempts == 2
    assert files_under(tmp_path) == []


def test_the_guard_measures_the_rate_over_a_sliding_window_and_the_deadline() -> None:
    now = [0.0]
    guard = TransferGuard("u", FetchPolicy(min_rate_bps=100, rate_window_s=10, deadline_s=30, max_bytes=None),
                          clock=lambda: now[0])
    guard.start_attempt(0, None)
    now[0] = 1
    guard.add(2000)  # a fast start, then a trickle: fine while the window still holds the start
    for t in range(2, 11):
        now[0] = t
        guard.add(1)
    now[0] = 11
    with pytest.raises(StalledDownloadError, match=r"^u: stalled: 10 B in the last 10 s \(minimum 100 B/s"):
        guard.add(1)  # the window (1, 11] holds 10 bytes
    guard.start_attempt(0, None)  # a new attempt starts a new window, but not a new deadline
    now[0] = 30
    with pytest.raises(DownloadDeadlineError):
        guard.add(1)


def test_policy_and_cli_defaults_come_from_build_config(capsys: pytest.CaptureFixture) -> None:
    from pipeline.cli.main import build_parser

    config = BuildConfig(out="x")
    assert config.policy() == FetchPolicy(read_timeout_s=config.timeout_s)  # the same limits either way
    args = build_parser().parse_args(["build", "zoo.yaml", "--out", "x"])
    assert (args.max_checkpoint_gb, args.min_download_rate, args.rate_window, args.download_deadline) == (
        config.max_checkpoint_gb, config.min_download_rate_kbs, config.rate_window_s, config.download_deadline_s)
    unlimited = BuildConfig(out="x", max_checkpoint_gb=0, download_deadline_s=0, min_download_rate_kbs=0).policy()
    assert (unlimited.max_bytes, unlimited.deadline_s, unlimited.min_rate_bps) == (None, None, 0)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["build", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--max-checkpoint-gb", "--min-download-rate", "--rate-window", "--download-deadline"):
        assert flag in help_text
