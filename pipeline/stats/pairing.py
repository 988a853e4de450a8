"""Robust/normal pairing: automatic by architecture, training dataset and seed, or from a table.

The one pairing rule of filterlens (``filterlens stats`` and ``filterlens demo`` both call
``auto_pairs``): a robust model is paired with the normal models of the same architecture
(compared case- and whitespace-insensitively) and training dataset; when it records a
training seed (``metadata_json``'s ``"seed"``) and some of those normal models record the
same seed, only with those (so a zoo trained with several seeds pairs seed by seed, as the
demo's does: one normal partner per robust model). A pairs table
(columns Robust, Normal[, Arch, Dataset], like the paper's; ``paper`` is the paper's own,
shipped with the package) replaces that. Models without a partner, and table rows naming
models that are not selected, are listed with the reason, never dropped silently.
"""

from __future__ import annotations

import io
import json
import re

import pandas as pd

from pipeline.errors import ConfigError
from pipeline.zoo.leaderboard import PAPER_PAIRS, data_file

PAPER = "paper"
"""``--pairs paper``: the paper's 71 pairings (Gavrikov & Keuper 2022, CC BY-SA 4.0), shipped as package data."""

PAIR_COLUMNS = ["robust_model_id", "normal_model_id", "architecture", "dataset", "source"]
UNPAIRED_COLUMNS = ["model_id", "robust", "architecture", "dataset", "reason"]


def normalise_arch(name: object) -> str | None:
    """Architecture names compare case- and whitespace-insensitively; unknown is None."""
    if name is None or pd.isna(name):
        return None
    text = re.sub(r"\s+", " ", str(name)).strip().lower()
    return text or None


def model_seed(metadata_json: object) -> object:
    """The training seed a model's ``metadata_json`` records (``"seed"``), or None."""
    if not isinstance(metadata_json, str) or not metadata_json:
        return None
    try:
        metadata = json.loads(metadata_json)
    except ValueError:
        return None
    return metadata.get("seed") if isinstance(metadata, dict) else None


def auto_pairs(models: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pair every robust model with the normal models of the same architecture and training dataset, and of
    the same seed when both record one (the module's rule); the others are listed with the reason."""
    pairs, unpaired = [], []
    arch = [normalise_arch(a) for a in models.architecture]
    seeds = [model_seed(m) for m in models.metadata_json] if "metadata_json" in models else [None] * len(models)
    normal_by_key: dict[tuple[str, str], list[tuple[str, object]]] = {}
    for row, key, seed in zip(models.itertuples(), arch, seeds, strict=True):
        if key is not None and not row.robust:
            normal_by_key.setdefault((row.dataset, key), []).append((row.model_id, seed))
    used_normal = set()
    for row, key, seed in zip(models.itertuples(), arch, seeds, strict=True):
        if not row.robust:
            continue
        if key is None:
            unpaired.append((row.model_id, True, row.architecture, row.dataset, "architecture unknown"))
            continue
        candidates = normal_by_key.get((row.dataset, key), [])
        same_seed = [m for m, s in candidates if seed is not None and s == seed]
        partners = same_seed or [m for m, _ in candidates]
        if not partners:
            unpaired.append((row.model_id, True, row.architecture, row.dataset,
                             f"no normal {row.architecture} model on {row.dataset} in the selection"))
        for normal in partners:
            pairs.append((row.model_id, normal, row.architecture, row.dataset, "auto"))
            used_normal.add(normal)
    robust_keys = {(d, k) for d, k, r in zip(models.dataset, arch, models.robust, strict=True) if r and k}
    for row, key in zip(models.itertuples(), arch, strict=True):
        if not row.robust and row.model_id not in used_normal:
            if key is None:
                reason = "architecture unknown"
            elif (row.dataset, key) in robust_keys:
                reason = "the robust models of its architecture pair with normal models of their own seed"
            else:
                reason = f"no robust {row.architecture} model on {row.dataset} in the selection"
            unpaired.append((row.model_id, False, row.architecture, row.dataset, reason))
    return pd.DataFrame(pairs, columns=PAIR_COLUMNS), pd.DataFrame(unpaired, columns=UNPAIRED_COLUMNS)


def read_pairs_table(path: str) -> pd.DataFrame:
    """A pairs CSV with columns Robust, Normal (Arch, Dataset optional; an unnamed index column is ignored);
    ``paper`` reads the paper's pairings shipped with the package (``./paper`` for a file of that name)."""
    try:
        table = pd.read_csv(io.StringIO(data_file(PAPER_PAIRS).read_text()) if path == PAPER else path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--pairs {path}: cannot read it as CSV ({exc})") from None
    table = table.loc[:, [c for c in table.columns if not str(c).startswith("Unnamed")]]
    missing = {"Robust", "Normal"} - set(table.columns)
    if missing:
        raise ConfigError(f"--pairs {path}: needs columns Robust and Normal (and optionally Arch, Dataset); "
                          f"missing {', '.join(sorted(missing))}")
    return table


def paper_name(model_id: str) -> str | None:
    """The paper's name of a RobustBench model (``robustbench/cifar10/Linf/X`` -> ``robustbench_X_cifar10_linf_13``)."""
    parts = model_id.split("/")
    if len(parts) == 4 and parts[0] == "robustbench":
        return f"robustbench_{parts[3]}_{parts[1]}_{parts[2].lower()}_13"
    return None


def table_pairs(models: pd.DataFrame, table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pairs from a user table; names match model_id, the model slug or (RobustBench models) the paper's
    names as in its pairings table. Rows naming models not in the selection are reported, not dropped."""
    by_name = {**{paper_name(m): m for m in models.model_id if paper_name(m)},
               **dict(zip(models.model, models.model_id, strict=True)),
               **dict(zip(models.model_id, models.model_id, strict=True))}
    info = models.set_index("model_id")
    pairs, unpaired = [], []
    for row in table.itertuples(index=False):
        robust, normal = by_name.get(str(row.Robust)), by_name.get(str(row.Normal))
        arch = getattr(row, "Arch", None)
        dataset = getattr(row, "Dataset", None)
        if robust is None or normal is None:
            missing = [str(n) for n, m in ((row.Robust, robust), (row.Normal, normal)) if m is None]
            unpaired.append((" / ".join(missing), None, arch, dataset,
                             "pairs table names a model that is not in the selection"))
            continue
        if not info.loc[robust, "robust"] or info.loc[normal, "robust"]:
            unpaired.append((f"{robust} / {normal}", None, arch, dataset,
                             "pairs table row is not (robust, normal) by the models table's robust column"))
            continue
        pairs.append((robust, normal, arch if isinstance(arch, str) else info.loc[robust, "architecture"],
                      info.loc[robust, "dataset"], "table"))
    pairs = pd.DataFrame(pairs, columns=PAIR_COLUMNS).drop_duplicates(["robust_model_id", "normal_model_id"])
    paired = set(pairs.robust_model_id) | set(pairs.normal_model_id)
    for row in models.itertuples():
        if row.model_id not in paired:
            unpaired.append((row.model_id, bool(row.robust), row.architecture, row.dataset,
                             "not in the pairs table"))
    return pairs, pd.DataFrame(unpaired, columns=UNPAIRED_COLUMNS)


def make_pairs(models: pd.DataFrame, pairs_csv: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pairs of a run: from the ``--pairs`` table when given, else by the module's rule (``auto_pairs``)."""
    return table_pairs(models, read_pairs_table(pairs_csv)) if pairs_csv else auto_pairs(models)
