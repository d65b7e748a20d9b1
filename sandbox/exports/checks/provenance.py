"""Provenance: which gateway queries the requester ran under the grant, and do the numbers match?

Every number in the file is looked up among the numbers of the noisy answers already released
to the requester under the grant (keys and aggregates alike). A CSV number matches when it
equals a released number rounded to the decimals the file wrote; Parquet numbers match to a
relative 1e-9. Numbers that match nothing (derived values, or numbers from elsewhere) are
listed for the reviewer: the outcome is then ``review``, never ``fail``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

from sandbox.exports.checks import result
from sandbox.exports.tables import Table

MAX_LISTED = 200


def released_numbers(answers: Sequence[dict[str, Any]]) -> list[float]:
    nums: set[float] = set()
    for a in answers:
        for row in a.get("response", {}).get("rows", []) or []:
            for v in row:
                if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                    nums.add(float(v))
    return sorted(nums)


def matches(value: float, decimals: int | None, pool: list[float]) -> bool:
    tol = 0.5 * 10 ** (-decimals) + 1e-9 if decimals is not None else max(abs(value) * 1e-9, 1e-12)
    i = bisect.bisect_left(pool, value - tol)
    return i < len(pool) and pool[i] <= value + tol


def query_list(answers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"query_id": a["query_id"], "epsilon": a["epsilon"], "ts": a.get("ts")} for a in answers]


def check_table(table: Table, answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    queries = query_list(answers)
    spent = round(sum(q["epsilon"] for q in queries), 9)
    if not queries:
        return result("provenance", "review",
                      "the requester ran no gateway query under this grant: the numbers have no provenance",
                      queries=[])
    pool = released_numbers(answers)
    cells, total = [], 0
    for r, row in enumerate(table.rows):
        for i, v in enumerate(row):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                continue
            total += 1
            dec = table.decimals[r][i] if table.decimals and r < len(table.decimals) else None
            if not matches(float(v), dec, pool):
                cells.append({"row": r, "column": table.columns[i], "value": v,
                              "reason": "matches no released noisy answer"})
    head = f"{len(queries)} query(ies) under the grant, epsilon {spent}"
    if not cells:
        return result("provenance", "pass",
                      f"{head}; all {total} number(s) in the file match released noisy answers",
                      queries=queries)
    return result("provenance", "review",
                  f"{head}; {len(cells)} of {total} number(s) match no released answer "
                  "(derived or from elsewhere)", cells[:MAX_LISTED], queries=queries)


def check_other(kind: str, answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    queries = query_list(answers)
    spent = round(sum(q["epsilon"] for q in queries), 9)
    return result("provenance", "review",
                  f"{len(queries)} query(ies) under the grant, epsilon {spent}; "
                  f"numbers in a {kind} file cannot be traced automatically", queries=queries)
