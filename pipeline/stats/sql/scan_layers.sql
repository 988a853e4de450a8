-- The 3x3 layers of the selected models, for the passes over the filters: the
-- depth bucket each layer's filters are counted in, and whether they count at all.
-- A layer is (model_id, member, conv_index); layers left out of selected_layers
-- (non-robust members of robust models) are absent, so their filters never count.
SELECT model_id, member, conv_index, depth_bucket, has_metrics
FROM selected_layers
WHERE is_3x3
ORDER BY model_id, member, conv_index
