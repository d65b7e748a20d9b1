"""Table canonicalization: typed cells from the visible content, then a fresh file written from them.

CSV and TSV: decoded as UTF-8, invisible characters removed, parsed into typed cells (int, float,
text, empty), and written in ONE dialect: UTF-8 without byte-order mark, ``\\n`` line ends,
minimal quoting, every row as wide as the header. Numbers are written from their value (``repr``
of floats), so spelling a number differently carries nothing. Text cells that a spreadsheet would
run as a formula (leading ``=``, ``+``, ``-``, ``@``, tab or CR) are prefixed with ``'``; typed
numbers such as ``-3`` are numbers, not text, and stay as they are.

Parquet: read with pyarrow into the same typed cells and written again by pyarrow with a schema
built from the cells alone: no key-value metadata (file, schema or field), no Arrow schema blob.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter

from sandbox.errors import BadRequest
from sandbox.exports.canonical.text import clean, decode, invisible_result
from sandbox.exports.tables import Table, read_delimited, read_parquet

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
MAX_NAME = 200
LONG_CELL = 1000
DELIMITERS = {"csv": ",", "tsv": "\t"}


def neutralize(text: str) -> str:
    """A text cell that a spreadsheet would not evaluate."""
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def cell_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return neutralize(str(value))


def write_delimited(table: Table, delimiter: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow([neutralize(c) for c in table.columns])
    width = len(table.columns)
    for row in table.rows:
        cells = [cell_text(v) for v in row[:width]]
        writer.writerow(cells + [""] * (width - len(cells)))
    return out.getvalue().encode("utf-8")


def _arrow_type(values: list[object]):  # noqa: ANN202
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()


def write_parquet(table: Table) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields, arrays = [], []
    for i, name in enumerate(table.columns):
        values = [r[i] if i < len(r) else None for r in table.rows]
        typ = _arrow_type(values)
        if typ == pa.string():
            values = [None if v is None else str(v) for v in values]
        elif typ == pa.float64():
            values = [None if v is None else float(v) for v in values]  # type: ignore[arg-type]
        fields.append(pa.field(name, typ, nullable=True))
        arrays.append(pa.array(values, type=typ))
    fresh = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    sink = io.BytesIO()
    pq.write_table(fresh, sink, store_schema=False, compression="zstd", write_statistics=False)
    return sink.getvalue()


def _clean_table(table: Table, removed: Counter[str]) -> Table:
    columns = [clean(c, removed).strip() for c in table.columns]
    for c in columns:
        if len(c) > MAX_NAME:
            raise BadRequest(f"a column name is longer than {MAX_NAME} characters", code="bad_table")
    rows = [[clean(v, removed) if isinstance(v, str) else v for v in row] for row in table.rows]
    return Table(columns, rows, table.decimals)


def formula_result(table: Table) -> dict:
    from sandbox.exports.checks import result

    cells = [{"row": r, "column": table.columns[i], "reason": "starts like a spreadsheet formula; "
              "the released file prefixes it with '"}
             for r, row in enumerate(table.rows) for i, v in enumerate(row)
             if isinstance(v, str) and v.startswith(FORMULA_PREFIXES)]
    named = [c for c in table.columns if c.startswith(FORMULA_PREFIXES)]
    if not cells and not named:
        return result("canonical.formulas", "pass", "no cell starts like a spreadsheet formula")
    detail = f"{len(cells) + len(named)} cell(s) or column name(s) start like a spreadsheet formula " \
             "(=, +, -, @, tab, CR); neutralized with a leading ' in the released file"
    return result("canonical.formulas", "review", detail, cells[:200])


def long_cells_result(table: Table) -> dict:
    from sandbox.exports.checks import result

    cells = [{"row": r, "column": table.columns[i], "reason": f"{len(v):,} characters of text in one cell"}
             for r, row in enumerate(table.rows) for i, v in enumerate(row)
             if isinstance(v, str) and len(v) > LONG_CELL]
    if not cells:
        return result("canonical.long_cells", "pass", f"no text cell is longer than {LONG_CELL:,} characters")
    return result("canonical.long_cells", "review", f"{len(cells)} text cell(s) longer than {LONG_CELL:,} "
                  "characters: read them in full, a cell can carry a whole table", cells[:200])


def canonical_table(kind: str, data: bytes, max_rows: int | None = None) -> tuple[bytes, list[dict]]:
    """(canonical bytes, findings) of a csv, tsv or parquet file."""
    removed: Counter[str] = Counter()
    if kind == "parquet":
        table = _clean_table(read_parquet(data, max_rows), removed)
        return write_parquet(table), [invisible_result(removed), long_cells_result(table)]
    try:
        text = decode(data)
    except UnicodeDecodeError:
        raise BadRequest("the table is not UTF-8 text", code="bad_table") from None
    text = clean(text, removed)
    table = _clean_table(read_delimited(text, DELIMITERS[kind] if kind == "tsv" else None, max_rows), removed)
    findings = [invisible_result(removed), formula_result(table), long_cells_result(table)]
    return write_delimited(table, DELIMITERS[kind]), findings


def read_canonical(kind: str, data: bytes, max_rows: int | None = None) -> Table:
    """The table in canonical bytes, read in the one dialect they were written in (never sniffed)."""
    if kind == "parquet":
        return read_parquet(data, max_rows)
    return read_delimited(data.decode("utf-8"), DELIMITERS[kind], max_rows)
