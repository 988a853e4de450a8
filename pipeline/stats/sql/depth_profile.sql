-- Per model and depth bucket: the paper's aggregates over the 3x3 layers with metrics,
--   sparsity         = sum(n_sparse) / sum(n_filters)
--   variance_entropy = sum(n_nonsparse * variance_entropy) / sum(n_nonsparse)
--   orthogonality    = sum(out_channels * orthogonality) / sum(out_channels)
-- and the sums themselves (so coarser groupings stay exact). Buckets holding 3x3
-- layers only with non-finite weights appear with null metrics and a count.
SELECT
    m.model_id,
    m.dataset,
    m.robust,
    m.threat_model,
    m.architecture,
    m.clean_acc,
    m.robust_acc,
    l.depth_bucket,
    count(*) FILTER (WHERE l.has_metrics) AS n_layers,
    count(*) FILTER (WHERE l.is_3x3 AND NOT l.has_metrics) AS n_layers_nonfinite,
    coalesce(sum(l.n_filters) FILTER (WHERE l.has_metrics), 0) AS sum_filters,
    coalesce(sum(l.n_sparse) FILTER (WHERE l.has_metrics), 0) AS sum_sparse,
    coalesce(sum(l.n_nonsparse) FILTER (WHERE l.has_metrics), 0) AS sum_nonsparse,
    coalesce(sum(l.n_nonsparse * l.variance_entropy) FILTER (WHERE l.has_metrics), 0) AS sum_weighted_entropy,
    coalesce(sum(l.out_channels) FILTER (WHERE l.has_metrics), 0) AS sum_out_channels,
    coalesce(sum(l.out_channels * l.orthogonality) FILTER (WHERE l.has_metrics), 0) AS sum_weighted_orthogonality,
    sum(l.n_sparse) FILTER (WHERE l.has_metrics) / nullif(sum(l.n_filters) FILTER (WHERE l.has_metrics), 0)
        AS sparsity,
    sum(l.n_nonsparse * l.variance_entropy) FILTER (WHERE l.has_metrics)
        / nullif(sum(l.n_nonsparse) FILTER (WHERE l.has_metrics), 0) AS variance_entropy,
    sum(l.out_channels * l.orthogonality) FILTER (WHERE l.has_metrics)
        / nullif(sum(l.out_channels) FILTER (WHERE l.has_metrics), 0) AS orthogonality
FROM selected_layers AS l
JOIN selected_models AS m USING (model_id)
WHERE l.is_3x3
GROUP BY ALL
ORDER BY m.dataset, m.robust DESC, m.model_id, l.depth_bucket
