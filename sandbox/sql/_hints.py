"""Shared wording for refusals: every message says what WOULD work.

Kept in one place so that the hints for a clause, and the reasons a function is refused,
read the same wherever a refusal is raised.
"""

from __future__ import annotations

from sqlglot import exp

EXAMPLE = "e.g. SELECT sex, COUNT(*), AVG(age) FROM nhanes_2017 WHERE age >= 18 GROUP BY sex"

AGGREGATES_HINT = (
    "the aggregates are COUNT(*), COUNT(col), SUM(col), AVG(col), VAR_POP/VAR_SAMP/STDDEV(col), "
    "MEDIAN(col), QUANTILE_CONT(col, q), MIN(col), MAX(col) and COUNT(DISTINCT <privacy unit>)"
)

SELECT_HINT = (
    "SELECT takes aggregates (COUNT(*), COUNT(col), SUM(col), AVG(col), VAR_POP(col), STDDEV(col), "
    "MEDIAN(col), QUANTILE_CONT(col, q), MIN(col), MAX(col), COUNT(DISTINCT <privacy unit>)) and the GROUP BY keys "
    "(a column, or a bin FLOOR(col / w) * w), each with an optional AS name"
)

WHERE_HINT = (
    "WHERE takes column = / <> / < / <= / > / >= comparisons with literals, AND, OR, NOT, "
    "IN (literal list), BETWEEN, IS [NOT] NULL and + - * / arithmetic, with no functions"
)

GROUP_HINT = (
    "GROUP BY takes a category column, an int column with at most 1000 values, "
    "or a bin FLOOR(col / w) * w of an int or float column with a positive number w; "
    "you may also name a SELECT alias or position (GROUP BY 1)"
)

ORDER_HINT = (
    "ORDER BY takes output column names or positions with ASC or DESC; to order by an "
    "aggregate, name it: SELECT sex, COUNT(*) AS n ... ORDER BY n DESC (or ORDER BY 2 DESC)"
)

LIMIT_HINT = "LIMIT takes a non-negative whole number, e.g. LIMIT 10"

HAVING_HINT = (
    "HAVING filters the noisy output: compare output columns (aliases, keys, or aggregates that are "
    "also in SELECT) with literals, e.g. SELECT sex, COUNT(*) AS n ... GROUP BY sex HAVING n > 100"
)

CLAUSE_HINTS = {
    "having": HAVING_HINT,
    "expressions": SELECT_HINT,
    "where": WHERE_HINT,
    "group": GROUP_HINT,
    "order": ORDER_HINT,
    "limit": LIMIT_HINT,
}

CLAUSE_NAMES = {
    "expressions": "SELECT",
    "from_": "FROM",
    "where": "WHERE",
    "group": "GROUP BY",
    "having": "HAVING",
    "order": "ORDER BY",
    "limit": "LIMIT",
}


def show(text: str, limit: int = 40) -> str:
    """Quote operator text for a message; non-ASCII is escaped so homoglyphs become visible."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return repr(cut) if cut.isascii() else ascii(cut)


ARITHMETIC_ON_AGGREGATES = (
    "arithmetic on aggregates (e.g. SUM(x) / COUNT(*)) is not available: each aggregate gets "
    "its own noise. Select the aggregates separately (or use AVG(x)) and compute the "
    "expression client-side"
)

_NODE_NAMES: dict[type[exp.Expression], str] = {
    exp.Like: "LIKE",
    exp.ILike: "ILIKE",
    exp.SimilarTo: "SIMILAR TO",
    exp.Case: "CASE",
    exp.Placeholder: "a parameter ($1, ?, :name)",
    exp.DPipe: "|| (concatenation)",
    exp.Mod: "% (modulo)",
    exp.Pow: "^ / ** (power)",
    exp.IntDiv: "// (integer division)",
    exp.NullSafeEQ: "IS NOT DISTINCT FROM",
    exp.NullSafeNEQ: "IS DISTINCT FROM",
    exp.Tuple: "a row value (a, b)",
    exp.Array: "a list [...]",
    exp.Struct: "a struct {...}",
    exp.Bracket: "indexing [...]",
    exp.Dot: "field access",
    exp.Collate: "COLLATE",
    exp.Interval: "INTERVAL",
    exp.ByteString: "an escape string E'...'",
    exp.RawString: "a dollar-quoted string $$...$$",
    exp.National: "a national string N'...'",
    exp.Null: "NULL",
    exp.Alias: "an alias (AS)",
    exp.Star: "*",
}


def describe(node: exp.Expression) -> str:
    """A short, operator-facing name for a node: the function name, an operator, or its SQL."""
    if isinstance(node, exp.Func):
        return function_name(node)
    for cls in type(node).__mro__:
        if cls in _NODE_NAMES:
            return _NODE_NAMES[cls]
    try:
        text = node.sql(dialect="duckdb", comments=False)
    except Exception:  # noqa: BLE001 - a description must never fail the refusal itself
        text = node.key
    return show(text)


def function_name(node: exp.Func) -> str:
    """The function's SQL name; sqlglot folds synonyms (LIST is ARRAY_AGG), so both are shown."""
    if isinstance(node, exp.Anonymous):
        return str(node.name).upper()[:40] or "this function"
    name = type(node).sql_name()
    return _SYNONYMS.get(name, name)


_SYNONYMS = {"ARRAY_AGG": "LIST / ARRAY_AGG", "GROUP_CONCAT": "STRING_AGG / GROUP_CONCAT"}


def _classes(*names: str) -> tuple[type[exp.Expression], ...]:
    return tuple(getattr(exp, n) for n in names if hasattr(exp, n))


_ONE_ROW = _classes("First", "Last", "AnyValue", "ArgMax", "ArgMin")
_VALUES = _classes("ArrayAgg", "GroupConcat", "ArrayUniqueAgg", "ArrayConcatAgg")
_ORDER_STATS = _classes("Median", "Quantile", "PercentileCont", "PercentileDisc", "Mode", "Min", "Max")
_ONE_ROW_NAMES = {"arbitrary", "max_by", "min_by", "argmax", "argmin", "arg_max", "arg_min"}
_VALUE_NAMES = {"list", "histogram", "string_agg", "listagg", "list_agg", "array_agg"}
_SYSTEM_PREFIXES = ("read_", "duckdb_", "pragma_", "pg_", "sqlite_", "parquet_", "current_")
_SYSTEM_NAMES = {"getenv", "glob", "getvariable", "version", "query", "query_table", "system"}


def function_message(node: exp.Func, clause: str) -> str:
    """Why this function is refused, and what to use instead."""
    name = function_name(node)
    lower = name.lower()
    if isinstance(node, exp.AggFunc) and clause == "where":
        return f"aggregates such as {name} cannot be used in WHERE; {WHERE_HINT}"
    if isinstance(node, _ONE_ROW) or lower in _ONE_ROW_NAMES:
        return f"{name} is not available: it returns one row's value. Use AVG(col) or COUNT(*) per group"
    if isinstance(node, _VALUES) or lower in _VALUE_NAMES:
        return (
            f"{name} is not available: it returns the rows' values themselves. "
            "Use GROUP BY col with COUNT(*) to count each value"
        )
    if isinstance(node, _ORDER_STATS) or "quantile" in lower or "percentile" in lower:
        return (
            f"{name} is not available: exact order statistics reveal single rows. The DP quantiles "
            "are MEDIAN(col), QUANTILE_CONT(col, q), PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY col), "
            "MIN(col) and MAX(col), on a bounded numeric column"
        )
    if lower.startswith(_SYSTEM_PREFIXES) or lower in _SYSTEM_NAMES or isinstance(node, (exp.ReadParquet, exp.ReadCSV)):
        return (
            f"{name} is not available: queries cannot read files, settings or system state. "
            f"Query a dataset from the catalog with COUNT/SUM/AVG, {AGGREGATES_HINT}"
        )
    if isinstance(node, exp.AggFunc):
        if clause == "where":
            return f"aggregates such as {name} cannot be used in WHERE; {WHERE_HINT}"
        return f"{name} is not available: {AGGREGATES_HINT}"
    where = CLAUSE_NAMES.get(clause, clause)
    return f"{name} is not available in {where}; {CLAUSE_HINTS.get(clause, SELECT_HINT)}"
