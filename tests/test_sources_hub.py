"""Checkpoint sources on the Hugging Face Hub (hf://org/repo[@revision]/file), against the fake Hub."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fakehub import FakeHub
from zoo_fixtures import tiny_net

from pipeline.errors import SourceNotFoundError
from pipeline.fetch.download import fetch_entry
from pipeline.zoo.zoo_file import ZooEntry

TOKEN = "hf_writer"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    from huggingface_hub import constants

    with FakeHub(users={TOKEN: "alice"}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        yield fake


def checkpoint(seed: int) -> bytes:
    torch.manual_seed(seed)
    buffer = io.BytesIO()
    torch.save(tiny_net().state_dict(), buffer)
    return buffer.getvalue()


def test_hf_sources_download_at_the_pinned_revision(hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("alice/ckpts", repo_type="model")
    api.upload_file(path_or_fileobj=checkpoint(1), path_in_repo="weights/m.pt", repo_id="alice/ckpts")
    api.create_branch("alice/ckpts", branch="v1")
    api.upload_file(path_or_fileobj=checkpoint(2), path_in_repo="weights/m.pt", repo_id="alice/ckpts")
    for uri, seed in (("hf://alice/ckpts/weights/m.pt", 2), ("hf://alice/ckpts@v1/weights/m.pt", 1)):
        digest = hashlib.sha256(checkpoint(seed)).hexdigest()
        fetched = fetch_entry(ZooEntry(model_id=f"hub/{seed}", sources=[uri], sha256=digest), tmp_path / "cache")
        assert fetched.sha256 == digest and fetched.owned == [False]  # the Hub's cache owns the file
        assert Path(fetched.paths[0]).read_bytes() == checkpoint(seed)
        assert str(tmp_path / "cache" / "hf") in fetched.paths[0]
    with pytest.raises(SourceNotFoundError):
        fetch_entry(ZooEntry(model_id="hub/missing", sources=["hf://alice/ckpts/nope.pt"]), tmp_path / "cache")
