"""Identifier leak: does a column carry privacy-unit ids of a granted dataset?

The gateway compares values against the raw id column as keyed hashes inside the engine
(:meth:`sandbox.engine.Engine.unit_id_matches`) and learns only *how many* matched, so the
check itself reveals nothing about the raw data. A column fails when it is named like the
privacy unit, or when at least two of its distinct values, and at least half of them, are
unit ids; any smaller match is flagged for review. Text files are checked by their numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

from sandbox.exports.checks import result
from sandbox.exports.tables import Table

Matcher = Callable[[str, list[str]], int]
MAX_VALUES = 20_000
NUMBER_TOKEN = re.compile(r"(?<![\w.])\d{3,}(?![\w.])")


def _distinct(values: list[object]) -> list[str]:
    seen: dict[str, None] = {}
    for v in values:
        if v is None:
            continue
        if isinstance(v, float):
            if not math.isfinite(v) or v != int(v):
                continue
            text = str(int(v))
        else:
            text = str(v).strip()
        if text:
            seen[text] = None
        if len(seen) >= MAX_VALUES:
            break
    return list(seen)


def judge(matched: int, distinct: int) -> str:
    if matched >= 2 and matched * 2 >= distinct:
        return "fail"
    return "review" if matched else "pass"


def check_table(table: Table, units: Mapping[str, str], matcher: Matcher) -> dict:
    """``units`` maps a granted dataset id to its privacy-unit column (datasets with unit `row` excluded)."""
    if not units:
        return result("identifiers", "pass", "no granted dataset has a privacy-unit id column")
    cells, worst = [], "pass"
    for col in table.columns:
        unit_named = [ds for ds, unit in units.items() if col.strip().lower() == unit.lower()]
        if unit_named:
            cells.append({"column": col, "reason": f"named like the privacy unit of {', '.join(unit_named)}"})
            worst = "fail"
            continue
        values = _distinct(table.column(col))
        for ds_id in sorted(units):
            matched = matcher(ds_id, values)
            outcome = judge(matched, len(values))
            if outcome != "pass":
                cells.append({"column": col, "matched": matched, "distinct": len(values),
                              "reason": f"{matched} of {len(values)} distinct value(s) are "
                                        f"{units[ds_id]} ids of {ds_id}"})
                worst = outcome if outcome == "fail" or worst == "pass" else worst
    names = ", ".join(f"{ds}.{u}" for ds, u in sorted(units.items()))
    if not cells:
        return result("identifiers", "pass", f"no column matches the privacy-unit ids ({names})")
    return result("identifiers", worst, f"{len(cells)} column(s) carry privacy-unit ids ({names})", cells)


def check_text(text: str, units: Mapping[str, str], matcher: Matcher) -> dict:
    """Numbers of three or more digits in free text, compared with the unit ids."""
    if not units:
        return result("identifiers", "pass", "no granted dataset has a privacy-unit id column")
    tokens = list(dict.fromkeys(NUMBER_TOKEN.findall(text)))[:MAX_VALUES]
    cells = []
    worst = "pass"
    for ds_id in sorted(units):
        matched = matcher(ds_id, tokens)
        outcome = judge(matched, len(tokens))
        if outcome != "pass":
            cells.append({"matched": matched, "distinct": len(tokens),
                          "reason": f"{matched} number(s) in the text are {units[ds_id]} ids of {ds_id}"})
            worst = "fail" if outcome == "fail" or matched >= 2 else "review"
    if cells:
        return result("identifiers", worst, "the text contains privacy-unit ids", cells)
    return result("identifiers", "pass", f"none of {len(tokens)} number(s) in the text is a unit id")
