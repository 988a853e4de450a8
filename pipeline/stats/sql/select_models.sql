-- The models of a stats run: the user's --where predicate ({where}, on the models table as
-- stored), the training datasets ($datasets, empty = all) and the threat models of the
-- robust pool ($threat_models, empty = all; normally trained models are kept so that they
-- can be compared, exclude them with --where 'robust').
-- Corruption-robust models (threat_model = 'corruptions') are in neither pool unless
-- $include_corruptions (--include-corruptions or --threat-models corruptions); then they
-- are in the robust pool. `robust` of this table is the pool: the models table's value,
-- true for corruptions models whatever they were recorded with.
CREATE OR REPLACE TEMP TABLE selected_models AS
SELECT * REPLACE (robust OR threat_model = 'corruptions' AS robust)
FROM (
    SELECT *
    FROM models
    WHERE ({where})
) AS chosen
WHERE (len($datasets) = 0 OR list_contains($datasets, dataset))
  AND (threat_model <> 'corruptions' OR $include_corruptions)
  AND (len($threat_models) = 0 OR NOT (robust OR threat_model = 'corruptions')
       OR list_contains($threat_models, threat_model))
