"""Usage metering and monthly price statements per grant (``sandbox usage report``).

Sources of truth, all in the state database:

- queries and epsilon: the ledger's ``charges`` (a cached replay costs nothing and writes no charge);
- exports: audit entries whose action starts with ``export.submitted`` (so the count does not depend on
  the exports module being installed); a request the authority withdrew (e.g. on revocation) is never billed;
- notebook hours: :meth:`SessionLog.hours` (a running session counts until now);
- which days are billable: ``sandbox.billing``, from the effective-dated history of the grant's terms in the
  audit log (nothing is billed for days a grant was suspended, revoked, out of policy, not yet applied,
  outside its window, or in free public-welfare use; a change never applies before it was made).

The monthly base is prorated by billable days; usage is billed only on billable days. Amounts are exact
decimals rounded half-up to cents, returned as strings (``"12.50"``) so that a report serializes to JSON or
CSV without any float rounding.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sandbox.errors import BadRequest
from sandbox.policy.prices import PriceSchedule, default_prices_path, load_prices
from sandbox.state import exports_repo
from sandbox.state.audit import AuditLog
from sandbox.state.db import StateDB
from sandbox.state.grants_store import PolicyStore
from sandbox.state.ledger import NANO, Ledger
from sandbox.state.sessions import SessionLog

PERIOD = re.compile(r"([0-9]{4})-([0-9]{2})", re.ASCII)
YEARS = (1970, 2999)
CENT = Decimal("0.01")
CSV_FIELDS = ("period", "grant", "operator", "use", "item", "description", "quantity", "unit_price", "amount",
              "currency")


@dataclass(frozen=True)
class UsageSources:
    """What a statement is computed from: the grants (policies), the audit log (exports submitted, the
    history of each grant's terms), the state database (exports the authority withdrew, priced
    products), the ledger's charges and the notebook sessions."""

    db: StateDB
    audit: AuditLog
    policies: PolicyStore
    ledger: Ledger
    sessions: SessionLog


def parse_period(period: str) -> tuple[dt.datetime, dt.datetime]:
    """``YYYY-MM`` as the half-open UTC interval [first instant of the month, first of the next)."""
    match = PERIOD.fullmatch(period) if isinstance(period, str) else None
    year, month = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not match or not 1 <= month <= 12 or not YEARS[0] <= year <= YEARS[1]:
        raise BadRequest(f"period must be a month written YYYY-MM, e.g. 2026-12 (got {period!r})",
                         code="bad_period")
    start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + month // 12, month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


def _ts(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _money(value: Decimal) -> str:
    value = value.quantize(CENT, rounding=ROUND_HALF_UP)
    return str(value + 0)  # + 0 turns -0.00 into 0.00


def _exports_by_grant(audit: AuditLog, db: StateDB, start: dt.datetime,
                      end: dt.datetime) -> dict[str, list[dict[str, Any]]]:
    """Export submissions in [start, end) per grant, each with whether the authority withdrew it."""
    found: dict[str, list[dict[str, Any]]] = {}
    withdrawn = _withdrawn_by_authority(db)
    for entry in audit.entries(since=start.isoformat()):
        if entry["action"].startswith("export.submitted") and entry["grant_id"] and _ts(entry["ts"]) < end:
            request_id = entry["detail"].get("request")
            found.setdefault(entry["grant_id"], []).append(
                {"ts": _ts(entry["ts"]), "withdrawn_by_authority": request_id in withdrawn})
    return found


def _withdrawn_by_authority(db: StateDB) -> set[str]:
    """Export requests withdrawn by someone other than their requester (the authority, e.g. on revocation)."""
    try:
        return exports_repo.withdrawn_by_others(db.conn)
    except sqlite3.Error:  # the exports module is not installed
        return set()


def _quantity(value: Decimal) -> str:
    """Plain notation without trailing zeros: 1.5, 0, 100 (never 0E-9 or 1E+2)."""
    return format(value.normalize(), "f")


def _line(item: str, description: str, quantity: Decimal, unit_price: Decimal,
          amount: Decimal | None = None) -> dict[str, str]:
    return {
        "item": item,
        "description": description,
        "quantity": _quantity(quantity),
        "unit_price": str(unit_price),
        "amount": _money(quantity * unit_price if amount is None else amount),
    }


REASONS = {"not_applied": "not yet applied", "outside_window": "outside the validity period",
           "suspended": "suspended", "revoked": "revoked", "out_of_policy": "out of policy",
           "public_welfare": "free public-welfare use"}


def _statement(metrics: Mapping[str, Any], days: int, billable: int, not_billed: Mapping[str, int],
               prices: PriceSchedule) -> list[dict[str, str]]:
    share = Decimal(billable) / Decimal(days)
    lines = [
        _line("monthly_base", f"Monthly base fee for {billable} of {days} days billable",
              share.quantize(Decimal("0.000001")), prices.monthly_base, prices.monthly_base * share),
        _line("queries", "Charged DP queries on billable days (cached replays are free)",
              Decimal(metrics["queries"]), prices.per_query),
        _line("epsilon", "Privacy budget spent on billable days (epsilon)", metrics["epsilon_exact"],
              prices.per_epsilon),
        _line("exports", "Export requests submitted on billable days (never those the authority withdrew)",
              Decimal(metrics["exports"]), prices.per_export),
        _line("notebook_hours", "Notebook server hours on billable days", metrics["hours_exact"],
              prices.per_notebook_hour),
    ]
    if not_billed:
        text = ", ".join(f"{n} {REASONS.get(reason, reason)}" for reason, n in sorted(not_billed.items()))
        lines.append(_line("days_not_billed", f"Days not billed: {text}", Decimal(sum(not_billed.values())),
                           Decimal("0.00"), Decimal(0)))
    return lines


def usage_report(sources: UsageSources, period: str, prices: PriceSchedule | None = None) -> list[dict[str, Any]]:
    """One statement per grant billable or used during ``period`` (``YYYY-MM``, UTC).

    Each statement: ``period``, ``grant``, ``operator``, ``use``, ``currency``, the metered totals
    ``queries`` (charged), ``epsilon``, ``exports`` (submitted), ``notebook_hours``; the day counts
    ``days``, ``billable_days`` and ``not_billed_days`` (per reason, see ``sandbox.billing``); then
    ``lines`` (each ``item``, ``description``, ``quantity``, ``unit_price``, ``amount``) billed for the
    billable days only, and ``total``. Raises BadRequest for a bad period and PolicyError when no price
    schedule is given and ``policies/prices.yaml`` cannot be read.
    """
    from sandbox.billing import billable_days

    start, end = parse_period(period)
    prices = prices or load_prices(default_prices_path())
    exports = _exports_by_grant(sources.audit, sources.db, start, end)
    days = (end - start).days
    report = []
    for grant in sorted(sources.policies.grants(), key=lambda g: g.id):
        billable, not_billed = billable_days(sources.policies, sources.audit, sources.db, grant.id, start, end,
                                             prices)
        on = set(billable)
        charges = [c for c in sources.ledger.charges(grant.id) if start <= _ts(c.ts) < end]
        submitted = exports.get(grant.id, [])
        hours_all = sources.sessions.hours(grant.id, start, end)
        in_force = billable or set(not_billed) - {"not_applied", "outside_window", "revoked"}
        if not in_force and not (charges or submitted or hours_all):
            continue
        billed_charges = [c for c in charges if _ts(c.ts).date() in on]
        hours = sum(sources.sessions.hours(grant.id, _day(d), _day(d) + dt.timedelta(days=1)) for d in billable)
        metrics = {
            "queries": len(billed_charges),
            "epsilon_exact": Decimal(sum(c.epsilon_nano for c in billed_charges)) / NANO,
            "exports": sum(1 for x in submitted if x["ts"].date() in on and not x["withdrawn_by_authority"]),
            "hours_exact": Decimal(str(round(hours, 4))),
        }
        lines = _statement(metrics, days, len(billable), dict(not_billed), prices)
        total = sum((Decimal(line["amount"]) for line in lines), Decimal(0))
        report.append({
            "period": period,
            "grant": grant.id,
            "operator": grant.operator,
            "use": grant.use,
            "currency": prices.currency,
            "queries": len(charges),
            "epsilon": sum(c.epsilon_nano for c in charges) / NANO,
            "exports": len(submitted),
            "notebook_hours": round(hours_all, 4),
            "days": days,
            "billable_days": len(billable),
            "not_billed_days": dict(sorted(not_billed.items())),
            "lines": lines,
            "total": _money(total),
        })
    return report


def _day(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def format_csv(report: list[dict[str, Any]]) -> str:
    """The statements as CSV: one row per line item, then a ``total`` row per grant."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for st in report:
        base = {k: st[k] for k in ("period", "grant", "operator", "use", "currency")}
        for line in st["lines"]:
            writer.writerow({**base, **line})
        writer.writerow({**base, "item": "total", "description": "Total for the period", "quantity": "",
                         "unit_price": "", "amount": st["total"]})
    return out.getvalue()
