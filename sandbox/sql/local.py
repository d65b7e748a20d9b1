"""Answer a checked :class:`QueryPlan` exactly over local rows: the notebook's mock mode.

Only ever run over mock rows generated from public metadata (``sandbox.mock``): the answers
are exact, without noise, and are never what the gateway releases. The plan is evaluated as
the gateway's engine evaluates it (the same keys, bins and predicate logic), in plain Python,
so the notebook image needs no SQL engine; every public key appears in the output, empty
groups included, as in a real answer.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence

from sandbox.policy.models import Dataset
from sandbox.sql._eval import evaluate
from sandbox.sql.plan import Aggregate, QueryPlan

_MISSING = object()


def _present(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _key(value: object, width: float | int | None) -> object:
    if not _present(value) or width is None:
        return value if _present(value) else None
    w = float(width)
    return math.floor(float(value) / w) * w  # type: ignore[arg-type]


def answer_locally(
    rows: Sequence[Mapping[str, object]], plan: QueryPlan, dataset: Dataset
) -> tuple[list[str], list[list]]:
    """The plan's output columns and rows (before HAVING / ORDER BY / LIMIT)."""
    domains = [None if k.open else {v: v for v in k.values} for k in plan.group_keys]
    groups: dict[tuple, list[Mapping[str, object]]] = {}
    for row in rows:
        if plan.where is not None and evaluate(plan.where, row) is not True:
            continue
        key = []
        for i, k in enumerate(plan.group_keys):
            raw = _key(row.get(k.column), k.bin_width)
            domain = domains[i]
            if raw is None:
                key.append(_MISSING)
            elif domain is None:  # a key without declared values: any value found (the gateway selects with DP)
                key.append(int(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else str(raw))
            else:
                key.append(domain.get(raw, _MISSING))
        if _MISSING in key:
            continue  # outside the public domain (or NULL): dropped, as by the engine
        groups.setdefault(tuple(key), []).append(row)
    key_index = {k.name: i for i, k in enumerate(plan.group_keys)}
    aggs = {a.name: a for a in plan.aggregates}
    out = []
    keys = itertools.product(*(k.values for k in plan.group_keys))
    if plan.open_keys:
        keys = iter(sorted(groups, key=_key_order))  # type: ignore[assignment]
    for key in keys:
        members = groups.get(key, [])
        line = []
        for name in plan.columns:
            if name in key_index:
                v = key[key_index[name]]
                line.append(round(v, 10) if isinstance(v, float) else v)
            else:
                line.append(aggregate(aggs[name], members, dataset))
        out.append(line)
    return list(plan.columns), out


def aggregate(agg: Aggregate, rows: Sequence[Mapping[str, object]], dataset: Dataset) -> object:
    """The exact aggregate of ``rows``; an empty group reads as the gateway's public fallback."""
    kind, col = agg.kind, agg.column
    if kind == "count" and col is None:
        return len(rows)
    if kind == "count_units":
        unit = dataset.privacy_unit
        return len(rows) if unit == "row" else len({r.get(unit) for r in rows if _present(r.get(unit))})
    assert col is not None
    if kind == "count":
        return sum(1 for r in rows if _present(r.get(col)))
    values = [float(r[col]) for r in rows if _present(r.get(col))]  # type: ignore[arg-type]
    if kind == "sum":
        return float(math.fsum(values))
    low, high = dataset.columns[col].bounds or (0.0, 0.0)
    if kind in ("var_pop", "var_samp", "stddev_pop", "stddev_samp"):
        if len(values) < 2:
            return None  # as the gateway: no estimate below 2 rows
        var = statistics.pvariance(values) if kind.endswith("pop") else statistics.variance(values)
        return math.sqrt(var) if kind.startswith("stddev") else var
    if not values:
        return (low + high) / 2
    if kind == "avg":
        return math.fsum(values) / len(values)
    q = {"min": 0.0, "max": 1.0}.get(kind, getattr(agg, "q", None))
    if q is None:
        raise ValueError(f"no local form for {kind}")  # unreachable for an analysed plan
    return _quantile(sorted(values), float(q))


def _quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (DuckDB's QUANTILE_CONT)."""
    pos = q * (len(values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _key_order(key: tuple) -> list:
    """As the gateway orders the keys it selects (sandbox.dp.selection.key_order)."""
    return [(0, v, "") if isinstance(v, int | float) and not isinstance(v, bool) else (1, 0, str(v)) for v in key]
