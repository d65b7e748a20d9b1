WITH __src AS (
  SELECT
    "pid",
    "grp",
    "tag",
    "score",
    "code"
  FROM READ_PARQUET('/data/panel.parquet')
  WHERE
    NOT "pid" IS NULL
), __units AS (
  SELECT
    "pid",
    COUNT(*) AS "__n",
    CAST('0x' || LEFT(
      SHA256(
        <opad> || UNHEX(
          SHA256(
            <ipad> || ENCODE('unit:' || TRIM(CAST("pid" AS TEXT)))
          )
        )
      ),
      16
    ) AS UBIGINT) AS "__unit"
  FROM __src
  GROUP BY
    "pid"
)
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
  TRUE AS "__unit_first",
  "__unit",
  CAST(0 AS UBIGINT) AS "__row"
FROM (
  SELECT
    "pid",
    "grp",
    "tag",
    "score",
    "code",
    "__unit"
  FROM __src
  JOIN __units
    USING ("pid")
  WHERE
    "__n" = 1
) AS s
UNION ALL
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
  "__rank" = 1 AS "__unit_first",
  "__unit",
  "__o" AS "__row"
FROM (
  SELECT
    "pid",
    "grp",
    "tag",
    "score",
    "code",
    "__unit",
    "__o",
    ROW_NUMBER() OVER (PARTITION BY "pid" ORDER BY "__o") AS "__rank"
  FROM (
    SELECT
      "pid",
      "grp",
      "tag",
      "score",
      "code",
      "__unit",
      CAST('0x' || LEFT(
        SHA256(
          <opad> || UNHEX(
            SHA256(
              <ipad> || ENCODE(
                TO_JSON(
                  STRUCT_PACK(u := CAST("pid" AS TEXT), c1 := "grp", c2 := "tag", c3 := "score", c4 := "code")
                )
              )
            )
          )
        ),
        16
      ) AS UBIGINT) AS "__o"
    FROM (
      SELECT
        "pid",
        "grp",
        "tag",
        "score",
        "code",
        "__unit"
      FROM __src
      JOIN __units
        USING ("pid")
      WHERE
        "__n" > 1
    ) AS m
  ) AS h
) AS r
WHERE
  "__rank" <= 2
