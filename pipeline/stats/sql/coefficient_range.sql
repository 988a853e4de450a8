-- The duckdb engine's range pass: min and max of all 9 coefficients of the selected
-- non-sparse filters on the basis (the view _scan_coefficients, scan_coefficients.sql).
SELECT min(c) AS lo, max(c) AS hi, count(*) // 9 AS n_filters
FROM _scan_coefficients
