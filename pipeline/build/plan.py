"""Which zoo entries a build processes: load and filter the zoo, skip models already complete."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.dataset.layout import StoredModel
from pipeline.dataset.store import DatasetStore
from pipeline.zoo.zoo_file import ZooEntry, load_zoo_file, select


def load_entries(zoo: str | Sequence[ZooEntry], model_info: str | None = None, datasets: Sequence[str] | None = None,
                 threat_models: Sequence[str] | None = None, models: Sequence[str] | None = None,
                 limit: int | None = None) -> list[ZooEntry]:
    """Entries of a zoo file, of the built-in ``robustbench`` catalog, or given directly; then filtered."""
    if isinstance(zoo, str):
        if zoo == "robustbench":
            from pipeline.zoo.robustbench import robustbench_catalog

            entries = robustbench_catalog(model_info=model_info)
        else:
            entries = load_zoo_file(zoo)
    else:
        entries = list(zoo)
    return select(entries, datasets, threat_models, models, limit)


def can_skip(entry: ZooEntry, complete: dict[str, StoredModel]) -> bool:
    """Skip a model already complete under the current schema, with the same expected digest (or,
    when the zoo gives none, the same sources); a changed checkpoint is still caught after download."""
    model = complete.get(entry.model_id)
    if model is None:
        return False
    if entry.sha256:
        return model.checkpoint_sha256 == entry.sha256.lower()
    return model.source_uri == " ".join(entry.sources)


def plan(entries: Sequence[ZooEntry], store: DatasetStore, force: bool) -> tuple[list[ZooEntry], list[ZooEntry]]:
    """(entries to process, entries skipped as complete)."""
    if force:
        return list(entries), []
    complete = store.complete_models()
    todo = [e for e in entries if not can_skip(e, complete)]
    skipped = [e for e in entries if can_skip(e, complete)]
    return todo, skipped
