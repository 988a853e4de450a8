"""What the Hugging Face Hub and its dataset viewer handle, and checks of a staged tree against it.

Other modules read these constants as ``limits.NAME`` at call time, so a test (or
a caller) can lower them for one run.
"""

from __future__ import annotations

import os

import pyarrow.parquet as pq

from pipeline.errors import HubLimitError

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


def fits_hub(path: str, check_size: bool = True) -> bool:
    """True when a Parquet file's row groups are within the viewer's limit (and, with ``check_size``, its size)."""
    if check_size and os.path.getsize(path) > MAX_FILE_BYTES:
        return False
    meta = pq.read_metadata(path)
    return all(meta.row_group(i).total_byte_size <= MAX_ROW_GROUP_BYTES for i in range(meta.num_row_groups))


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
