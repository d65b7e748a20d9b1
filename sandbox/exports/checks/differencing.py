"""Differencing: would this table, next to what the grant already released, isolate a small group?

Two counts of populations that differ by a few units reveal that small group by subtraction
(e.g. females of all ages vs. females under 80). The check compares every count cell of the
file with count cells of the released answers that have the *same*
key: the same values in the same non-count, non-fractional columns. A difference that is not
zero but under the threshold is flagged for review, as is a file total within the threshold
of a released total. The answers are noisy, so this is a hint for the reviewer, never a fail.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from sandbox.exports.checks import result
from sandbox.exports.checks.sdc import THRESHOLD, is_count_column
from sandbox.exports.tables import Table

MAX_LISTED = 200


def _num(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def _key_columns(columns: list[str], rows: list[list[Any]], counts: set[str]) -> list[int]:
    keys = []
    for i, c in enumerate(columns):
        if c in counts:
            continue
        vals = [r[i] for r in rows if r[i] is not None]
        if any(isinstance(v, float) and v != int(v) for v in vals if _num(v) is not None):
            continue  # fractional values are measures, not keys
        keys.append(i)
    return keys


def count_cells(columns: list[str], rows: list[list[Any]], declared: Iterable[str] = ()) -> list[tuple[Any, ...]]:
    """(key, count column, value, row) for every count cell; key = sorted (column, value) pairs."""
    declared = list(declared)
    counts = {c for c in columns if is_count_column(c, declared)}
    keys = _key_columns(columns, rows, counts)
    out = []
    for r, row in enumerate(rows):
        key = tuple(sorted((columns[k].lower(), str(row[k])) for k in keys))
        for i, c in enumerate(columns):
            if c in counts and _num(row[i]) is not None:
                out.append((key, c.lower(), float(row[i]), r))
    return out


def check_table(table: Table, answers: Sequence[dict[str, Any]], declared: Iterable[str] = (),
                threshold: int = THRESHOLD) -> dict[str, Any]:
    declared = list(declared)
    mine = count_cells(table.columns, table.rows, declared)
    if not mine:
        return result("differencing", "pass", "no count cells to compare")
    released: dict[tuple[Any, ...], list[tuple[float, str]]] = {}
    totals: list[tuple[float, str]] = []
    for a in answers:
        resp = a.get("response", {})
        cells = count_cells(list(resp.get("columns", [])), resp.get("rows", []) or [], declared)
        for key, _col, value, _r in cells:
            released.setdefault(key, []).append((value, a["query_id"]))
            if not key:
                totals.append((value, a["query_id"]))
    flagged = []
    for key, col, value, r in mine:
        for other, qid in released.get(key, []):
            diff = abs(value - other)
            if 0 < diff < threshold:
                flagged.append({"row": r, "column": col, "value": value,
                                "reason": f"differs by {diff:g} from released {other:g} (query {qid}) "
                                          f"for the same group {dict(key) or '(total)'}"})
                break
    by_col: dict[str, float] = {}
    for _key, col, value, _r in mine:
        by_col[col] = by_col.get(col, 0.0) + value
    for col, total in by_col.items():
        for other, qid in totals:
            diff = abs(total - other)
            if 0 < diff < threshold:
                flagged.append({"column": col, "value": total,
                                "reason": f"the column total {total:g} differs by {diff:g} from the "
                                          f"released total {other:g} (query {qid})"})
                break
    if flagged:
        return result("differencing", "review",
                      f"{len(flagged)} cell(s) differ from released counts of the same group by less "
                      f"than {threshold}: subtracting them could isolate a small group",
                      flagged[:MAX_LISTED])
    return result("differencing", "pass",
                  f"{len(mine)} count cell(s) compared with {len(answers)} released answer(s); "
                  "no small differences")
