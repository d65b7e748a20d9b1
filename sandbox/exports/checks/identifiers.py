"""Identifier leak: does a column (or a text) carry privacy-unit ids of a granted dataset?

Tokens: every digit run inside any cell or text, whatever surrounds it (``id93703``, ``93703_``,
``ID-93703``, ``x=93703;``), compared both as written and without zero padding (``00093703``);
digits of any script are read as ASCII (``９３７０３``) and thousands-grouped numbers are also joined
(``93,703``, ``93 703``).
The gateway compares tokens against the raw id column as keyed hashes inside the engine
(:meth:`sandbox.engine.Engine.unit_id_matches`) and learns only *how many* matched.

Floats are read in their text form too (``93703.5`` gives ``93703`` and ``5``). A digit run longer
than ``WINDOW_FROM`` digits (ids written back to back) is also read through a sliding window of
every length in ``WINDOW_LENGTHS``. When a column or text has more than ``MAX_VALUES`` distinct
numbers the scan stops and the outcome is at least ``review``: the check did not finish, and it
never says ``pass`` about what it did not read. The file name is scanned like a cell.
No automatic check catches ids that are transformed (id+1, hex, spelled out) or split across
cells: the detail tells reviewers so.

Chance: in a dense id space (a panel numbered 1 to a few thousand) ordinary numbers are ids by
coincidence. For each magnitude (number of digits) present, the check asks the engine how many
of a fixed set of probe numbers of that magnitude are ids: that is the chance that a number of
that size is an id. The expected number of chance matches is the sum over tokens; a column
*fails* when its matches are far beyond that (Poisson tail below ``ALPHA``, at least two
matches, and an excess over chance of at least a fifth of its tokens), or when it has many
distinct tokens (``MANY``) that are nearly all ids. A column named like the privacy unit fails.
Anything else that matches is ``review``, with the chance figure in the explanation.
"""

from __future__ import annotations

import math
import random
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sandbox.exports.checks import result
from sandbox.exports.tables import Table

Matcher = Callable[[str, list[str]], int]
MAX_VALUES = 20_000
DIGITS = re.compile(r"\d+")  # any Unicode decimal digits
GROUPED = re.compile(r"\d{1,3}(?:[,.'\u00a0\u202f _]\d{3})+")  # 93,703 / 93 703 / 93.703 as one number
MAX_DIGITS = 18
WINDOW_FROM = 13  # longer runs are read through windows too: ids written back to back
WINDOW_LENGTHS = range(4, 13)
NOT_CAUGHT = ("No automatic check catches ids that are transformed (id+1, hex, spelled out) or split "
              "across cells: read the file for that.")
PROBES = 400  # probe numbers per magnitude
ALPHA = 0.01
EXCESS = 0.2
MANY = 50
MANY_EXCESS = 10  # ten ids more than chance fail, however many other numbers hide them
NEARLY_ALL = 0.9
DENSE = 0.1  # an id space where a tenth or more of the numbers of a size are ids


def tokens_of(values: Iterable[object]) -> list[str]:
    """Distinct digit runs of the values, as written and without zero padding (see :func:`tokenize`)."""
    return tokenize(values)[0]


def _text_form(v: object) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return ""
        return str(int(v)) if v.is_integer() and abs(v) < 10**MAX_DIGITS else repr(v)
    return str(v)


def tokenize(values: Iterable[object]) -> tuple[list[str], bool]:
    """(distinct digit runs of the values, whether every value was read before ``MAX_VALUES``)."""
    seen: dict[str, None] = {}
    for v in values:
        if v is None or isinstance(v, bool):
            continue
        text = _text_form(v)
        runs = DIGITS.findall(text) + [re.sub(r"\D", "", g) for g in GROUPED.findall(text)]
        for run in runs:
            run = "".join(str(unicodedata.decimal(c)) for c in run)  # fullwidth, Arabic-Indic... as ASCII
            if len(run) <= MAX_DIGITS:
                seen[run] = None
                seen[run.lstrip("0") or "0"] = None
            if len(run) >= WINDOW_FROM:
                for n in WINDOW_LENGTHS:
                    for i in range(len(run) - n + 1):
                        if run[i] != "0":
                            seen[run[i: i + n]] = None
                    if len(seen) > MAX_VALUES:
                        break
            if len(seen) > MAX_VALUES:
                return list(seen)[:MAX_VALUES], False
    return list(seen), True


def probes(digits: int) -> list[str]:
    """A fixed sample of numbers with ``digits`` digits (all of them when there are few)."""
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    if hi - lo + 1 <= PROBES:
        return [str(n) for n in range(lo, hi + 1)]
    rng = random.Random(digits)  # fixed: the same file always gets the same verdict
    return [str(rng.randint(lo, hi)) for _ in range(PROBES)]


def chance_rates(ds_id: str, tokens: list[str], matcher: Matcher,
                 memo: dict[tuple[str, int], float] | None = None) -> dict[int, float]:
    """Per magnitude present in ``tokens``: the share of probe numbers that are ids."""
    memo = {} if memo is None else memo
    rates = {}
    for d in sorted({len(t) for t in tokens}):
        if (ds_id, d) not in memo:
            sample = probes(d)
            memo[(ds_id, d)] = matcher(ds_id, sample) / len(sample)
        rates[d] = memo[(ds_id, d)]
    return rates


def poisson_tail(k: int, mean: float) -> float:
    """P(X >= k) for X ~ Poisson(mean)."""
    if k <= 0:
        return 1.0
    if mean <= 0:
        return 0.0
    term, cdf = math.exp(-mean), 0.0
    for i in range(k):
        cdf += term
        term *= mean / (i + 1)
    return max(0.0, 1.0 - cdf)


def judge(matched: int, distinct: int, expected: float) -> str:
    if not matched:
        return "pass"
    if distinct >= MANY and matched >= NEARLY_ALL * distinct:
        return "fail"
    excess = matched - expected
    beyond = matched >= 2 and poisson_tail(matched, expected) < ALPHA and (
        excess >= EXCESS * distinct or excess >= MANY_EXCESS)
    return "fail" if beyond else "review"


def assess(ds_id: str, unit: str, tokens: list[str], matcher: Matcher,
           memo: dict[tuple[str, int], float] | None = None) -> dict[str, Any] | None:
    """A finding for one dataset, or None when no token is an id."""
    matched = min(matcher(ds_id, tokens), len(tokens)) if tokens else 0
    if not matched:
        return None
    rates = chance_rates(ds_id, tokens, matcher, memo)
    expected = sum(rates[len(t)] for t in tokens)
    outcome = judge(matched, len(tokens), expected)
    reason = (f"{matched} of {len(tokens)} distinct number(s) are {unit} ids of {ds_id}; "
              f"chance would give about {expected:.1f} "
              f"(numbers of these sizes are {unit} ids {_rates(rates)})")
    if outcome == "review" and max(rates.values()) >= DENSE:
        reason += ": the id space is dense at these magnitudes, so matches like these are what chance gives"
    return {"outcome": outcome, "matched": matched, "distinct": len(tokens), "expected": round(expected, 2),
            "reason": reason}


def _rates(rates: dict[int, float]) -> str:
    return ", ".join(f"{d} digit(s): {r:.0%}" for d, r in rates.items())


def check_table(table: Table, units: Mapping[str, str], matcher: Matcher) -> dict[str, Any]:
    """``units`` maps a granted dataset id to its privacy-unit column (datasets with unit `row` excluded)."""
    if not units:
        return result("identifiers", "pass", "no granted dataset has a privacy-unit id column")
    cells, worst = [], "pass"
    memo: dict[tuple[str, int], float] = {}
    for col in table.columns:
        unit_named = [ds for ds, unit in units.items() if col.strip().lower() == unit.lower()]
        if unit_named:
            cells.append({"column": col, "reason": f"named like the privacy unit of {', '.join(unit_named)}"})
            worst = "fail"
            continue
        i = table.columns.index(col)
        tokens, complete = tokenize(r[i] for r in table.rows)
        if not complete:
            cells.append({"column": col, "outcome": "review", "reason": _unfinished(len(tokens))})
            worst = _worse(worst, "review")
        for ds_id in sorted(units):
            found = assess(ds_id, units[ds_id], tokens, matcher, memo)
            if found is None:
                continue
            cells.append({"column": col, **{k: v for k, v in found.items() if k != "outcome"},
                          "outcome": found["outcome"]})
            worst = _worse(worst, found["outcome"])
    names = ", ".join(f"{ds}.{u}" for ds, u in sorted(units.items()))
    if not cells:
        return result("identifiers", "pass", f"no column carries privacy-unit ids ({names}). {NOT_CAUGHT}")
    return result("identifiers", worst, f"{len(cells)} finding(s) on privacy-unit ids ({names}). {NOT_CAUGHT}",
                  cells)


def check_text(text: str, units: Mapping[str, str], matcher: Matcher) -> dict[str, Any]:
    """Every digit run in free text (code, notebook JSON saved as text...), compared with the unit ids."""
    if not units:
        return result("identifiers", "pass", "no granted dataset has a privacy-unit id column")
    tokens, complete = tokenize([text])
    cells: list[dict[str, Any]] = []
    worst = "pass"
    if not complete:
        cells.append({"outcome": "review", "reason": _unfinished(len(tokens))})
        worst = "review"
    for ds_id in sorted(units):
        found = assess(ds_id, units[ds_id], tokens, matcher)
        if found is not None:
            cells.append({k: v for k, v in found.items()})
            worst = _worse(worst, found["outcome"])
    if cells:
        return result("identifiers", worst, f"the text contains numbers that are privacy-unit ids, or the scan did "
                      f"not finish. {NOT_CAUGHT}", cells)
    return result("identifiers", "pass", f"none of {len(tokens)} number(s) in the text is a unit id. {NOT_CAUGHT}")


def with_file_name(found: dict[str, Any], name: str, units: Mapping[str, str], matcher: Matcher) -> dict[str, Any]:
    """The identifier result with the file name scanned like a cell (a name can carry ids too)."""
    tokens = tokens_of([name])
    extra = []
    for ds_id in sorted(units):
        hit = assess(ds_id, units[ds_id], tokens, matcher)
        if hit is not None:
            extra.append({"column": "(file name)", **hit})
    if not extra:
        return found
    outcome = found["outcome"]
    for e in extra:
        outcome = _worse(outcome, e["outcome"])
    return {**found, "outcome": outcome, "detail": "the file name has numbers that are privacy-unit ids; "
            + found["detail"], "cells": extra + list(found["cells"])}


def _unfinished(n: int) -> str:
    return (f"the scan stopped after {n:,} distinct numbers: the check did not finish, so the rest of this "
            "column or text was not compared with the ids")


def _worse(a: str, b: str) -> str:
    order = ("pass", "review", "fail")
    return a if order.index(a) >= order.index(b) else b
