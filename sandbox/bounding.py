"""The contribution bound: which rows of each privacy unit the engine file keeps.

The contribution bound depends only on each unit's own rows. A unit with at most
``k = max_rows_per_unit`` rows keeps them all; a unit with more keeps its k rows of
smallest ``HMAC-SHA256(key, json(unit id, the row's declared columns as read))`` (first
64 bits, as an integer). The HMAC is RFC 2104 written in SQL over DuckDB's ``sha256``
(checked against Python's ``hmac`` in the tests); the 32-byte key lives in the state
directory (``engine/bounding.key``, mode 0600), reaches the build child on its stdin and
is never written to the engine file. Why this is sound:

* *Only the unit's own rows.* The rows a unit keeps are a function of (key, its id, the
  multiset of its rows): nothing about other units, file positions or row groups enters.
  So for neighbours D and D minus one unit u, every other unit keeps exactly the same rows,
  and the engine files differ by u's at most k kept rows: the sensitivity the planner uses
  holds. (The old rule ranked by ``hash(file_row_number, salt)``: removing one person
  shifted every later position. DuckDB's ``hash`` is also not a keyed PRF.)
* *Not chosen by value.* Without the key the ranking is pseudo-random (HMAC is a PRF), so
  which rows are kept is independent of what an operator can ask about, and an operator
  cannot steer which of a unit's rows count.
* *Ties.* Two rows with the same message are the same declared values, hence identical
  rows of the engine table: whichever is kept, the file is the same. The JSON encoding is
  unambiguous, so different rows never share a message; a 64-bit prefix collision between
  two different rows of one unit has probability about k^2 / 2^65.

How it is computed, and why that keeps the argument (issue 13: 100 million rows in bounded
memory). The per-unit row count is a ``GROUP BY`` of the unit (which spills well), not a window;
a unit with one row keeps it without being hashed or ranked; only the rows of units with several
rows are hashed and ranked (``row_number()`` over the unit, by the PRF). Every one of these steps
reads the unit's own rows only. The build runs this query once per *partition* of the units: the
rows are first written, as read, to ``P`` Parquet files by ``hash(unit id) % P`` (DuckDB's hash of
the id alone: every row of a unit lands in the same partition), then each partition is bounded on
its own and appended. So a unit's kept rows are the same whatever ``P`` is (``P`` grows with the
file, i.e. with other units, which therefore must not matter, and does not): the partition is a
function of the unit's id, and inside it the rule above sees that unit's rows only. The staged
rows always go through the same Parquet round trip, even when ``P == 1``, so the message a row is
hashed from never depends on ``P`` either. Each pass holds about ``1/P`` of the rows.

The SQL is built as sqlglot syntax trees (never by pasting text) and rendered for DuckDB.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import sqlglot
from sqlglot import exp

from sandbox.errors import SandboxError
from sandbox.policy.models import RESERVED_COLUMNS, RESERVED_PREFIXES, Dataset

KEY_FILE = "bounding.key"
KEY_BYTES = 32
DIALECT = "duckdb"

# internal columns of the engine table (the ``__`` prefix is reserved: no catalog may declare it)
UNIT_FIRST = "__unit_first"  # per kept row: is it its unit's representative row? (COUNT(DISTINCT unit))
UNIT_KEY = "__unit"  # keyed hash of the unit id (never the id): joins of two datasets on their unit
ROW_KEY = "__row"  # the row's PRF value (0 for a unit's only row): the order a unit join bounds in
# names used inside the bounding query only
_COUNT, _ORDER, _RANK, _SRC, _UNITS, _ID = "__n", "__o", "__rank", "__src", "__units", "__id"
PARTITION = "__p"  # the staged rows' partition column (a directory name of the stage, not a column)


def load_or_create_key(path: Path) -> bytes:
    """A 32-byte secret in ``path`` (created with mode 0600 if missing, atomically: a racing
    process either links its complete key first or reads the winner's)."""
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(KEY_BYTES))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise SandboxError(f"{path.name}: the bounding key must be {KEY_BYTES} bytes", code="bad_key")
    return key


def value_column(name: str) -> str:
    return f"__v_{name}"


def quote(name: str) -> str:
    """A quoted identifier as text (for the engine SQL still built from text elsewhere)."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str | int | float) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


# -- syntax-tree helpers --------------------------------------------------------------------------
def render(node: exp.Expr, *, pretty: bool = False) -> str:
    return node.sql(dialect=DIALECT, pretty=pretty)


def ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def col(name: str, table: str | None = None) -> exp.Column:
    return exp.Column(this=ident(name), table=ident(table) if table else None)


def call(name: str, *args: exp.Expr) -> exp.Expr:
    return exp.Anonymous(this=name, expressions=list(args))


def num(value: int | float) -> exp.Expr:
    return exp.Literal.number(repr(float(value)) if isinstance(value, float) else str(int(value)))


def text(value: str) -> exp.Literal:
    return exp.Literal.string(value)


def sql_type(name: str) -> exp.DataType:
    return exp.DataType.build(name, dialect=DIALECT)


def cast(node: exp.Expr, to: str, *, safe: bool = False) -> exp.Expr:
    return (exp.TryCast if safe else exp.Cast)(this=node, to=sql_type(to))


def alias(node: exp.Expr, name: str) -> exp.Alias:
    return exp.Alias(this=node, alias=ident(name))


def concat(*parts: exp.Expr) -> exp.Expr:
    out = parts[0]
    for part in parts[1:]:
        out = exp.DPipe(this=out, expression=part, safe=True)
    return out


def parquet(files: Path | str | Sequence[Path | str]) -> exp.Table:
    """``read_parquet(...)`` over one file or a list of files, as a FROM item."""
    if isinstance(files, Path | str):
        arg: exp.Expr = text(str(files))
    else:
        arg = exp.Array(expressions=[text(str(f)) for f in files])
    return exp.Table(this=call("read_parquet", arg))


def _blob(data: bytes) -> exp.Expr:
    return cast(text("".join(f"\\x{b:02X}" for b in data)), "BLOB")


# -- the keyed PRF ----------------------------------------------------------------------------------
def hmac_expr(key: bytes, message: exp.Expr) -> exp.Expr:
    """HMAC-SHA256(key, message) (RFC 2104 over DuckDB's ``sha256``), lowercase hex."""
    if len(key) != KEY_BYTES:
        raise SandboxError("the bounding key must be 32 bytes", code="bad_key")
    padded = key.ljust(64, b"\0")
    ipad = bytes(b ^ 0x36 for b in padded)
    opad = bytes(b ^ 0x5C for b in padded)
    inner = call("unhex", call("sha256", concat(_blob(ipad), call("encode", message))))
    return call("sha256", concat(_blob(opad), inner))


def hmac_sql(key: bytes, message_sql: str) -> str:
    """:func:`hmac_expr` over a message given as SQL text (e.g. ``?``), rendered."""
    return render(hmac_expr(key, sqlglot.parse_one(message_sql, read=DIALECT)))


def prf64(key: bytes, message: exp.Expr) -> exp.Expr:
    """The first 64 bits of HMAC-SHA256(key, message), as an integer."""
    return cast(concat(text("0x"), call("left", hmac_expr(key, message), num(16))), "UBIGINT")


def unit_text(ds: Dataset) -> exp.Expr:
    """The unit id as text, trimmed: what ``__unit`` and the unit-id table hash."""
    return exp.Trim(this=cast(col(ds.privacy_unit), "VARCHAR"))


def unit_key(ds: Dataset, key: bytes) -> exp.Expr:
    """``__unit``: the PRF of ``'unit:' || id`` (a prefix no row message has: those are JSON)."""
    return prf64(key, concat(text("unit:"), unit_text(ds)))


def row_message(ds: Dataset) -> exp.Expr:
    """An unambiguous encoding of (unit id, the row's declared columns as read): JSON of a struct."""
    fields = [exp.PropertyEQ(this=exp.to_identifier("u"), expression=cast(col(ds.privacy_unit), "VARCHAR"))]
    fields += [exp.PropertyEQ(this=exp.to_identifier(f"c{i}"), expression=col(name))
               for i, name in enumerate(ds.columns) if name != ds.privacy_unit]
    return call("to_json", call("struct_pack", *fields))


def reserved_names_in(names: list[str]) -> list[str]:
    """The names of a source file's schema that the engine reserves (refused at validate and build)."""
    return [n for n in names if n.lower() in RESERVED_COLUMNS or n.startswith(RESERVED_PREFIXES)]


# -- the engine table's columns ---------------------------------------------------------------------
def select_list(ds: Dataset) -> list[exp.Expr]:
    """The declared columns as the engine carries them (ids dropped), numbers also clamped in fixed point."""
    items: list[exp.Expr] = []
    for name, column in ds.columns.items():
        if column.type == "id":
            continue
        if column.type in ("category", "text"):
            items.append(alias(cast(col(name), "VARCHAR"), name))
            continue
        raw = cast(col(name), "DOUBLE", safe=True)
        shown = cast(exp.Round(this=raw.copy()), "BIGINT", safe=True) if column.type == "int" else raw.copy()
        items.append(alias(shown, name))
        if column.bounds is None:  # an int without bounds: a key only (no sums, so no fixed point)
            continue
        low, high = column.bounds
        lo_fixed, hi_fixed = column.fixed_bounds
        # clamp in DOUBLE first (so the cast cannot overflow), then in the integer range the
        # planner's sensitivity is computed from; NULL stays NULL (GREATEST would drop it)
        # (DuckDB's GREATEST/LEAST as such: sqlglot's own nodes would add NULL handling around them)
        in_bounds = call("least", call("greatest", raw.copy(), num(float(low))), num(float(high)))
        clamped = cast(exp.Round(this=exp.Mul(this=in_bounds, expression=num(column.factor))), "BIGINT")
        fixed = call("least", call("greatest", clamped, num(lo_fixed)), num(hi_fixed))
        case = exp.Case(ifs=[exp.If(this=exp.Is(this=raw.copy(), expression=exp.Null()), true=exp.Null())],
                        default=fixed)
        items.append(alias(case, value_column(name)))
    return items


def _declared(ds: Dataset) -> list[exp.Expr]:
    """Only the declared columns (the unit among them), never ``*``: no column of the file can
    shadow an internal name (files with reserved names are refused before this, too)."""
    return [col(name) for name in ds.columns]


def _unit_not_null(ds: Dataset) -> exp.Expr:
    return exp.Not(this=exp.Is(this=col(ds.privacy_unit), expression=exp.Null()))


def bounded_rows(ds: Dataset, source: Path | str | Sequence[Path | str], key: bytes) -> exp.Query:
    """Each unit keeps its ``max_rows_per_unit`` rows of smallest PRF value (see the module docstring).

    Also written per row: ``__unit_first`` (the unit's kept row of smallest PRF value, its
    representative for counting units), ``__unit`` (HMAC of the unit id under the same key,
    so two datasets' rows of one unit meet in a join without the id) and ``__row`` (the PRF
    value that orders the unit's rows, 0 when the unit has one row).
    """
    if ds.privacy_unit == "row":
        return exp.select(*select_list(ds), alias(exp.true(), UNIT_FIRST)).from_(parquet(source))
    unit = ds.privacy_unit
    src = exp.select(*_declared(ds)).from_(parquet(source)).where(_unit_not_null(ds))
    units = (exp.select(col(unit), alias(exp.Count(this=exp.Star()), _COUNT), alias(unit_key(ds, key), UNIT_KEY))
             .from_(_SRC).group_by(col(unit)))

    def joined(condition: exp.Expr) -> exp.Select:  # the unit's rows with its count and keyed hash
        return (exp.select(*_declared(ds), col(UNIT_KEY)).from_(_SRC).join(_UNITS, using=[ident(unit)])
                .where(condition))

    # a unit with one row keeps it: no hash, no rank
    single = exp.select(*select_list(ds), alias(exp.true(), UNIT_FIRST), col(UNIT_KEY),
                        alias(cast(num(0), "UBIGINT"), ROW_KEY)).from_(
        joined(exp.EQ(this=col(_COUNT), expression=num(1))).subquery("s"))
    # a unit with several rows: its rows by PRF value, the first k kept
    hashed = exp.select(*_declared(ds), col(UNIT_KEY), alias(prf64(key, row_message(ds)), _ORDER)).from_(
        joined(exp.GT(this=col(_COUNT), expression=num(1))).subquery("m"))
    rank = exp.Window(this=call("row_number"), partition_by=[col(unit)],
                      order=exp.Order(expressions=[exp.Ordered(this=col(_ORDER))]))
    ranked = exp.select(*_declared(ds), col(UNIT_KEY), col(_ORDER), alias(rank, _RANK)).from_(hashed.subquery("h"))
    several = (exp.select(*select_list(ds), alias(exp.EQ(this=col(_RANK), expression=num(1)), UNIT_FIRST),
                          col(UNIT_KEY), alias(col(_ORDER), ROW_KEY))
               .from_(ranked.subquery("r")).where(exp.LTE(this=col(_RANK), expression=num(ds.max_rows_per_unit))))
    query = exp.union(single, several, distinct=False)
    return query.with_(_SRC, as_=src).with_(_UNITS, as_=units)


def bounded_rows_sql(ds: Dataset, source: Path | str | Sequence[Path | str], key: bytes) -> str:
    return render(bounded_rows(ds, source, key))


def unit_ids(ds: Dataset, source: Path | str | Sequence[Path | str], ids_key: bytes) -> exp.Query:
    """The keyed hashes ``h`` of the distinct (trimmed) unit ids, for the export identifier check."""
    distinct = exp.select(alias(unit_text(ds), _ID)).distinct().from_(parquet(source)).where(_unit_not_null(ds))
    return exp.select(alias(hmac_expr(ids_key, col(_ID)), "h")).from_(distinct.subquery("d"))


def stage(ds: Dataset, source: Path | str, target: Path, parts: int) -> exp.Copy:
    """Copy the declared columns of the rows with a unit, as read, into ``parts`` Parquet partitions
    by ``hash(unit) % parts`` (directories ``<target>/__p=<i>/``)."""
    partition = exp.Mod(this=call("hash", col(ds.privacy_unit)), expression=num(parts))
    rows = exp.select(*_declared(ds), alias(partition, PARTITION)).from_(parquet(source)).where(_unit_not_null(ds))
    return exp.Copy(
        this=rows.subquery(), kind=False, files=[text(str(target))],
        params=[exp.CopyParameter(this=exp.var("FORMAT"), expression=exp.var("parquet")),
                exp.CopyParameter(this=exp.var("PARTITION_BY"), expression=exp.Paren(this=col(PARTITION)))],
    )
