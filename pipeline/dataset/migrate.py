"""Move models written in the old Hive folders (``dataset=<d>/model=<slug>/``) to the flat layout, no re-extraction.

Per model, its layers and filters files are copied under a fresh (flat) write id,
then its row is rewritten naming that id: the same commit as an extraction, so a
reader sees the old version or the moved one, never a mix. The row is rewritten only
if no writer committed the model since it was read. The old files stay until
``vacuum`` removes them (after its retention), as for any replaced version.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.dataset.layout import hive_layout, new_write_id
from pipeline.dataset.schema import arrow_schema
from pipeline.dataset.store import DatasetStore, conform


def old_layout_models(store: DatasetStore) -> list[str]:
    """The committed models whose files are in the old Hive folders."""
    return sorted(m.model_id for m in store.stored_models().values() if hive_layout(m.write_id))


def migrate_model(store: DatasetStore, model_id: str) -> bool:
    """Copy one old-layout model's files to the flat layout and commit; False when it changed meanwhile."""
    model = store.stored_model(model_id)
    if model is None or not hive_layout(model.write_id):
        return False
    write_id = new_write_id()
    sources = [store.layer_file(model), *store.filter_files(model)]
    targets = [store.layer_file_for(model.dataset, model.slug, write_id),
               *(store.filter_file_for(model.dataset, model.slug, write_id, k) for k in range(model.n_filter_files))]
    for source, target in zip(sources, targets, strict=True):
        store.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        store.fs.copy_file(source, target)
    row_path = store.model_row_path(model.slug)
    row = conform(store.read_parquet(row_path), arrow_schema("models"))
    current = store.stored_model(model_id)
    if current is None or current.write_id != model.write_id:  # committed meanwhile: its row stays
        for target in targets:
            store.delete_file(target)
        return False
    index = row.schema.get_field_index("write_id")
    row = row.set_column(index, row.schema.field(index), pa.array([write_id], pa.string()))
    store.write_table(row, row_path)
    return True
