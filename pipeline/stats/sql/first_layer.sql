-- The first 3x3 conv layer with metrics of each model in $model_ids (the first conv
-- layer itself when it is 3x3), of its first member that is left in selected_layers.
SELECT model_id, min_by(member, [member, conv_index]) AS member,
       min_by(conv_index, [member, conv_index]) AS conv_index,
       min_by(layer_name, [member, conv_index]) AS layer_name,
       min_by(in_channels, [member, conv_index]) AS in_channels,
       min_by(out_channels, [member, conv_index]) AS out_channels
FROM selected_layers
WHERE has_metrics AND list_contains($model_ids, model_id)
GROUP BY model_id
