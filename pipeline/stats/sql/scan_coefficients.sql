-- The coefficients of the selected non-sparse filters on the PCA basis, one row per filter and
-- coefficient k: the projection both DuckDB-engine scans (coefficient_range.sql,
-- coefficient_histogram.sql) read. Variables v<k><j>: components, m<j>: mean. _scan_groups lists
-- the (target, conv_index) of the layers that count; _scan_filters is a view over the selected
-- models' filters files, each model's rows tagged with its target number. The numba engine
-- (pipeline/shift.py) computes the same; see there for the definitions.
CREATE OR REPLACE TEMP VIEW _scan_coefficients AS
WITH selected AS (
    SELECT g.grp, f.w0::DOUBLE AS w0, f.w1::DOUBLE AS w1, f.w2::DOUBLE AS w2, f.w3::DOUBLE AS w3, f.w4::DOUBLE AS w4, f.w5::DOUBLE AS w5, f.w6::DOUBLE AS w6, f.w7::DOUBLE AS w7, f.w8::DOUBLE AS w8
    FROM _scan_filters AS f
    JOIN _scan_groups AS g ON f.target = g.target AND f.conv_index = g.conv_index
    WHERE NOT f.sparse
),
scaled AS (
    SELECT *, greatest(abs(w0), abs(w1), abs(w2), abs(w3), abs(w4), abs(w5), abs(w6), abs(w7), abs(w8)) AS s
    FROM selected
),
centred AS (
    SELECT
        grp,
        w0 / s - getvariable('m0') AS y0,
        w1 / s - getvariable('m1') AS y1,
        w2 / s - getvariable('m2') AS y2,
        w3 / s - getvariable('m3') AS y3,
        w4 / s - getvariable('m4') AS y4,
        w5 / s - getvariable('m5') AS y5,
        w6 / s - getvariable('m6') AS y6,
        w7 / s - getvariable('m7') AS y7,
        w8 / s - getvariable('m8') AS y8
    FROM scaled
    WHERE s > 0
),
coefficients AS (
    SELECT
        grp,
        unnest(range(9)) AS k,
        unnest([
            getvariable('v00') * y0 + getvariable('v01') * y1 + getvariable('v02') * y2 + getvariable('v03') * y3 + getvariable('v04') * y4 + getvariable('v05') * y5 + getvariable('v06') * y6 + getvariable('v07') * y7 + getvariable('v08') * y8,
            getvariable('v10') * y0 + getvariable('v11') * y1 + getvariable('v12') * y2 + getvariable('v13') * y3 + getvariable('v14') * y4 + getvariable('v15') * y5 + getvariable('v16') * y6 + getvariable('v17') * y7 + getvariable('v18') * y8,
            getvariable('v20') * y0 + getvariable('v21') * y1 + getvariable('v22') * y2 + getvariable('v23') * y3 + getvariable('v24') * y4 + getvariable('v25') * y5 + getvariable('v26') * y6 + getvariable('v27') * y7 + getvariable('v28') * y8,
            getvariable('v30') * y0 + getvariable('v31') * y1 + getvariable('v32') * y2 + getvariable('v33') * y3 + getvariable('v34') * y4 + getvariable('v35') * y5 + getvariable('v36') * y6 + getvariable('v37') * y7 + getvariable('v38') * y8,
            getvariable('v40') * y0 + getvariable('v41') * y1 + getvariable('v42') * y2 + getvariable('v43') * y3 + getvariable('v44') * y4 + getvariable('v45') * y5 + getvariable('v46') * y6 + getvariable('v47') * y7 + getvariable('v48') * y8,
            getvariable('v50') * y0 + getvariable('v51') * y1 + getvariable('v52') * y2 + getvariable('v53') * y3 + getvariable('v54') * y4 + getvariable('v55') * y5 + getvariable('v56') * y6 + getvariable('v57') * y7 + getvariable('v58') * y8,
            getvariable('v60') * y0 + getvariable('v61') * y1 + getvariable('v62') * y2 + getvariable('v63') * y3 + getvariable('v64') * y4 + getvariable('v65') * y5 + getvariable('v66') * y6 + getvariable('v67') * y7 + getvariable('v68') * y8,
            getvariable('v70') * y0 + getvariable('v71') * y1 + getvariable('v72') * y2 + getvariable('v73') * y3 + getvariable('v74') * y4 + getvariable('v75') * y5 + getvariable('v76') * y6 + getvariable('v77') * y7 + getvariable('v78') * y8,
            getvariable('v80') * y0 + getvariable('v81') * y1 + getvariable('v82') * y2 + getvariable('v83') * y3 + getvariable('v84') * y4 + getvariable('v85') * y5 + getvariable('v86') * y6 + getvariable('v87') * y7 + getvariable('v88') * y8
        ]) AS c
    FROM centred
)
SELECT grp, k, c FROM coefficients
