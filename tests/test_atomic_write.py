"""The one atomic-write helper: a reader sees the old file or the whole new one, never a temp file's leftovers."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipeline.atomic_write import atomic_target, is_temp_of, temp_sibling, write_bytes_atomic


def test_temp_sibling_is_hidden_unique_and_recognised() -> None:
    a, b = temp_sibling("/d/part-x.parquet"), temp_sibling("/d/part-x.parquet")
    assert a != b and a.startswith("/d/.part-x.parquet.") and a.endswith(".tmp")
    assert is_temp_of(a.rsplit("/", 1)[1], "part-x.parquet")
    assert not is_temp_of(a.rsplit("/", 1)[1], "part-y.parquet")


def test_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    write_bytes_atomic(str(target), b"one")
    write_bytes_atomic(str(target), b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.bin"]


def test_error_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_target(str(target)) as temp:
        Path(temp).write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_object_store_writes_target_directly() -> None:
    fs = pafs.SubTreeFileSystem("/", pafs.LocalFileSystem())  # not LocalFileSystem: treated as an object store
    with atomic_target("/tmp/x", fs) as temp:
        assert temp == "/tmp/x"
