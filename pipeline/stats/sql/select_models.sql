-- The models of a stats run: the user's --where predicate ({where}), the training
-- datasets ($datasets, empty = all) and the threat models of the robust models
-- ($threat_models, empty = all; normally trained models are kept so that they can
-- be compared, exclude them with --where 'robust').
CREATE OR REPLACE TEMP TABLE selected_models AS
SELECT *
FROM models
WHERE ({where})
  AND (len($datasets) = 0 OR list_contains($datasets, dataset))
  AND (len($threat_models) = 0 OR NOT robust OR list_contains($threat_models, threat_model))
