"""Table canonicalization: typed cells from the visible content, then a fresh file written from them.

CSV and TSV: decoded as UTF-8, invisible characters removed, parsed into typed cells (int, float,
text, empty), and written in ONE dialect: UTF-8 without byte-order mark, ``\\n`` line ends,
minimal quoting, every row as wide as the header. Numbers are written from their value (``repr``
of floats), so spelling a number differently carries nothing. Text cells that a spreadsheet would
run as a formula (leading ``=``, ``+``, ``-``, ``@``, tab or CR) are prefixed with ``'``; typed
numbers such as ``-3`` are numbers, not text, and stay as they are.

Whitespace: inside a cell (and a column name) every run of whitespace (spaces, tabs, newlines,
and the other Unicode spaces) becomes one space and the ends are stripped, in CSV, TSV and
Parquet alike: the HTML preview shows a run as one space, so the run was never seen and could
carry bits. Changed cells are flagged (``canonical.whitespace``).

Floats: NaN and ±infinity become empty cells (a NaN's 51 payload bits carried ids in the review)
and every float is rounded to ``FLOAT_DIGITS`` significant digits (and -0.0 is 0.0), so neither
payload bits nor low-order digits beyond what a reviewer reads carry anything. Both are reported
in ``canonical.numbers`` (``review`` when a non-finite value was dropped).

Parquet: read with pyarrow into the same typed cells and written again by pyarrow with a schema
built from the cells alone: no key-value metadata (file, schema or field), no Arrow schema blob.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from typing import TYPE_CHECKING, Any, SupportsFloat, cast

from sandbox.errors import BadRequest
from sandbox.exports.canonical.text import clean, decode, invisible_result, mark_stacks, marks_result
from sandbox.exports.tables import Table, read_delimited, read_parquet

if TYPE_CHECKING:
    import pyarrow as pa

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
MAX_NAME = 200
LONG_CELL = 1000
DELIMITERS = {"csv": ",", "tsv": "\t"}
FLOAT_DIGITS = 12
WHITESPACE = re.compile(r"\s+")  # Unicode whitespace: also NBSP, U+2000-200A, U+2028/2029, U+3000


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


def _arrow_type(values: list[object]) -> pa.DataType:
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
            values = [None if v is None else float(cast(SupportsFloat, v)) for v in values]  # _arrow_type: numbers only
        fields.append(pa.field(name, typ, nullable=True))
        arrays.append(pa.array(values, type=typ))
    fresh = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    sink = io.BytesIO()
    pq.write_table(fresh, sink, store_schema=False, compression="zstd", write_statistics=False)
    return sink.getvalue()


def squeeze(text: str) -> str:
    """A cell as the preview shows it: whitespace runs as one space, no leading or trailing space."""
    return WHITESPACE.sub(" ", text).strip()


def canonical_float(v: float, numbers: Counter[str]) -> float | None:
    """A finite float rounded to ``FLOAT_DIGITS`` significant digits; None for NaN and infinities."""
    if not math.isfinite(v):
        numbers["non-finite (NaN or infinity) released as an empty cell"] += 1
        return None
    out = float(f"{v:.{FLOAT_DIGITS}g}") + 0.0  # + 0.0: -0.0 becomes 0.0
    if out != v or math.copysign(1.0, v) != math.copysign(1.0, out):
        numbers[f"rounded to {FLOAT_DIGITS} significant digits"] += 1
    return out


def numbers_result(numbers: Counter[str]) -> dict[str, Any]:
    from sandbox.exports.checks import result

    detail = "; ".join(f"{n:,} float(s) {what}" for what, n in numbers.items())
    if any(what.startswith("non-finite") for what in numbers):
        return result("canonical.numbers", "review", detail + ": NaN and infinity carry no visible value "
                      "(a NaN can carry 51 hidden bits), ask the requester why they are there", changes=dict(numbers))
    return result("canonical.numbers", "pass", detail or "every number is finite", changes=dict(numbers))


def _clean_table(table: Table, removed: Counter[str], changed: list[dict[str, Any]], numbers: Counter[str]) -> Table:
    """Invisible characters removed (counted in ``removed``), whitespace squeezed (cells that
    changed are appended to ``changed``) in column names and text cells, floats made canonical
    (counted in ``numbers``)."""
    columns = []
    for c in table.columns:
        name = squeeze(clean(c, removed, line_sep=" "))
        if len(name) > MAX_NAME:
            raise BadRequest(f"a column name is longer than {MAX_NAME} characters", code="bad_table")
        if name != c.strip():
            changed.append({"column": name, "reason": "whitespace inside the column name squeezed to one space"})
        columns.append(name)
    check_column_names(columns)
    rows = []
    for r, row in enumerate(table.rows):
        out = []
        for i, v in enumerate(row):
            if isinstance(v, float):
                v = canonical_float(v, numbers)
            elif isinstance(v, str):
                text = clean(v, removed, line_sep=" ")
                v = squeeze(text)
                if v != text and len(changed) < 10_000:
                    changed.append({"row": r, "column": columns[i] if i < len(columns) else str(i),
                                    "reason": "whitespace runs or leading/trailing whitespace removed"})
                v = v or None
            out.append(v)
        rows.append(out)
    return Table(columns, rows, table.decimals)


def check_column_names(columns: list[str]) -> None:
    """Every column has a name of its own: checks find a column by name, so a second column of the
    same name (or one without a name) would be a column no check looks at."""
    empty = [i + 1 for i, c in enumerate(columns) if not c]
    if empty:
        raise BadRequest(f"column {empty[0]} has no name (every column needs one; pandas writes its index as an "
                         "unnamed column: use index=False)", code="bad_table")
    seen: set[str] = set()
    for i, c in enumerate(columns):
        if c in seen:
            raise BadRequest(f"column {i + 1} has the same name as an earlier column (after whitespace is "
                             "squeezed): every column needs a name of its own", code="bad_table")
        seen.add(c)


def whitespace_result(changed: list[dict[str, Any]]) -> dict[str, Any]:
    from sandbox.exports.checks import result

    if not changed:
        return result("canonical.whitespace", "pass", "no cell had whitespace runs or padding")
    return result("canonical.whitespace", "review", f"{len(changed):,} cell(s) or column name(s) had runs of "
                  "whitespace or padding (invisible in the preview); the released file has one space",
                  changed[:200])


def formula_result(table: Table) -> dict[str, Any]:
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


def long_cells_result(table: Table) -> dict[str, Any]:
    from sandbox.exports.checks import result

    cells = [{"row": r, "column": table.columns[i], "reason": f"{len(v):,} characters of text in one cell"}
             for r, row in enumerate(table.rows) for i, v in enumerate(row)
             if isinstance(v, str) and len(v) > LONG_CELL]
    if not cells:
        return result("canonical.long_cells", "pass", f"no text cell is longer than {LONG_CELL:,} characters")
    return result("canonical.long_cells", "review", f"{len(cells)} text cell(s) longer than {LONG_CELL:,} "
                  "characters: read them in full, a cell can carry a whole table", cells[:200])


def _marks(table: Table) -> dict[str, Any]:
    return marks_result(sum(mark_stacks(v) for v in table.columns)
                        + sum(mark_stacks(v) for row in table.rows for v in row if isinstance(v, str)))


def canonical_table(kind: str, data: bytes, max_rows: int | None = None) -> tuple[bytes, list[dict[str, Any]]]:
    """(canonical bytes, findings) of a csv, tsv or parquet file."""
    removed: Counter[str] = Counter()
    changed: list[dict[str, Any]] = []
    numbers: Counter[str] = Counter()
    if kind == "parquet":
        table = _clean_table(read_parquet(data, max_rows), removed, changed, numbers)
        return write_parquet(table), [invisible_result(removed), whitespace_result(changed),
                                      numbers_result(numbers), _marks(table), long_cells_result(table)]
    try:
        text = decode(data)
    except UnicodeDecodeError:
        raise BadRequest("the table is not UTF-8 text", code="bad_table") from None
    text = clean(text, removed, line_sep=" ")  # a separator inside a cell is no row break
    table = _clean_table(read_delimited(text, DELIMITERS[kind] if kind == "tsv" else None, max_rows), removed,
                         changed, numbers)
    findings = [invisible_result(removed), whitespace_result(changed), numbers_result(numbers),
                _marks(table), formula_result(table), long_cells_result(table)]
    return write_delimited(table, DELIMITERS[kind]), findings


def read_canonical(kind: str, data: bytes, max_rows: int | None = None) -> Table:
    """The table in canonical bytes, read in the one dialect they were written in (never sniffed)."""
    if kind == "parquet":
        return read_parquet(data, max_rows)
    return read_delimited(data.decode("utf-8"), DELIMITERS[kind], max_rows)
