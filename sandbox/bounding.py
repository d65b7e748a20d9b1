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
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from sandbox.errors import SandboxError
from sandbox.policy.models import RESERVED_COLUMNS, RESERVED_PREFIXES, Dataset

KEY_FILE = "bounding.key"
KEY_BYTES = 32


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
    return '"' + name.replace('"', '""') + '"'


def literal(value: str | int | float) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def _select_list(ds: Dataset) -> list[str]:
    items = []
    for name, col in ds.columns.items():
        if col.type == "id":
            continue
        if col.type in ("category", "text"):
            items.append(f"CAST({quote(name)} AS VARCHAR) AS {quote(name)}")
            continue
        raw = f"TRY_CAST({quote(name)} AS DOUBLE)"
        shown = f"TRY_CAST(ROUND({raw}) AS BIGINT)" if col.type == "int" else raw
        items.append(f"{shown} AS {quote(name)}")
        if col.bounds is None:  # an int without bounds: a key only (no sums, so no fixed point)
            continue
        low, high = col.bounds
        lo_fixed, hi_fixed = col.fixed_bounds
        # clamp in DOUBLE first (so the cast cannot overflow), then in the integer range the
        # planner's sensitivity is computed from; NULL stays NULL (GREATEST would drop it)
        in_bounds = f"LEAST(GREATEST({raw}, {literal(float(low))}), {literal(float(high))})"
        clamped = f"CAST(ROUND({in_bounds} * {col.factor}) AS BIGINT)"
        fixed = f"LEAST(GREATEST({clamped}, {lo_fixed}), {hi_fixed})"
        items.append(f"CASE WHEN {raw} IS NULL THEN NULL ELSE {fixed} END AS {quote(value_column(name))}")
    return items


def _blob(data: bytes) -> str:
    return "'" + "".join(f"\\x{b:02X}" for b in data) + "'::BLOB"


def hmac_sql(key: bytes, message_sql: str) -> str:
    """HMAC-SHA256(key, message) as DuckDB SQL (RFC 2104 over DuckDB's ``sha256``), lowercase hex."""
    if len(key) != KEY_BYTES:
        raise SandboxError("the bounding key must be 32 bytes", code="bad_key")
    padded = key.ljust(64, b"\0")
    ipad = bytes(b ^ 0x36 for b in padded)
    opad = bytes(b ^ 0x5C for b in padded)
    inner = f"unhex(sha256({_blob(ipad)} || encode({message_sql})))"
    return f"sha256({_blob(opad)} || {inner})"


def _row_message_sql(ds: Dataset) -> str:
    """An unambiguous encoding of (unit id, the row's declared columns as read): JSON of a struct."""
    fields = [f"u := CAST({quote(ds.privacy_unit)} AS VARCHAR)"]
    fields += [f"c{i} := {quote(name)}" for i, name in enumerate(ds.columns) if name != ds.privacy_unit]
    return f"to_json(struct_pack({', '.join(fields)}))"


# internal columns of the engine table (the ``__`` prefix is reserved: no catalog may declare it)
UNIT_FIRST = "__unit_first"  # per kept row: is it its unit's representative row? (COUNT(DISTINCT unit))
UNIT_KEY = "__unit"  # keyed hash of the unit id (never the id): joins of two datasets on their unit
ROW_KEY = "__row"  # the row's PRF value (0 for a unit's only row): the order a unit join bounds in


def _prf64(key: bytes, message_sql: str) -> str:
    """The first 64 bits of HMAC-SHA256(key, message), as an integer."""
    return f"CAST('0x' || left({hmac_sql(key, message_sql)}, 16) AS UBIGINT)"


def reserved_names_in(names: list[str]) -> list[str]:
    """The names of a source file's schema that the engine reserves (refused at validate and build)."""
    return [n for n in names if n.lower() in RESERVED_COLUMNS or n.startswith(RESERVED_PREFIXES)]


def bounded_rows_sql(ds: Dataset, source: Path, key: bytes) -> str:
    """Each unit keeps its ``max_rows_per_unit`` rows of smallest PRF value (see the module docstring).

    Also written per row: ``__unit_first`` (the unit's kept row of smallest PRF value, its
    representative for counting units), ``__unit`` (HMAC of the unit id under the same key,
    so two datasets' rows of one unit meet in a join without the id) and ``__row`` (the PRF
    value that orders the unit's rows, 0 when the unit has one row).
    """
    src = f"read_parquet({literal(str(source))})"
    cols = ", ".join(_select_list(ds))
    if ds.privacy_unit == "row":
        return f"SELECT {cols}, TRUE AS {quote(UNIT_FIRST)} FROM {src}"
    unit = quote(ds.privacy_unit)
    # the first 64 bits of the HMAC, as an integer: a compact sort key (a tie between two
    # different rows of one unit has probability about k^2 / 2^65)
    prf = _prf64(key, _row_message_sql(ds))
    k = ds.max_rows_per_unit
    # single-row units need no order, so only the rows of units with several rows are hashed
    order = f"CASE WHEN __n > 1 THEN {prf} ELSE 0 END"
    rank = f"row_number() OVER (PARTITION BY {unit} ORDER BY {order})"
    unit_key = _prf64(key, f"'unit:' || TRIM(CAST({unit} AS VARCHAR))")  # a prefix no row message has
    extra = f"{rank} = 1 AS {quote(UNIT_FIRST)}, {unit_key} AS {quote(UNIT_KEY)}, {order} AS {quote(ROW_KEY)}"
    # only the declared columns (the unit among them) and the window: never ``*``, so no column
    # of the file can shadow ``__n`` (files with reserved names are refused before this, too)
    declared = ", ".join(quote(name) for name in ds.columns)
    return (
        f"SELECT {cols}, {extra} FROM (SELECT {declared}, count(*) OVER (PARTITION BY {unit}) AS __n FROM {src} "
        f"WHERE {unit} IS NOT NULL) QUALIFY {rank} <= {k}"
    )
