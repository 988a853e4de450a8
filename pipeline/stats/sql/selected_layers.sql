-- Every conv layer of the selected models with its depth bucket:
--   0 = the first conv layer alone (conv_index 0), then 1..10 = deciles of
--   conv_depth_norm: (0, 0.1] -> 1, ..., (0.9, 1.0] -> 10 (1e-9 absorbs the
--   rounding of conv_index / (n_conv_layers - 1), e.g. 3/10 -> 0.30000000000000004).
-- Depth is per ensemble member: each member's convs are numbered from 0, so every
-- member's first conv is in bucket 0 (member and member_robust are null in rows of
-- schema version 1: member 0, kept).
-- has_metrics: a 3x3 layer without NaN/Inf weights (the only layers with metric
-- values; 3x3 layers with non-finite weights are counted, never averaged).
-- Left out: the layers of members that were not adversarially trained (member_robust
-- false) of models in the robust pool, except corruption-robust models (robust false
-- as stored, so every member_robust is false): see non_robust_members.sql.
CREATE OR REPLACE TEMP VIEW selected_layers AS
SELECT
    l.model_id,
    coalesce(l.member, 0) AS member,
    l.conv_index,
    l.layer_name,
    l.conv_depth_norm,
    l.in_channels,
    l.out_channels,
    l.kernel_h,
    l.kernel_w,
    l.n_filters,
    l.n_sparse,
    l.n_nonsparse,
    l.n_nonfinite,
    l.sparsity,
    l.variance_entropy,
    l.orthogonality,
    l.pca_sum,
    l.pca_scatter,
    m.dataset,
    m.robust,
    m.threat_model,
    m.architecture,
    CASE
        WHEN l.conv_index = 0 THEN 0
        ELSE least(10, greatest(1, CAST(ceil(l.conv_depth_norm * 10 - 1e-9) AS INTEGER)))
    END AS depth_bucket,
    (l.kernel_h = 3 AND l.kernel_w = 3) AS is_3x3,
    (l.kernel_h = 3 AND l.kernel_w = 3 AND l.n_nonfinite = 0 AND l.n_filters > 0) AS has_metrics
FROM layers AS l
JOIN selected_models AS m USING (model_id)
WHERE NOT (m.robust AND m.threat_model <> 'corruptions' AND l.member_robust IS FALSE)
