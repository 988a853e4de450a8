-- The 3x3 layers of the selected models, for the passes over the filters: the
-- depth bucket each layer's filters are counted in, and whether they count at all.
SELECT model_id, conv_index, depth_bucket, has_metrics
FROM selected_layers
WHERE is_3x3
ORDER BY model_id, conv_index
