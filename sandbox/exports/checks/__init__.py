"""Automatic checks beside every file. Checks inform; a ``fail`` blocks approval (see the workflow).

Each check is a small pure function returning ``{"rule", "outcome": "pass|review|fail",
"detail", "cells": [...]}``. :func:`run_all` runs the gates (which refuse a file outright),
renders the canonical file, and runs every check that applies to its kind on the canonical bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from sandbox.errors import BadRequest, SandboxError

if TYPE_CHECKING:
    from sandbox.exports.canonical import Canonical
    from sandbox.exports.checks.file_gates import Limits

OUTCOMES = ("pass", "review", "fail")


def result(rule: str, outcome: str, detail: str, cells: list[Any] | None = None, **extra: object) -> dict[str, Any]:
    assert outcome in OUTCOMES, outcome
    return {"rule": rule, "outcome": outcome, "detail": detail, "cells": list(cells or []), **extra}


def worst(results: Sequence[dict[str, Any]]) -> str:
    outcomes = {r["outcome"] for r in results}
    return next((o for o in reversed(OUTCOMES) if o in outcomes), "pass")


class FileRefused(BadRequest):
    """A file failed a gate: it never enters the airlock."""

    code = "file_refused"

    def __init__(self, name: str, results: list[dict[str, Any]]) -> None:
        failed = [r for r in results if r["outcome"] == "fail"]
        super().__init__(f"{name}: " + "; ".join(r["detail"] for r in failed))
        self.results = results


@dataclass
class CheckContext:
    """What the checks need to know about the grant and the requester, gathered by the workflow."""

    units: Mapping[str, str] = field(default_factory=dict)  # dataset id -> privacy-unit column
    matcher: Callable[[str, list[str]], int] = lambda _ds, _values: 0
    answers: Sequence[dict[str, Any]] = ()  # Ledger.released_answers(grant, requester): provenance
    released: Sequence[dict[str, Any]] | None = None  # everything the grant released: differencing
    count_columns: Sequence[str] = ()
    limits: Limits | None = None


def run_all(name: str, data: bytes, ctx: CheckContext) -> tuple[Canonical, list[dict[str, Any]]]:
    """(canonical file, results) for one upload; raises :class:`FileRefused` when a gate fails.

    The gates look at the upload; every other check looks at the canonical rendering only, the
    bytes that reviewers preview and that would leave.
    """
    from sandbox.exports import canonical
    from sandbox.exports.checks import file_gates

    limits = ctx.limits or file_gates.DEFAULT_LIMITS
    kind, results = file_gates.gate(name, data, limits)
    if kind is None:
        raise FileRefused(name, results)
    try:
        out, findings = canonical.render(kind, data, limits.max_rows)
    except BadRequest as exc:
        results.append(result("file.content", "fail", exc.message))
        raise FileRefused(name, results) from None
    canon = canonical.Canonical(name, kind, out, len(data), hashlib.sha256(data).hexdigest(), findings)
    results.append(canonical.size_result(len(data), len(out)))
    results.extend(findings)
    results.extend(check_canonical(name, kind, out, ctx, limits))
    return canon, results


def check_canonical(name: str, kind: str, data: bytes, ctx: CheckContext, limits: Limits) -> list[dict[str, Any]]:
    """The disclosure checks on canonical bytes (tables, text, pictures); the file name is scanned for ids."""
    from sandbox.exports.checks import identifiers

    results = _checks_of_kind(name, kind, data, ctx, limits)
    matcher = _safe(ctx.matcher)
    for i, r in enumerate(results):
        if r["rule"] == "identifiers" and ctx.units:
            results[i] = _guard("identifiers", partial(identifiers.with_file_name, r, name, ctx.units, matcher))
    return results


def _checks_of_kind(name: str, kind: str, data: bytes, ctx: CheckContext, limits: Limits) -> list[dict[str, Any]]:
    from sandbox.exports.canonical import TABLE_KINDS
    from sandbox.exports.canonical.tables import read_canonical
    from sandbox.exports.checks import differencing, file_gates, identifiers, provenance, sdc

    results: list[dict[str, Any]] = []
    matcher = _safe(ctx.matcher)
    if kind in TABLE_KINDS:
        table = read_canonical(kind, data)
        rows = file_gates.row_gate(len(table.rows), len(table.columns), limits)
        results.append(rows)
        if rows["outcome"] == "fail":
            raise FileRefused(name, results)
        results.append(_guard("identifiers", lambda: identifiers.check_table(table, ctx.units, matcher)))
        results.extend(sdc.check_table(table, ctx.count_columns))
        results.append(provenance.check_table(table, ctx.answers))
        results.append(differencing.check_table(table, ctx.answers if ctx.released is None else ctx.released,
                                                  ctx.count_columns))
    elif kind == "text":
        text = data.decode("utf-8")
        results.append(_guard("identifiers", lambda: identifiers.check_text(text, ctx.units, matcher)))
        results.append(result("sdc.manual", "review", "free text: the reviewer must read every number"))
        results.append(provenance.check_other(kind, ctx.answers))
    else:
        results.append(result("identifiers", "review", f"a {kind} picture cannot be scanned for ids: look at it"))
        results.append(result("sdc.manual", "review", f"a {kind} picture cannot be checked automatically: "
                                                      "the reviewer must read every number in it"))
        results.append(provenance.check_other(kind, ctx.answers))
    return results


class _CheckUnavailable(Exception):
    pass


def _safe(matcher: Callable[[str, list[str]], int]) -> Callable[[str, list[str]], int]:
    def wrapped(ds_id: str, values: list[str]) -> int:
        try:
            return matcher(ds_id, values)
        except SandboxError as exc:
            raise _CheckUnavailable(exc.message) from None

    return wrapped


def _guard(rule: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return fn()
    except _CheckUnavailable as exc:
        return result(rule, "review", f"could not run: {exc}")
