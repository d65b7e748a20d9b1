"""The Spark engine's SQL: the DuckDB engine's query SQL transpiled, and the contribution bound in Spark SQL.

Queries: :func:`to_spark` transpiles what :mod:`sandbox.engine_sql` builds from the plan (sqlglot,
``read="duckdb", write="spark"``) and patches what does not carry the same meaning in Spark:

* ``TRY(p)`` (the operator's predicate, never failing on some rows only) has no Spark form. The
  Spark session runs with ANSI mode off, where a cast that fails is NULL; arithmetic on the
  predicate's DOUBLEs then raises only for a division by zero, which is NULL in Spark but
  ±inf/NaN in DuckDB: each ``a / b`` under it becomes IEEE division (:data:`_IEEE_DIV`, a lambda
  so that each operand is evaluated once), and the TRY is dropped.
* ``SUM(x)``: Spark sums BIGINT into BIGINT (DuckDB into HUGEINT): summed as DECIMAL(38,0), exact.
* ``FLOOR(x)`` of a DOUBLE is BIGINT in Spark (it saturates), DOUBLE in DuckDB: kept a DOUBLE.
* A literal with a fraction (``2.5``) is DECIMAL in both, but DuckDB divides BIGINT by DECIMAL
  in DOUBLE: it is made a DOUBLE.
* ``__row`` and ``__unit`` hold the 64 bits of DuckDB's UBIGINT in a signed BIGINT (Spark has no
  unsigned type): same bits for XOR and equality; a window ordered by them orders by the value
  with its sign bit flipped, which sorts like the unsigned value.

Build: :func:`bounded_rows_spark` is ``sandbox.bounding.bounded_rows_sql`` in Spark SQL. The HMAC
reads its key pads from a one-row view (``__pads``), never from the SQL text, so no error text or
query plan printed by Spark carries the key.
"""

from __future__ import annotations

from typing import cast

from sqlglot import exp, parse_one

from sandbox.bounding import ROW_KEY, UNIT_FIRST, UNIT_KEY, select_list
from sandbox.bounding import literal as _lit
from sandbox.policy.models import Dataset

PADS_VIEW = "__pads"
SIGN_BIT = "shiftleft(CAST(1 AS BIGINT), 63)"
_IEEE_DIV = (
    "transform(array(named_struct('a', {a}, 'b', {b})), __d -> CASE "
    "WHEN __d.b <> 0 OR __d.b IS NULL OR __d.a IS NULL THEN __d.a / __d.b "
    "WHEN isnan(__d.a) OR __d.a = 0 THEN CAST('NaN' AS DOUBLE) "
    "WHEN (__d.a > 0) = startswith(CAST(__d.b AS STRING), '-') THEN CAST('-Infinity' AS DOUBLE) "
    "ELSE CAST('Infinity' AS DOUBLE) END)[0]"
)
# doubles of this magnitude are whole numbers already (and NaN or inf stay as they are)
_FLOOR = "CASE WHEN isnan({x}) OR abs({x}) >= 4503599627370496 THEN {x} ELSE CAST(FLOOR({x}) AS DOUBLE) END"


def quote(name: str) -> str:
    """A Spark identifier."""
    return "`" + name.replace("`", "``") + "`"


def _spark(node: exp.Expression) -> str:
    return node.sql(dialect="spark")


def _parse(sql: str, dialect: str = "spark") -> exp.Expression:
    return cast("exp.Expression", parse_one(sql, read=dialect))


def _post_order(tree: exp.Expression, kind: type[exp.Expression]) -> list[exp.Expression]:
    """Nodes of ``kind``, each after its descendants (so an outer node is rewritten over rewritten inner ones)."""
    return list(reversed(list(tree.find_all(kind))))


def _patch_try(tree: exp.Expression) -> None:
    for node in _post_order(tree, exp.Try):
        inner = node.this
        for div in _post_order(inner, exp.Div):
            replacement = _parse(_IEEE_DIV.format(a=_spark(div.this), b=_spark(div.expression)))
            if div is inner:
                inner = replacement
            else:
                div.replace(replacement)
        node.replace(exp.paren(inner, copy=False))


def _patch_values(tree: exp.Expression) -> None:
    for node in _post_order(tree, exp.Floor):
        if node.args.get("decimals") is None:
            node.replace(_parse(_FLOOR.format(x=_spark(node.this))))
    for lit in list(tree.find_all(exp.Literal)):
        text = str(lit.this)
        if not lit.is_string and any(c in text for c in ".eE") and not isinstance(lit.parent, exp.Cast):
            lit.replace(exp.cast(lit.copy(), "DOUBLE"))
    for agg in list(tree.find_all(exp.Sum)):
        agg.set("this", exp.cast(agg.this, exp.DataType.build("DECIMAL(38, 0)")))


def _patch_window_order(tree: exp.Expression) -> None:
    for window in tree.find_all(exp.Window):
        order = window.args.get("order")
        for item in order.expressions if order is not None else []:
            if any(c.name in (ROW_KEY, UNIT_KEY) for c in item.this.find_all(exp.Column)):
                item.set("this", exp.BitwiseXor(this=exp.paren(item.this), expression=_parse(SIGN_BIT)))


def to_spark(duckdb_sql: str) -> str:
    """The engine's DuckDB SQL (from :mod:`sandbox.engine_sql`) as Spark SQL of the same meaning."""
    tree = _parse(duckdb_sql, "duckdb")
    _patch_try(tree)
    _patch_values(tree)
    _patch_window_order(tree)
    return _spark(tree)


# -- the contribution bound -------------------------------------------------------------------------


def hmac_spark(message_sql: str, pads: str = "") -> str:
    """HMAC-SHA256 as Spark SQL (RFC 2104 over ``sha2``), lowercase hex; the key pads are the columns
    ``__ipad<pads>`` and ``__opad<pads>`` of the row the query is joined with (:data:`PADS_VIEW`)."""
    inner = f"unhex(sha2(concat(__ipad{pads}, CAST({message_sql} AS BINARY)), 256))"
    return f"sha2(concat(__opad{pads}, {inner}), 256)"


def prf64_spark(message_sql: str) -> str:
    """The first 64 bits of the HMAC, as a BIGINT holding the bits of DuckDB's UBIGINT."""
    return f"CAST(conv(substr({hmac_spark(message_sql)}, 1, 16), 16, -10) AS BIGINT)"


def row_message_spark(ds: Dataset) -> str:
    """``bounding._row_message_sql`` in Spark: JSON of (unit id, the row's declared columns as read),
    NULLs written (``ignoreNullFields`` off). Strings, whole numbers and short decimals are written
    as DuckDB writes them; other doubles, dates and times may be written differently (README)."""
    fields = [f"'u', CAST({quote(ds.privacy_unit)} AS STRING)"]
    fields += [f"'c{i}', {quote(name)}" for i, name in enumerate(ds.columns) if name != ds.privacy_unit]
    return f"to_json(named_struct({', '.join(fields)}), map('ignoreNullFields', 'false'))"


def select_list_spark(ds: Dataset) -> list[str]:
    """The engine table's declared columns (cast, clamped, fixed point): bounding's own list, transpiled."""
    out = []
    for item in select_list(ds):
        tree = _parse(item.sql(dialect="duckdb"), "duckdb")
        _patch_values(tree)
        out.append(_spark(tree))
    return out


def bounded_rows_spark(ds: Dataset, source_view: str) -> str:
    """Spark SQL of the engine table of ``ds`` over the view ``source_view`` (its Parquet), joined
    with :data:`PADS_VIEW`: each unit keeps its ``max_rows_per_unit`` rows of smallest PRF value,
    with ``__unit_first``, ``__unit`` and ``__row`` as in :func:`sandbox.bounding.bounded_rows_sql`."""
    src = quote(source_view)
    cols = ", ".join(select_list_spark(ds))
    if ds.privacy_unit == "row":
        return f"SELECT {cols}, TRUE AS {quote(UNIT_FIRST)} FROM {src}"
    unit = quote(ds.privacy_unit)
    declared = ", ".join(quote(name) for name in ds.columns)
    order = f"CASE WHEN __n > 1 THEN {prf64_spark(row_message_spark(ds))} ELSE CAST(0 AS BIGINT) END"
    unit_key = prf64_spark(f"concat('unit:', trim(CAST({unit} AS STRING)))")
    counted = f"SELECT {declared}, count(*) OVER (PARTITION BY {unit}) AS __n FROM {src} WHERE {unit} IS NOT NULL"
    keyed = (f"SELECT {declared}, {order} AS {quote(ROW_KEY)}, {unit_key} AS {quote(UNIT_KEY)} "
             f"FROM ({counted}) AS c CROSS JOIN {quote(PADS_VIEW)}")
    ranked = (f"SELECT *, row_number() OVER (PARTITION BY {unit} ORDER BY {quote(ROW_KEY)} ^ {SIGN_BIT}) AS __rank "
              f"FROM ({keyed}) AS k")
    return (f"SELECT {cols}, __rank = 1 AS {quote(UNIT_FIRST)}, {quote(UNIT_KEY)}, {quote(ROW_KEY)} "
            f"FROM ({ranked}) AS r WHERE __rank <= {ds.max_rows_per_unit}")


def unit_ids_spark(ds: Dataset, source_view: str) -> str:
    """The keyed hashes of the unit ids (``__ids_<dataset>``), under the ids key (pads ``__ipad_ids``...)."""
    unit = quote(ds.privacy_unit)
    h = hmac_spark(f"trim(CAST({unit} AS STRING))", pads="_ids")
    return f"SELECT DISTINCT {h} AS h FROM {quote(source_view)} CROSS JOIN {quote(PADS_VIEW)} WHERE {unit} IS NOT NULL"


def lookup_unique_spark(table: str, key: str) -> str:
    return f"SELECT COUNT({quote(key)}) = COUNT(DISTINCT {quote(key)}) FROM {quote(table)}"


def id_matches_spark(table: str, keyed: list[str]) -> str:
    """How many of ``keyed`` (lowercase hex digests, made by the gateway) are in ``table``."""
    if not all(len(k) == 64 and all(c in "0123456789abcdef" for c in k) for k in keyed):
        raise ValueError("keyed ids are lowercase hex digests")
    values = ", ".join(_lit(k) for k in keyed)
    return (f"SELECT COUNT(*) FROM (SELECT explode(array({values})) AS h) AS f "
            f"LEFT SEMI JOIN {quote(table)} AS i ON f.h = i.h")
