"""From the operator's text to exactly one parsed SELECT, or a refusal with a stable code.

sqlglot (dialect ``duckdb``) does the parsing; nothing here looks at the text with regular
expressions or word lists. Only the number and the kind of the parsed statements matter.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

from sandbox.errors import BadRequest
from sandbox.sql._hints import EXAMPLE, show

DIALECT = "duckdb"
MAX_SQL_CHARS = 10_000


def parse_select(sql: str) -> exp.Select:
    """Parse ``sql`` and return its single top-level SELECT."""
    if not isinstance(sql, str) or not sql.strip():
        raise BadRequest(f"the query is empty; write one SELECT of aggregates, {EXAMPLE}", "empty_query")
    if len(sql) > MAX_SQL_CHARS:
        raise BadRequest(
            f"the query has {len(sql)} characters; at most {MAX_SQL_CHARS} are accepted. "
            "Aggregate queries are short: one SELECT over one dataset",
            "sql_too_long",
        )
    statements = [s for s in _parse(sql) if s is not None]
    if not statements:
        raise BadRequest(f"the query holds no statement (only comments or ';'); {EXAMPLE}", "empty_query")
    if len(statements) > 1:
        raise BadRequest(
            f"the query holds {len(statements)} statements; send exactly one SELECT (a ';' may only end it)",
            "multiple_statements",
        )
    return _as_select(statements[0])


def _parse(sql: str) -> list[exp.Expression | None]:
    try:
        return sqlglot.parse(sql, read=DIALECT)
    except ParseError as exc:
        raise BadRequest(_parse_error_message(exc), "parse_error") from None
    except SqlglotError:
        raise BadRequest(
            "the SQL could not be read (an unterminated string or quoted name?); "
            f"write one SELECT of aggregates, {EXAMPLE}",
            "parse_error",
        ) from None
    except RecursionError:
        raise BadRequest("the SQL is nested too deeply to read; write a flatter predicate", "parse_error") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        # sqlglot occasionally fails on garbage with a plain Python error: still a parse error
        raise BadRequest(
            f"the SQL could not be read; write one SELECT of aggregates, {EXAMPLE}", "parse_error"
        ) from None


def _parse_error_message(exc: ParseError) -> str:
    """sqlglot's first error, without its ANSI highlighting or echo of the whole query."""
    errors = exc.errors or [{}]
    first = errors[0]
    where = ""
    if first.get("line") is not None:
        where = f" at line {first['line']}, column {first.get('col')}"
    near = first.get("highlight") or ""
    near_text = f" near {show(near, 30)}" if near else ""
    description = first.get("description") or "invalid SQL"
    return f"the SQL could not be parsed: {description}{where}{near_text}. Write one SELECT of aggregates, {EXAMPLE}"


def _as_select(statement: exp.Expression) -> exp.Select:
    if isinstance(statement, exp.Select):
        return statement
    if isinstance(statement, exp.SetOperation):
        raise BadRequest(
            "UNION / INTERSECT / EXCEPT are not available: combining results could single out "
            "rows. Send one SELECT; to compare groups use GROUP BY in a single query",
            "unsupported_clause",
        )
    if isinstance(statement, exp.Subquery):
        raise BadRequest(
            "a parenthesised query is a subquery, which is not available; remove the "
            f"parentheses and send one plain SELECT, {EXAMPLE}",
            "subquery_not_allowed",
        )
    raise BadRequest(
        f"{_statement_kind(statement)} statements are not available: the gateway runs one "
        f"SELECT of aggregates over a dataset and nothing else, {EXAMPLE}",
        "not_select",
    )


def _statement_kind(statement: exp.Expression) -> str:
    if isinstance(statement, exp.Command):
        return str(statement.this).upper()[:20] or "this"
    return statement.key.upper()
