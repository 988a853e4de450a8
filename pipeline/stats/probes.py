"""The paper's second finding across a zoo: robust vs normal models' first-stage response to perturbations.

Input: the probes table (pipeline/probe/), one row per model x perturbation x stage.
Per training dataset, perturbation (pgd, random, transfer), stage (conv, conv_relu) and
metric (``rel_change_mean``: the share of the activation a perturbation changes;
``gain_mean``: that share over the perturbation's relative size in input space),
robust models are compared with normal ones:

* unpaired: medians, their ratio, Mann-Whitney U (two-sided), Holm-corrected across
  the perturbation x stage x metric tests of a dataset, tested only with at least
  ``min_models`` on each side ("cannot say" otherwise), as the depth profile is;
* paired, where the stats' pairing found robust/normal pairs: the median of the
  per-pair differences (robust minus normal), how many pairs point the same way, and
  a Wilcoxon signed-rank p-value with at least ``min_models`` pairs.

``transfer`` is the comparable setting (identical inputs for every model); ``pgd``
attacks each model itself, so its numbers mix the first stage with the rest of the model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scistats

from pipeline.stats.corrections import holm
from pipeline.stats.findings import Finding

PROBE_METRICS = ("rel_change_mean", "gain_mean")
PROBE_COLUMNS = ["model_id", "dataset", "perturbation", "stage", "rel_change_mean", "gain_mean", "clean_acc",
                 "perturbed_acc", "n_images", "eps", "reference_model", "layer_name"]
COMPARISON_COLUMNS = ["dataset", "perturbation", "stage", "metric", "n_robust", "n_normal", "median_robust",
                      "median_normal", "ratio", "p_value", "p_holm", "significant", "n_pairs", "median_pair_difference",
                      "pairs_robust_lower", "p_pairs", "verdict"]


def probe_rows(con: object, model_ids: list[str]) -> pd.DataFrame:
    """The probes rows of the selected models (``con``: a DuckDB connection with the dataset's views)."""
    if not model_ids:
        return pd.DataFrame(columns=PROBE_COLUMNS)
    con.register("_selected_probe_models", pd.DataFrame({"model_id": model_ids}))  # type: ignore[attr-defined]
    frame = con.execute(  # type: ignore[attr-defined]
        f"SELECT {', '.join(PROBE_COLUMNS)} FROM probes JOIN _selected_probe_models USING (model_id) "
        "ORDER BY model_id, perturbation, stage").df()
    con.unregister("_selected_probe_models")  # type: ignore[attr-defined]
    return frame


def with_robust(probes: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """``probes`` with each model's ``robust`` flag from the selection (models not selected are dropped)."""
    return probes.merge(models[["model_id", "robust"]], on="model_id", how="inner")


def _verdict(row: dict, alpha: float, min_models: int) -> str:
    if np.isnan(row["p_value"]):
        return (f"cannot say ({row['n_robust']} robust, {row['n_normal']} normal; {min_models} of each needed)")
    if row["p_holm"] < alpha:
        return "robust lets less through" if row["median_robust"] < row["median_normal"] else \
            "robust lets more through"
    return "no significant difference"


def compare_probes(probes: pd.DataFrame, pairs: pd.DataFrame, alpha: float, min_models: int) -> pd.DataFrame:
    """Robust vs normal per dataset, perturbation, stage and metric (see the module docstring)."""
    rows = []
    for (dataset, kind, stage), group in probes.groupby(["dataset", "perturbation", "stage"], sort=True):
        for metric in PROBE_METRICS:
            robust = group.loc[group.robust, metric].dropna().to_numpy(float)
            normal = group.loc[~group.robust, metric].dropna().to_numpy(float)
            row = {"dataset": dataset, "perturbation": kind, "stage": stage, "metric": metric,
                   "n_robust": len(robust), "n_normal": len(normal),
                   "median_robust": float(np.median(robust)) if len(robust) else np.nan,
                   "median_normal": float(np.median(normal)) if len(normal) else np.nan, "p_value": np.nan}
            row["ratio"] = row["median_robust"] / row["median_normal"] if row["median_normal"] else np.nan
            if len(robust) >= min_models and len(normal) >= min_models:
                both = np.concatenate([robust, normal])
                row["p_value"] = float(scistats.mannwhitneyu(robust, normal, alternative="two-sided").pvalue) \
                    if np.ptp(both) > 0 else 1.0
            row.update(_paired(group, pairs, metric, min_models))
            rows.append(row)
    table = pd.DataFrame(rows, columns=[c for c in COMPARISON_COLUMNS if c not in ("p_holm", "significant",
                                                                                  "verdict")])
    table["p_holm"] = np.nan
    for _, index in table.groupby("dataset").groups.items():
        table.loc[index, "p_holm"] = holm(table.loc[index, "p_value"].tolist())
    table["significant"] = table.p_holm < alpha
    table["verdict"] = [_verdict(r, alpha, min_models) for r in table.to_dict("records")]
    return table[COMPARISON_COLUMNS]


def _paired(group: pd.DataFrame, pairs: pd.DataFrame, metric: str, min_models: int) -> dict:
    """Per-pair differences (robust minus normal) of one metric, for the pairs with rows on both sides."""
    empty = {"n_pairs": 0, "median_pair_difference": np.nan, "pairs_robust_lower": 0, "p_pairs": np.nan}
    if pairs.empty:
        return empty
    values = group.set_index("model_id")[metric]
    both = pairs[pairs.robust_model_id.isin(values.index) & pairs.normal_model_id.isin(values.index)]
    if both.empty:
        return empty
    differences = (values.loc[both.robust_model_id].to_numpy(float) - values.loc[both.normal_model_id].to_numpy(float))
    differences = differences[~np.isnan(differences)]
    result = {"n_pairs": len(differences),
              "median_pair_difference": float(np.median(differences)) if len(differences) else np.nan,
              "pairs_robust_lower": int((differences < 0).sum()), "p_pairs": np.nan}
    if len(differences) >= min_models:
        result["p_pairs"] = float(scistats.wilcoxon(differences).pvalue) if np.any(differences != 0) else 1.0
    return result


def probe_findings(table: pd.DataFrame, probes: pd.DataFrame) -> list[Finding]:
    """The second finding in short sentences: one per dataset and perturbation (the ReLU stage's gain)."""
    findings = []
    focus = table[(table.metric == "gain_mean") & (table.stage == "conv_relu")]
    for row in focus.to_dict("records"):
        subject = f"first stage, {row['perturbation']}"
        if row["verdict"].startswith("cannot say"):
            findings.append(Finding("probe", row["dataset"], subject, "cannot say",
                                    f"{row['dataset']}, {row['perturbation']} perturbation: {row['verdict']}."))
            continue
        text = (f"{row['dataset']}, {row['perturbation']} perturbation: the first conv + ReLU of robust models "
                f"passes on {row['ratio']:.2f}x what normal ones pass on (median gain {row['median_robust']:.3f} "
                f"vs {row['median_normal']:.3f}; {row['n_robust']} vs {row['n_normal']} models; Holm p = "
                f"{row['p_holm']:.2g}): {row['verdict']}.")
        if row["n_pairs"]:
            text += f" Robust lower in {row['pairs_robust_lower']} of {row['n_pairs']} pairs."
        verdict = {"robust lets less through": "robust lower", "robust lets more through": "robust higher"}.get(
            row["verdict"], "no difference")
        findings.append(Finding("probe", row["dataset"], subject, verdict, text))
    accuracy = probes[probes.perturbation == "pgd"].drop_duplicates("model_id")
    if len(accuracy):
        drop = float((accuracy.clean_acc - accuracy.perturbed_acc).median())
        findings.append(Finding("probe", "all", "PGD sanity check", "check",
                                f"Sanity check: PGD lowered the probe-set accuracy by a median {drop:.1f} points "
                                f"({len(accuracy)} models)."))
    return findings


def probe_examples(ds: object, pairs: pd.DataFrame, limit: int = 2) -> list[tuple[str, str, dict, dict]]:
    """(robust id, normal id, robust example, normal example) of the first pairs whose models both kept a probe
    example (pipeline/probe/example.py), each model used once."""
    from pipeline.probe.example import read_example

    store, stored = ds.store, ds.stored_models()  # type: ignore[attr-defined]
    chosen: list[tuple[str, str, dict, dict]] = []
    used: set[str] = set()
    for robust_id, normal_id in zip(pairs.get("robust_model_id", []), pairs.get("normal_model_id", []), strict=True):
        if len(chosen) >= limit or robust_id in used or normal_id in used:
            continue
        examples = []
        for model_id in (robust_id, normal_id):
            model = stored.get(model_id)
            examples.append(read_example(store.fs, store.probe_example_for(model.slug, model.probe_write_id))
                            if model is not None and model.probe_write_id else None)
        if all(e is not None for e in examples):
            chosen.append((robust_id, normal_id, examples[0], examples[1]))
            used |= {robust_id, normal_id}
    return chosen
