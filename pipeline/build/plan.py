"""Which zoo entries a build processes: load and filter the zoo, skip models already complete and unchanged."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from pipeline.dataset.layout import StoredModel, slugify
from pipeline.dataset.store import DatasetStore
from pipeline.fetch.download import probe_recorded
from pipeline.fetch.validators import changed
from pipeline.zoo.zoo_file import ZooEntry, load_zoo_file, select

log = logging.getLogger(__name__)

PROBES = 8
"""Sources asked at once whether their file changed."""


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


def can_skip(entry: ZooEntry, complete: dict[str, StoredModel], changed_at_source: bool = False) -> bool:
    """Skip a model already complete under the current schema, with the same expected digest (or, when
    the zoo gives none, the same sources and no validator saying the file changed since it was extracted)."""
    model = complete.get(entry.model_id)
    if model is None:
        return False
    if entry.sha256:
        return model.checkpoint_sha256 == entry.sha256.lower()
    return model.source_uri == " ".join(entry.sources) and not changed_at_source


def recorded_validators(store: DatasetStore, model_id: str) -> list[dict] | None:
    """The ``source_validators`` a committed model's row recorded (None: none, or no such row)."""
    try:
        table = store.read_parquet(store.model_row_path(slugify(model_id)), columns=["model_id", "metadata_json"])
        rows = [r for r in table.to_pylist() if r["model_id"] == model_id]
        records = json.loads(rows[0]["metadata_json"] or "{}").get("source_validators") if rows else None
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        log.info("%s: no readable source validators (%s)", model_id, type(exc).__name__)
        return None
    return records if isinstance(records, list) and records else None


def changed_at_source(entry: ZooEntry, store: DatasetStore, mirror: str | None = None) -> bool:
    """True when a source now announces another ETag/size/... than when the model was extracted.

    Unknown is unchanged: no recorded validators, an unreachable source, a source
    now fetched from elsewhere (another mirror).
    """
    recorded = recorded_validators(store, entry.model_id)
    if not recorded:
        return False
    if changed(recorded, probe_recorded(recorded, mirror)):
        log.info("%s: the checkpoint changed at its source since it was extracted; fetching it again",
                 entry.model_id)
        return True
    return False


def plan(entries: Sequence[ZooEntry], store: DatasetStore, force: bool,
         mirror: str | None = None, probe_key: str | None = None) -> tuple[list[ZooEntry], list[ZooEntry]]:
    """(entries to process, entries skipped as complete); sources without a zoo digest are asked if they changed.

    With ``probe_key`` (a probe run), a complete model with an architecture whose probe rows were computed
    under other settings (or never) is processed too: only its probe runs.
    """
    if force:
        return list(entries), []
    complete = store.complete_models()
    if probe_key is not None:
        complete = {k: m for k, m in complete.items() if m.probe_config == probe_key
                    or not any(e.model_id == k and e.arch for e in entries)}
    candidates = [e for e in entries if can_skip(e, complete)]
    ask = [e for e in candidates if not e.sha256]
    moved: set[str] = set()
    if ask:
        with ThreadPoolExecutor(max_workers=PROBES) as pool:
            answers = pool.map(lambda e: changed_at_source(e, store, mirror), ask)
            moved = {e.model_id for e, answer in zip(ask, answers, strict=True) if answer}
    kept = {e.model_id for e in candidates if can_skip(e, complete, e.model_id in moved)}
    skipped = [e for e in entries if e.model_id in kept]
    todo = [e for e in entries if e.model_id not in kept]
    return todo, skipped
