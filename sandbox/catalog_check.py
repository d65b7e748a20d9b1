"""Check a catalog entry against the schema of its Parquet file (`sandbox datasets validate`).

Only the schema is read (names and types), never the values: bounds and categories are the
admin's public choices and are not compared with the data.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pyarrow.types as pat

from sandbox.bounding import reserved_names_in
from sandbox.policy.models import Dataset


def _fits(kind: str, arrow_type) -> bool:  # noqa: ANN001
    if kind == "category":
        return pat.is_string(arrow_type) or pat.is_large_string(arrow_type) or pat.is_dictionary(arrow_type)
    if kind == "int":
        return pat.is_integer(arrow_type) or pat.is_floating(arrow_type) or pat.is_decimal(arrow_type)
    if kind == "float":
        return pat.is_integer(arrow_type) or pat.is_floating(arrow_type) or pat.is_decimal(arrow_type)
    return not pat.is_nested(arrow_type)  # id: any scalar


def check_dataset_against_parquet(ds: Dataset, data_root: Path) -> list[str]:
    path = data_root / ds.source
    if not path.is_file():
        return [f"source {ds.source} not found under the data root"]
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one problem line
        return [f"source {ds.source} is not readable Parquet: {exc}"]
    problems = []
    fields = {f.name: f.type for f in schema}
    reserved = reserved_names_in(list(fields))
    if reserved:
        problems.append(f"source {ds.source}: reserved column names {', '.join(sorted(reserved))} (names starting "
                        "with __ and row, rowid, file_row_number, filename, file_index): rename or drop them")
    for name, col in ds.columns.items():
        if name not in fields:
            problems.append(f"columns.{name}: not in {ds.source} (it has: {', '.join(sorted(fields))})")
        elif not _fits(col.type, fields[name]):
            problems.append(f"columns.{name}: declared {col.type} but the file has {fields[name]}")
    return problems
