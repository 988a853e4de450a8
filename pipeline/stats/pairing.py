"""Robust/normal pairing: automatic by architecture and training dataset, or from a table.

Every robust model is paired with every normal model of the same architecture
(compared case- and whitespace-insensitively) and training dataset; a pairs table
(columns Robust, Normal[, Arch, Dataset], like the paper's; ``paper`` is the paper's own,
shipped with the package) replaces that. Models without a partner, and table rows naming
models that are not selected, are listed with the reason, never dropped silently.
"""

from __future__ import annotations

import io
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


def auto_pairs(models: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pair every robust model with every normal model of the same architecture and training dataset."""
    pairs, unpaired = [], []
    arch = [normalise_arch(a) for a in models.architecture]
    robust_mask = models.robust.to_numpy(bool)
    normal_by_key: dict[tuple[str, str], list[str]] = {}
    for model_id, dataset, key, robust in zip(models.model_id, models.dataset, arch, robust_mask, strict=True):
        if key is not None and not robust:
            normal_by_key.setdefault((dataset, key), []).append(model_id)
    used_normal = set()
    for row, key in zip(models.itertuples(), arch, strict=True):
        if not row.robust:
            continue
        if key is None:
            unpaired.append((row.model_id, True, row.architecture, row.dataset, "architecture unknown"))
            continue
        partners = normal_by_key.get((row.dataset, key), [])
        if not partners:
            unpaired.append((row.model_id, True, row.architecture, row.dataset,
                             f"no normal {row.architecture} model on {row.dataset} in the selection"))
        for normal in partners:
            pairs.append((row.model_id, normal, row.architecture, row.dataset, "auto"))
            used_normal.add(normal)
    for row, key in zip(models.itertuples(), arch, strict=True):
        if not row.robust and row.model_id not in used_normal:
            reason = "architecture unknown" if key is None else \
                f"no robust {row.architecture} model on {row.dataset} in the selection"
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
