"""Report sections of the analyses, each with its figures: depth profile, PCA, distribution shift,
correlation with accuracy, first-layer galleries."""

from __future__ import annotations

from pipeline.stats.document import ReportContext, Section
from pipeline.stats.figures import constant_metrics, depth_profile_figure
from pipeline.stats.figures_accuracy import accuracy_figure
from pipeline.stats.figures_gallery import gallery_figure
from pipeline.stats.figures_pca import basis_figure, spectrum_figure
from pipeline.stats.figures_shift import histogram_figures, kl_heatmap_figure, shift_figure
from pipeline.stats.profile import METRIC_NAMES


def depth_section(ctx: ReportContext) -> Section:
    """How the depth profile is aggregated and tested, its box plots and the significant differences."""
    t, options = ctx.result.tables, ctx.options
    depth = Section("Depth profile: robust vs normal", paragraphs=[
        "Per model and bucket: sparsity = sum of sparse / sum of filters, variance entropy weighted by non-sparse "
        "filters, orthogonality weighted by output channels. Robust vs normal per training dataset and bucket: "
        f"Mann-Whitney U, Holm-corrected over the buckets of each dataset and metric (alpha {options.alpha}); "
        f"tested only with at least {options.min_models} models on each side. Full tables: "
        "tables/depth_profile.*, tables/robust_vs_normal.*."])
    constant = constant_metrics(t["depth_profile"])
    if constant:
        depth.paragraphs.append("Not drawn, the same value in every model and bucket: " + ", ".join(
            f"{METRIC_NAMES[m]} ({v:.4g})" for m, v in constant.items()) + ".")
    if ctx.figures and (path := depth_profile_figure(t["depth_profile"], t["robust_vs_normal"], ctx.out_dir,
                                                     options.alpha)):
        depth.figures.append(("Metrics by depth bucket: boxes (quartiles, whiskers 1.5 IQR) of the per-model values, "
                              "normal blue, robust orange; diamond: mean with 95% t interval (3 or more models); numbers at the bottom: "
                              f"models per box; * Holm p < {options.alpha} (** < {options.alpha / 5:g}, "
                              f"*** < {options.alpha / 50:g}); grey: no layers in that bucket", path))
    significant = t["robust_vs_normal"][t["robust_vs_normal"].significant]
    if not significant.empty:
        depth.tables.append(("Significant robust vs normal differences", significant[
            ["dataset", "bucket", "metric", "n_robust", "n_normal", "mean_robust", "mean_normal", "p_holm"]]))
    return depth


def pca_section(ctx: ReportContext) -> Section:
    """The PCA bases: their spectra compared, and the basis images."""
    pca = Section("PCA basis of scaled non-sparse filters", paragraphs=[
        "Computed from the per-layer sufficient statistics (no pass over the filters). Tables: "
        "tables/pca_explained_variance.*, tables/pca_components.*."])
    if ctx.figures:
        for caption, path in (
                ("Left: share of variance per component of the robust and the normal basis (log scale; a flatter "
                 "spectrum, higher entropy, is more diverse filters). Right: |cosine| between their components "
                 "(a diagonal of ones: the same basis)", spectrum_figure(ctx.result, ctx.out_dir)),
                ("Basis components as 3x3 images (rows: all, robust, normal), with their explained-variance ratios",
                 basis_figure(ctx.result, ctx.out_dir))):
            if path:
                pca.figures.append((caption, path))
    return pca


def _range(value: tuple[float, float] | None) -> str:
    return f"[{value[0]:.4g}, {value[1]:.4g}]" if value else "(not computed)"


def shift_section(ctx: ReportContext) -> Section:
    """How the divergence is computed and grouped, its figures and the per-dataset table."""
    result, options = ctx.result, ctx.options
    table = result.tables["distribution_shift"]
    shift = Section("Distribution shift", paragraphs=[
        "Filters projected on the full basis; per coefficient a 70-bin histogram over the global coefficient "
        f"range {_range(result.coefficient_range)}, empty bins set to float32 eps, normalised; symmetric KL per "
        "coefficient weighted by the explained-variance ratio. Groups: "
        + ("the models of the robust/normal pairs, each counted once per pair (as the paper)"
           if options.kl_groups == "pairs" else "all robust vs all normal models, each once")
        + ". p: share of model relabellings with a divergence at least as large (per bucket, not corrected). "
          "Buckets with few filters give large divergences by chance: read them with their n and p."])
    ratio = result.bases["all"].explained_variance_ratio if result.bases.get("all") is not None else None
    if ctx.figures:
        if path := shift_figure(table, ctx.out_dir, options.alpha):
            shift.figures.append((f"Divergence by depth bucket: solid bars p < {options.alpha}, hatched the others; "
                                  "n: non-sparse filters in the bucket (robust + normal)", path))
        if path := kl_heatmap_figure(table, ratio, ctx.out_dir):
            shift.figures.append(("Symmetric KL per PCA coefficient (share of variance in brackets) and depth "
                                  "bucket, log colour scale", path))
        for dataset, path in histogram_figures(result.tables["coefficient_histograms"], table, ratio, ctx.out_dir):
            shift.figures.append((f"{dataset}: coefficient histograms of robust and normal filters (all buckets, "
                                  "each model once, density on a log scale)", path))
    if not table.empty:
        shift.tables.append(("Divergence per dataset (all buckets)", table.query("depth_bucket == -1")[
            ["dataset", "n_robust_models", "n_normal_models", "n_robust_filters", "n_normal_filters", "divergence",
             "p_value"]]))
    return shift


def correlation_section(ctx: ReportContext) -> Section:
    """Metric vs robust accuracy, and the ten strongest correlations by q."""
    t = ctx.result.tables
    corr = t["correlations"]
    several = corr.dataset.eq("all datasets").any()
    correlation = Section("Correlation with accuracy (robust models)", paragraphs=[
        "Spearman (and Pearson) correlation of each metric, per bucket and whole model, with clean and robust "
        "accuracy across the robust models, per dataset" + (" and over all datasets" if several else "")
        + "; q: Benjamini-Hochberg over the whole table. Full table: tables/correlations.*."])
    if ctx.figures and (path := accuracy_figure(t["model_profile"], corr, ctx.out_dir)):
        correlation.figures.append(("Whole-model metrics vs robust accuracy (filled: robust, hollow: normal); "
                                    "titles: Spearman correlation across the robust models", path))
    top = corr[corr.spearman_q.notna()].sort_values(["spearman_q", "dataset", "depth_bucket"]).head(10)
    if not top.empty:
        correlation.tables.append(("Strongest correlations", top[
            ["dataset", "bucket", "metric", "accuracy", "n", "spearman_rho", "spearman_q", "pearson_r"]]))
    return correlation


def gallery_section(ctx: ReportContext) -> Section:
    """The first-layer mosaics, or why there are none."""
    gallery = Section("First-layer filters", paragraphs=[
        "The first 3x3 conv layer of chosen models, a pair's robust and normal model side by side, no model "
        "twice (RGB per output channel when the layer has 3 input channels, each kernel scaled to its own "
        "max |w|; else one tile per filter, first 64)."])
    if ctx.figures and (path := gallery_figure(ctx.result.galleries, ctx.out_dir)):
        gallery.figures.append(("First-layer filters (left robust, right normal)", path))
    elif not ctx.result.galleries:
        gallery.paragraphs.append("No models to show (no pairs and no --gallery models).")
    return gallery
