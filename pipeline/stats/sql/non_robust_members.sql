-- Members of selected robust-pool models that were not adversarially trained (layers.member_robust
-- false, e.g. the accurate base classifier of Bai2024MixedNUTS): selected_layers leaves their layers
-- out of every analysis; the report lists them.
SELECT m.model_id, coalesce(l.member, 0) AS member, count(*) AS n_layers
FROM layers AS l
JOIN selected_models AS m USING (model_id)
WHERE m.robust AND m.threat_model <> 'corruptions' AND l.member_robust IS FALSE
GROUP BY ALL
ORDER BY ALL
