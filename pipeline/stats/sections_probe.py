"""The report's probe section (the paper's second finding; pipeline/stats/probes.py computes it)."""

from __future__ import annotations

from pipeline.stats.document import ReportContext, Section
from pipeline.stats.figures_probe import probe_example_figure, probe_figure


def probes_section(ctx: ReportContext) -> Section | None:
    """Robust vs normal first-stage response per perturbation; None when no selected model has probe rows."""
    probes = ctx.result.tables.get("probes")
    if probes is None or probes.empty:
        return None
    comparison = ctx.result.tables["probe_comparison"]
    first = probes.iloc[0]
    references = sorted(str(r) for r in probes.reference_model.dropna().unique())
    reference = ", ".join(references) if references else "a reference model"
    section = Section("First-stage probe", paragraphs=[
        f"How much of an L-inf perturbation (eps {first.eps:.4g}, {int(first.n_images)} probe images) survives the "
        "first executed convolution: relative change ||a(x+d) - a(x)|| / ||a(x)|| of its output (conv) and of "
        "ReLU of it (conv + ReLU), and the gain, that change over ||d|| / ||x||. transfer: the same PGD "
        f"perturbations for every model (computed on {reference}; "
        "the comparable setting); pgd: PGD against each model itself (model-specific); random: random signs. "
        "Mann-Whitney U per dataset, perturbation, stage and metric, Holm-corrected within a dataset; paired "
        "differences (Wilcoxon) where pairs exist. A first-stage measurement, not the model's robustness."],
        bullets=[f.text for f in ctx.result.findings if f.analysis == "probe"])
    if ctx.figures and (path := probe_figure(probes, comparison, ctx.out_dir, ctx.options.alpha)):
        section.figures.append(("Gain per model (dots) and median (bar), robust beside normal; dashed line at gain 1 "
                                "(passed on in full), stars for Holm-corrected p", path))
    if ctx.figures and (path := probe_example_figure(ctx.result.probe_examples, ctx.out_dir)):
        section.figures.append(("The first stage of robust models beside their normal counterparts (the paper's "
                                "notebook figure), first probe image: first-conv filters, ReLU(conv) of the clean "
                                "and of the perturbed image, and the absolute difference (one colour scale per row "
                                "and pair)", path))
    columns = ["dataset", "perturbation", "stage", "metric", "n_robust", "n_normal", "median_robust",
               "median_normal", "ratio", "p_holm", "n_pairs", "pairs_robust_lower", "verdict"]
    section.tables.append(("Robust vs normal, per perturbation and stage", comparison[columns]))
    accuracy = probes.drop_duplicates(["model_id", "perturbation"])[
        ["model_id", "robust", "perturbation", "clean_acc", "perturbed_acc"]]
    section.tables.append(("Probe-set accuracy of each model, clean and perturbed (percent)", accuracy))
    return section
