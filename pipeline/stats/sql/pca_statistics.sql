-- Per-layer PCA sufficient statistics (count, sum, uncentred scatter of the scaled
-- non-sparse filters) of the selected 3x3 layers with metrics; they are additive.
SELECT model_id, dataset, robust, depth_bucket, n_nonsparse, pca_sum, pca_scatter
FROM selected_layers
WHERE has_metrics AND n_nonsparse > 0
ORDER BY model_id, member, conv_index
