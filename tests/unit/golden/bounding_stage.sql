COPY (
  SELECT
    "pid",
    "grp",
    "tag",
    "score",
    "code",
    HASH("pid") % 7 AS "__p"
  FROM READ_PARQUET('/data/panel.parquet')
  WHERE
    NOT "pid" IS NULL
)
TO '/spill/stage/rows' WITH (
  FORMAT parquet,
  PARTITION_BY (
    "__p"
  )
)
