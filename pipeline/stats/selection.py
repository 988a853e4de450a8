"""Choosing the models of a run: ``--where``, ``--datasets``, ``--threat-models`` and ``--include-corruptions``.

The robust pool is the adversarially trained models (Linf, L2); corruption-robust models
(threat_model corruptions) are in neither pool unless brought in, then in the robust one.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from pipeline.dataset.query import FilterDataset
from pipeline.errors import ConfigError, EmptySelectionError, QueryError
from pipeline.stats.options import StatsOptions
from pipeline.stats.queries import load_sql, run_sql


def select_models(ds: FilterDataset, options: StatsOptions) -> pd.DataFrame:
    """Create the temp table selected_models (and the view selected_layers); return the models."""
    where = (options.where or "").strip() or "true"
    try:
        ds.check_predicate(where)  # user text: it must run in the read-only sandbox first
    except QueryError as exc:
        raise ConfigError(f"--where {where!r} is not a read-only predicate on the models table: {exc}") from None
    text = load_sql("select_models").replace("{where}", where)
    try:
        statements = ds.con.extract_statements(text)
    except duckdb.Error as exc:
        raise ConfigError(f"--where {where!r} does not parse: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1:
        raise ConfigError(f"--where must be one predicate on the models table, not {where!r}")
    try:
        ds.con.execute(text, {"datasets": list(options.datasets), "threat_models": options.robust_threat_models(),
                              "include_corruptions": options.corruptions_included})
    except duckdb.Error as exc:
        raise ConfigError(f"--where {where!r} is not a valid predicate on the models table: "
                          f"{str(exc).splitlines()[0]}") from None
    run_sql(ds, "selected_layers")
    models = ds.con.execute("SELECT * FROM selected_models ORDER BY dataset, robust DESC, model_id").df()
    if models.empty:
        n_all = ds.con.execute("SELECT count(*) FROM models").fetchall()[0][0]
        raise EmptySelectionError(
            f"the selection ({describe_selection(options)}) matches none of the {n_all} models in {ds.root}; "
            "check --where/--datasets/--threat-models/--include-corruptions against `filterlens sql DATASET 'SELECT dataset, "
            "threat_model, robust, count(*) FROM models GROUP BY ALL'`")
    return models


def describe_selection(options: StatsOptions) -> str:
    """The selection in words, for the report and error messages ("all models" when nothing narrows it)."""
    parts = []
    if options.where:
        parts.append(f"where {options.where}")
    if options.datasets:
        parts.append("datasets " + ", ".join(options.datasets))
    if options.threat_models:
        parts.append("robust threat models " + ", ".join(options.robust_threat_models()))
    text = "; ".join(parts) or "all models"
    if options.corruptions_included:
        return text + "; corruption-robust models (threat_model corruptions) in the robust pool"
    return text + "; corruption-robust models (threat_model corruptions) left out"


def pooled_threat_models(models: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Models per threat model in each pool, sorted: {"robust": {"L2": 2, "Linf": 7}, "normal": {"none": 6}}."""
    return {side: {str(k): int(v) for k, v in sorted(models[mask].threat_model.value_counts().items())}
            for side, mask in (("robust", models.robust.astype(bool)), ("normal", ~models.robust.astype(bool)))}


def describe_pools(pools: dict[str, dict[str, int]]) -> str:
    """``robust: L2 2, Linf 7; normal: none 6`` (threat models sorted; ``-`` for an empty pool)."""
    return "; ".join(f"{side}: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "-")
                     for side, counts in pools.items())


def left_out_note(ds: FilterDataset, options: StatsOptions) -> str | None:
    """Says how many corruption-robust models of the selected datasets the default left out (None: none)."""
    if options.corruptions_included:
        return None
    n = ds.con.execute("SELECT count(*) FROM models WHERE threat_model = 'corruptions' AND (len($datasets) = 0 "
                       "OR list_contains($datasets, dataset))", {"datasets": list(options.datasets)}).fetchall()[0][0]
    if not n:
        return None
    return (f"{n} corruption-robust model(s) (threat_model corruptions) left out of both pools; "
            "--include-corruptions or --threat-models corruptions brings them into the robust pool.")


def non_robust_member_note(ds: FilterDataset) -> str | None:
    """Names the members of robust-pool ensembles left out as not adversarially trained (None: none)."""
    rows = run_sql(ds, "non_robust_members")
    if rows is None or rows.empty:
        return None
    listed = "; ".join(f"{r.model_id} member {r.member} ({r.n_layers} layers)" for r in rows.itertuples())
    return (f"left out of every analysis as not adversarially trained (layers.member_robust false) although their "
            f"models are in the robust pool: {listed}.")
