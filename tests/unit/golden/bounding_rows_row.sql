SELECT
  CAST("grp" AS TEXT) AS "grp",
  TRY_CAST(ROUND(TRY_CAST("tag" AS DOUBLE)) AS BIGINT) AS "tag",
  CASE
    WHEN TRY_CAST("tag" AS DOUBLE) IS NULL
    THEN NULL
    ELSE LEAST(
      GREATEST(
        CAST(ROUND(LEAST(GREATEST(TRY_CAST("tag" AS DOUBLE), 0.0), 1000000.0) * 1) AS BIGINT),
        0
      ),
      1000000
    )
  END AS "__v_tag",
  TRY_CAST("score" AS DOUBLE) AS "score",
  CASE
    WHEN TRY_CAST("score" AS DOUBLE) IS NULL
    THEN NULL
    ELSE LEAST(
      GREATEST(
        CAST(ROUND(LEAST(GREATEST(TRY_CAST("score" AS DOUBLE), -1.5), 2.5) * 100) AS BIGINT),
        -150
      ),
      250
    )
  END AS "__v_score",
  TRY_CAST(ROUND(TRY_CAST("code" AS DOUBLE)) AS BIGINT) AS "code",
  TRUE AS "__unit_first"
FROM READ_PARQUET('/data/panel.parquet')
