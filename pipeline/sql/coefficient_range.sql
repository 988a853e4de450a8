-- The duckdb engine's range pass: min and max of all 9 coefficients of the selected
-- non-sparse filters on the basis (_basis: components v<k><j>, mean m<j>). _scan_groups
-- lists the (model_id, conv_index) of the layers that count; _scan_filters is a view
-- over the selected models' filters files. The numba engine (pipeline/shift.py) computes
-- the same; see there for the definitions.
WITH selected AS (
    SELECT g.grp, f.w0::DOUBLE AS w0, f.w1::DOUBLE AS w1, f.w2::DOUBLE AS w2, f.w3::DOUBLE AS w3, f.w4::DOUBLE AS w4, f.w5::DOUBLE AS w5, f.w6::DOUBLE AS w6, f.w7::DOUBLE AS w7, f.w8::DOUBLE AS w8
    FROM _scan_filters AS f
    JOIN _scan_groups AS g ON f.model_id = g.model_id AND f.conv_index = g.conv_index
    WHERE NOT f.sparse
),
scaled AS (
    SELECT *, greatest(abs(w0), abs(w1), abs(w2), abs(w3), abs(w4), abs(w5), abs(w6), abs(w7), abs(w8)) AS s
    FROM selected
),
centred AS (
    SELECT
        grp,
        w0 / s - b.m0 AS y0,
        w1 / s - b.m1 AS y1,
        w2 / s - b.m2 AS y2,
        w3 / s - b.m3 AS y3,
        w4 / s - b.m4 AS y4,
        w5 / s - b.m5 AS y5,
        w6 / s - b.m6 AS y6,
        w7 / s - b.m7 AS y7,
        w8 / s - b.m8 AS y8
    FROM scaled, _basis AS b
    WHERE s > 0
),
coefficients AS (
    SELECT
        grp,
        unnest(range(9)) AS k,
        unnest([
            b.v00 * y0 + b.v01 * y1 + b.v02 * y2 + b.v03 * y3 + b.v04 * y4 + b.v05 * y5 + b.v06 * y6 + b.v07 * y7 + b.v08 * y8,
            b.v10 * y0 + b.v11 * y1 + b.v12 * y2 + b.v13 * y3 + b.v14 * y4 + b.v15 * y5 + b.v16 * y6 + b.v17 * y7 + b.v18 * y8,
            b.v20 * y0 + b.v21 * y1 + b.v22 * y2 + b.v23 * y3 + b.v24 * y4 + b.v25 * y5 + b.v26 * y6 + b.v27 * y7 + b.v28 * y8,
            b.v30 * y0 + b.v31 * y1 + b.v32 * y2 + b.v33 * y3 + b.v34 * y4 + b.v35 * y5 + b.v36 * y6 + b.v37 * y7 + b.v38 * y8,
            b.v40 * y0 + b.v41 * y1 + b.v42 * y2 + b.v43 * y3 + b.v44 * y4 + b.v45 * y5 + b.v46 * y6 + b.v47 * y7 + b.v48 * y8,
            b.v50 * y0 + b.v51 * y1 + b.v52 * y2 + b.v53 * y3 + b.v54 * y4 + b.v55 * y5 + b.v56 * y6 + b.v57 * y7 + b.v58 * y8,
            b.v60 * y0 + b.v61 * y1 + b.v62 * y2 + b.v63 * y3 + b.v64 * y4 + b.v65 * y5 + b.v66 * y6 + b.v67 * y7 + b.v68 * y8,
            b.v70 * y0 + b.v71 * y1 + b.v72 * y2 + b.v73 * y3 + b.v74 * y4 + b.v75 * y5 + b.v76 * y6 + b.v77 * y7 + b.v78 * y8,
            b.v80 * y0 + b.v81 * y1 + b.v82 * y2 + b.v83 * y3 + b.v84 * y4 + b.v85 * y5 + b.v86 * y6 + b.v87 * y7 + b.v88 * y8
        ]) AS c
    FROM centred, _basis AS b
)
SELECT min(c) AS lo, max(c) AS hi, count(*) // 9 AS n_filters
FROM coefficients
