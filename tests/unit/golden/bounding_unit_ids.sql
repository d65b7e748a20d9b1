SELECT
  SHA256(
    <opad> || UNHEX(
      SHA256(
        <ipad> || ENCODE("__id")
      )
    )
  ) AS "h"
FROM (
  SELECT DISTINCT
    TRIM(CAST("pid" AS TEXT)) AS "__id"
  FROM READ_PARQUET(['/stage/__p=0/data_0.parquet', '/stage/__p=0/data_1.parquet'])
  WHERE
    NOT "pid" IS NULL
) AS d
