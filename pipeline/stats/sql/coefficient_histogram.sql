-- The duckdb engine's histogram pass: per group (_scan_groups.grp), coefficient k and
-- first-guess bin (the floor of the scaled value), the count of selected non-sparse filters,
-- with the comparisons against the exact edges that make the binning numpy.histogram's over
-- [lo, hi] with n_bins equal bins (edges[b] = b * step + lo, as numpy.linspace makes them).
WITH first_guess AS (
    SELECT grp, k, c, least(greatest(floor((c - getvariable('lo')) * getvariable('norm')), 0),
                            getvariable('n_bins') - 1)::BIGINT AS bin
    FROM _scan_coefficients
)
-- the edge comparisons are returned as keys and applied by the caller (bin - below_edge, then
-- + above_edge unless last; outside: not counted): computing the corrected bin in SQL before
-- the GROUP BY trips an internal error of DuckDB 2.0 ("dict-surviving cache")
SELECT
    grp,
    k,
    bin,
    c < bin * getvariable('step') + getvariable('lo') AS below_edge,
    c >= (bin + 1) * getvariable('step') + getvariable('lo') AS above_edge,
    c < getvariable('lo') OR c > getvariable('hi') AS outside,
    count(*) AS n
FROM first_guess
GROUP BY ALL
