"""Tables inside export files (CSV and Parquet) as plain Python values, for the checks and previews."""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from typing import SupportsFloat, cast

from sandbox.errors import BadRequest

INT_RE = re.compile(r"^[+-]?\d+$")
MAX_PARQUET_BYTES = 200_000_000  # uncompressed: a small file must not unpack into gigabytes
FLOAT_RE = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


@dataclass
class Table:
    """Column names, rows of Python values, and per cell the number of decimals written (CSV)."""

    columns: list[str]
    rows: list[list[object]]
    decimals: list[list[int | None]] = field(default_factory=list)

    def column(self, name: str) -> list[object]:
        i = self.columns.index(name)
        return [r[i] for r in self.rows]

    def is_numeric(self, name: str) -> bool:
        values = [v for v in self.column(name) if v is not None]
        return bool(values) and all(_is_number(v) for v in values)

    def is_integral(self, name: str) -> bool:
        values = [v for v in self.column(name) if v is not None]
        return self.is_numeric(name) and all(_integral(v) for v in values)


def _integral(v: object) -> bool:
    """An int, or a finite float with no fraction (NaN and infinities are not integral)."""
    return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v) and v.is_integer())


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_cell(text: str) -> tuple[object, int | None]:
    """A CSV cell as int, float, str or None, with the decimals it was written with."""
    t = text.strip()
    if t == "" or t.upper() in ("NA", "NAN", "NULL", "NONE"):
        return None, None
    if INT_RE.match(t):
        # beyond 2**53 an integer is no count or sum anyone published; keep it as text
        return (int(t), 0) if len(t.lstrip("+-")) <= 15 else (t, None)
    if FLOAT_RE.match(t):
        mantissa = t.split("e")[0].split("E")[0]
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        return float(t), decimals
    return text, None  # as written: canonicalization collapses its whitespace and flags the change


def read_csv(data: bytes, max_rows: int | None = None) -> Table:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest("the CSV file is not UTF-8 text", code="bad_table") from None
    return read_delimited(text, None, max_rows)


def read_delimited(text: str, delimiter: str | None = None, max_rows: int | None = None) -> Table:
    """Typed cells of delimited text; ``delimiter`` None sniffs one of ``,``, ``;`` and tab."""
    if delimiter is None:
        # only a delimiter the header line uses (the sniffer alone may pick a tab inside a quoted cell), and
        # the quote character is always '"' (a sniffed one would read a neutralized formula cell such as '=
        # as quoted, and the canonical file would not be a fixed point)
        header_line = text.split("\n", 1)[0]
        present = "".join(d for d in ",;\t" if d in header_line) or ","
        delimiter = present
        if len(present) > 1:
            try:
                delimiter = csv.Sniffer().sniff(text[:4096], delimiters=present).delimiter
            except csv.Error:
                delimiter = "," if "," in present else present[0]
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, quotechar='"', doublequote=True)
    try:
        header = next(reader)
    except StopIteration:
        return Table([], [], [])
    except csv.Error as exc:
        raise BadRequest(f"the CSV file cannot be read: {exc}", code="bad_table") from None
    columns = list(header)
    rows: list[list[object]] = []
    decimals: list[list[int | None]] = []
    try:
        for raw in reader:
            if not raw or all(not c.strip() for c in raw):
                continue
            cells = [parse_cell(c) for c in raw[: len(columns)]]
            cells += [(None, None)] * (len(columns) - len(cells))
            rows.append([c[0] for c in cells])
            decimals.append([c[1] for c in cells])
            if max_rows is not None and len(rows) > max_rows:
                break
    except csv.Error as exc:
        raise BadRequest(f"the CSV file cannot be read: {exc}", code="bad_table") from None
    return Table(columns, rows, decimals)


def read_parquet(data: bytes, max_rows: int | None = None) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(io.BytesIO(data))
        meta = pf.metadata
        unpacked = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if unpacked > MAX_PARQUET_BYTES:
            raise BadRequest(f"the Parquet file unpacks to {unpacked:,} bytes (cap {MAX_PARQUET_BYTES:,})",
                             code="bad_table")
        if max_rows is not None and meta.num_rows > max_rows:  # read no more than the caps need
            first = next(pf.iter_batches(batch_size=max_rows + 1), None)
            table = pa.Table.from_batches([first]) if first is not None else pf.read()
        else:
            table = pf.read()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise BadRequest(f"the Parquet file cannot be read: {exc}", code="bad_table") from None
    columns = [str(n) for n in table.column_names]
    pylists = [table.column(i).to_pylist() for i in range(table.num_columns)]
    rows = [[_plain(col[r]) for col in pylists] for r in range(table.num_rows)]
    decimals: list[list[int | None]] = [[None] * len(columns) for _ in rows]
    return Table(columns, rows, decimals)


def _plain(v: object) -> object:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int) and abs(v) > 2**53:
        return str(v)
    if v is None or isinstance(v, int | float | str):
        return v
    try:
        return float(cast(SupportsFloat, v))  # Decimal and friends
    except (TypeError, ValueError):
        return str(v)


def read_table(kind: str, data: bytes, max_rows: int | None = None) -> Table | None:
    """The table in a csv/parquet file, or None for other kinds."""
    if kind == "csv":
        return read_csv(data, max_rows)
    if kind == "parquet":
        return read_parquet(data, max_rows)
    return None
