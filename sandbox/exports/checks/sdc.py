"""Statistical disclosure control on tables, with ACRO's published defaults as the baseline.

ACRO (SACRO project) defaults: ``safe_threshold`` 10, ``safe_dom_n`` 2, ``safe_dom_k`` 0.9,
``safe_p_percent`` 0.1, ``check_missing_values``/zeros flagged. How they apply to a file:

- **Count columns** are columns named ``n``, ``count``, ``counts``, ``freq``, ``frequency``,
  ``n_*``, ``*_n``, ``count_*``, ``*_count``, ``num_*``, ``number_of_*``, ``count(...)``, or
  declared by the requester (``count_columns`` on the request). Every numeric cell of a count
  column below the threshold (and not zero) **fails**; every zero is flagged for **review**.
  DP counts can be negative: a negative count is below the threshold too.
- **Dominance** (nk, n=2, k=0.9) and **p-percent** (p=0.1) need per-cell contributor info. A
  magnitude column ``m`` carries it in ``m_top1`` and ``m_top2`` (the two largest single
  contributions to the cell); ``m`` is the cell total. nk fails when
  ``(top1 + top2) / total > 0.9``; p-percent fails when ``(total - top1 - top2) / top1 < 0.1``.
  Without contributor columns both rules say *not applicable* (pass) and name the magnitude columns.

Cells are reported as ``{"row": i, "column": c, "value": v, "reason": ...}`` with 0-based rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from sandbox.exports.checks import result
from sandbox.exports.tables import Table

THRESHOLD = 10
DOM_N = 2
DOM_K = 0.9
P_PERCENT = 0.1

COUNT_NAME = re.compile(
    r"^(n|count|counts|freq|frequency|n_.+|.+_n|count_.+|.+_count|num_.+|number_of_.+|count\(.*\))$",
    re.IGNORECASE,
)
TOP_SUFFIXES = ("_top1", "_top2")


def is_count_column(name: str, declared: Iterable[str] = ()) -> bool:
    return bool(COUNT_NAME.match(name.strip())) or name in set(declared)


def _number(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer too large for a float: treat as not a count
        return None
    return None if math.isnan(f) or math.isinf(f) else f


# -- the rules on plain numbers (ACRO semantics) ---------------------------------------------
def below_threshold(count: float, threshold: int = THRESHOLD) -> bool:
    """A non-zero cell count under the threshold (zeros are handled by the zeros rule)."""
    return count != 0 and count < threshold


def nk_dominance(contributions: Sequence[float], n: int = DOM_N, k: float = DOM_K) -> bool:
    """True when the n largest contributions exceed k of the cell total (ACRO ``agg_nk``)."""
    total = sum(contributions)
    if total <= 0:
        return False
    top = sum(sorted(contributions, reverse=True)[:n])
    return top / total > k


def p_percent(contributions: Sequence[float], p: float = P_PERCENT) -> bool:
    """True when the rest after the two largest is under p of the largest (ACRO ``agg_p_percent``)."""
    values = sorted(contributions, reverse=True)
    total = sum(values)
    if total <= 0 or not values or values[0] <= 0:
        return False
    second = values[1] if len(values) > 1 else 0.0
    return (total - values[0] - second) / values[0] < p


def nk_from_top(total: float, top1: float, top2: float, k: float = DOM_K) -> bool:
    return total > 0 and (top1 + top2) / total > k


def p_from_top(total: float, top1: float, top2: float, p: float = P_PERCENT) -> bool:
    return total > 0 and top1 > 0 and (total - top1 - top2) / top1 < p


# -- the rules on a table --------------------------------------------------------------------
def count_columns(table: Table, declared: Iterable[str] = ()) -> list[str]:
    declared = list(declared)
    return [c for c in table.columns if is_count_column(c, declared) and table.is_numeric(c)]


def magnitude_columns(table: Table, declared: Iterable[str] = ()) -> list[str]:
    """Numeric columns that are neither counts nor contributor columns nor integral keys."""
    counts = set(count_columns(table, declared))
    out = []
    for c in table.columns:
        if c in counts or c.endswith(TOP_SUFFIXES) or not table.is_numeric(c):
            continue
        if f"{c}_top1" in table.columns or not table.is_integral(c):
            out.append(c)
    return out


def check_table(table: Table, declared_counts: Iterable[str] = ()) -> list[dict[str, Any]]:
    """All four SDC results for one table."""
    counts = count_columns(table, declared_counts)
    return [
        threshold_check(table, counts),
        zeros_check(table, counts),
        *contributor_checks(table, declared_counts),
    ]


def threshold_check(table: Table, counts: list[str], threshold: int = THRESHOLD) -> dict[str, Any]:
    if not counts:
        return result("sdc.threshold", "review",
                      "no count column found (name it n/count/freq or declare it): "
                      "the reviewer must judge cell sizes")
    cells = []
    for c in counts:
        i = table.columns.index(c)
        for r, row in enumerate(table.rows):
            v = _number(row[i])
            if v is not None and below_threshold(v, threshold):
                cells.append({"row": r, "column": c, "value": row[i],
                              "reason": f"count {row[i]} is below the minimum of {threshold}"})
    where = ", ".join(counts)
    if cells:
        return result("sdc.threshold", "fail",
                      f"{len(cells)} cell(s) in count column(s) {where} below {threshold}", cells)
    return result("sdc.threshold", "pass", f"every cell of {where} is at least {threshold}")


def zeros_check(table: Table, counts: list[str]) -> dict[str, Any]:
    cells = []
    for c in counts:
        i = table.columns.index(c)
        for r, row in enumerate(table.rows):
            if _number(row[i]) == 0:
                cells.append({"row": r, "column": c, "value": row[i],
                              "reason": "zero cell: may reveal that a group is empty (structural or not)"})
    if cells:
        return result("sdc.zeros", "review", f"{len(cells)} zero cell(s)", cells)
    return result("sdc.zeros", "pass", "no zero counts" if counts else "no count column to check")


def contributor_checks(table: Table, declared_counts: Iterable[str] = ()) -> list[dict[str, Any]]:
    """nk-dominance and p-percent, from ``m``, ``m_top1`` and ``m_top2`` columns."""
    with_top = [c for c in table.columns
                if f"{c}_top1" in table.columns and f"{c}_top2" in table.columns]
    if not with_top:
        mags = magnitude_columns(table, declared_counts)
        note = ("not applicable: no per-cell contributor columns (<column>_top1, <column>_top2)"
                + (f"; magnitude column(s) {', '.join(mags)} cannot be checked for dominance"
                   if mags else ""))
        return [result("sdc.dominance", "pass", note), result("sdc.p_percent", "pass", note)]
    nk_cells, p_cells = [], []
    for c in with_top:
        i, i1, i2 = (table.columns.index(x) for x in (c, f"{c}_top1", f"{c}_top2"))
        for r, row in enumerate(table.rows):
            total, t1, t2 = _number(row[i]), _number(row[i1]), _number(row[i2])
            if total is None or t1 is None or t2 is None:
                continue
            if nk_from_top(total, t1, t2):
                share = (t1 + t2) / total
                nk_cells.append({"row": r, "column": c, "value": row[i],
                                 "reason": f"the 2 largest contributors hold {share:.1%} of the total "
                                           f"(over {DOM_K:.0%})"})
            if p_from_top(total, t1, t2):
                rest = (total - t1 - t2) / t1
                p_cells.append({"row": r, "column": c, "value": row[i],
                                "reason": f"the others add up to {rest:.1%} of the largest contribution "
                                          f"(under {P_PERCENT:.0%}): the second largest could estimate it"})
    cols = ", ".join(with_top)
    nk = (result("sdc.dominance", "fail", f"{len(nk_cells)} dominated cell(s) in {cols}", nk_cells)
          if nk_cells else result("sdc.dominance", "pass", f"no cell of {cols} dominated (n=2, k=0.9)"))
    pp = (result("sdc.p_percent", "fail", f"{len(p_cells)} cell(s) fail the p% rule in {cols}", p_cells)
          if p_cells else result("sdc.p_percent", "pass", f"every cell of {cols} passes p=10%"))
    return [nk, pp]
