"""Commit a committed model's probe rows on their own (``filterlens probe``, ``build --probe`` on a complete model).

The probes file is written under a fresh id, then the model's row is rewritten
naming it (``probe_write_id``): that row write is the commit, as for extraction.
The row is rewritten only if no writer committed the model since it was read (a
concurrent re-extraction keeps its version; the probe file is then an orphan that
``vacuum`` removes). A probe rerun replaces only that model's probe rows.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.dataset.layout import new_write_id, slugify
from pipeline.dataset.schema import arrow_schema
from pipeline.dataset.store import DatasetStore, conform
from pipeline.errors import StoreError


def commit_probes(store: DatasetStore, model_id: str, expected_write_id: str, probes: pa.Table,
                  example: bytes | None = None) -> str | None:
    """Write ``probes`` (and the probe's example) and point the model's row at them; the probe_write_id, or None
    when the model changed."""
    current = store.stored_model(model_id)
    if current is None or current.write_id != expected_write_id:
        return None
    probe_write_id = new_write_id()
    path = store.probe_file_for(current.dataset, current.slug, probe_write_id)
    if example:
        store.write_bytes(example, store.probe_example_for(current.slug, probe_write_id))
    store.write_table(probes, path)
    row_path = store.model_row_path(slugify(model_id))
    row = conform(store.read_parquet(row_path), arrow_schema("models"))
    if row.column("write_id")[0].as_py() != expected_write_id:  # committed meanwhile: its row stays
        store.delete_file(path)
        return None
    configs = set(probes.column("probe_config").to_pylist())
    if len(configs) != 1:
        raise StoreError(f"{model_id}: probe rows of {len(configs)} different settings cannot be committed together")
    for name, value in (("probe_write_id", probe_write_id), ("probe_config", configs.pop())):
        index = row.schema.get_field_index(name)
        row = row.set_column(index, row.schema.field(index), pa.array([value], pa.string()))
    store.write_table(row, row_path)
    return probe_write_id
