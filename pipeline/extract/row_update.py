"""When a model is already extracted from the same bytes, new metadata updates its row instead of being lost.

A rerun of ``extract``/``build`` with a corrected architecture name, accuracy,
threat model or paper used to skip silently (same sha256) and keep the old values.
Fields that only the models row holds are rewritten in place when the request gives
them (a value that is not None): the row is written again with the same
``write_id`` (the same files; one atomic write, like a commit). A new training
dataset changes the layers/filters rows and their partition, so it means a
re-extraction. The row is rewritten only if no writer committed the model since it
was read (a concurrent ``extract --force`` keeps its version; the window left is the
single write). ``robust`` and ``threat_model`` always have a value in a request
(a default when nobody said), so they are not taken as changes: use ``--force``.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.dataset.layout import slugify
from pipeline.dataset.store import DatasetStore
from pipeline.zoo.spec import ModelRequest

ROW_ONLY_FIELDS = ("architecture", "clean_acc", "robust_acc", "eps", "extra_data", "paper", "venue")
"""Models columns that no layers or filters row repeats: safe to change without re-extracting."""


def row_changes(request: ModelRequest, row: dict) -> dict | None:
    """The row fields ``request`` changes (given values only), or None when the model must be re-extracted."""
    if request.dataset not in (row["dataset"], "unknown"):
        return None
    return {name: getattr(request, name) for name in ROW_ONLY_FIELDS
            if getattr(request, name) is not None and getattr(request, name) != row.get(name)}


def update_row(store: DatasetStore, model_id: str, request: ModelRequest) -> list[str] | None:
    """Apply ``row_changes`` to the committed row of ``model_id``: the names changed, or None to re-extract."""
    path = store.model_row_path(slugify(model_id))
    table = store.read_parquet(path)
    row = table.to_pylist()[0]
    changes = row_changes(request, row)
    if changes is None or not changes:
        return None if changes is None else []
    for name, value in changes.items():
        index = table.schema.get_field_index(name)
        field = table.schema.field(index)
        table = table.set_column(index, field, pa.array([value], field.type))
    current = store.stored_model(model_id)
    if current is None or current.write_id != row["write_id"]:  # a writer committed meanwhile: its row stays
        return []
    store.write_table(table, path)
    return sorted(changes)
