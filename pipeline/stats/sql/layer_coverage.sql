-- Per selected model: how many of its conv layers carry metrics, and why the others do not.
SELECT
    m.model_id,
    m.dataset,
    m.robust,
    m.architecture,
    count(l.conv_index) AS n_conv_layers,
    count(l.conv_index) FILTER (WHERE l.has_metrics) AS n_layers_with_metrics,
    count(l.conv_index) FILTER (WHERE NOT l.is_3x3) AS n_layers_not_3x3,
    count(l.conv_index) FILTER (WHERE l.is_3x3 AND NOT l.has_metrics) AS n_layers_nonfinite,
    coalesce(sum(l.n_nonsparse) FILTER (WHERE l.has_metrics), 0) AS n_nonsparse_filters
FROM selected_models AS m
LEFT JOIN selected_layers AS l USING (model_id)
GROUP BY ALL
ORDER BY m.dataset, m.robust DESC, m.model_id
