"""Post-processing of released rows: HAVING, ORDER BY and LIMIT, free of privacy cost.

These run on the noisy output only (never on exact aggregates), in the gateway and in the
notebook's mock mode alike, so both give the same rows for the same released values.
"""

from __future__ import annotations

from sandbox.sql.plan import QueryPlan


def _sort_value(value: object) -> tuple:
    return (value is None, value if value is not None else 0)


def apply_post(plan: QueryPlan, columns: list[str], rows: list[list]) -> list[list]:
    """HAVING, then ORDER BY, then LIMIT, on the released rows."""
    out = list(rows)
    having = getattr(plan, "having", None)
    if having is not None:
        from sandbox.sql._eval import evaluate

        out = [row for row in out if evaluate(having, dict(zip(columns, row, strict=True))) is True]
    for item in reversed(plan.order_by):
        idx = columns.index(item.name)
        out.sort(key=lambda r, i=idx: _sort_value(r[i]), reverse=item.descending)
    if plan.limit is not None:
        out = out[: plan.limit]
    return out
