"""Usage metering and monthly price statements per grant (``sandbox usage report``).

Sources of truth, all in the state database:

- queries and epsilon: the ledger's ``charges`` (a cached replay costs nothing and writes no charge);
- exports: audit entries whose action starts with ``export.submitted`` (so the count does not depend on
  the exports module being installed);
- notebook hours: :meth:`SessionLog.hours` (a running session counts until now).

Amounts are exact decimals rounded half-up to cents, returned as strings (``"12.50"``) so that a report
serializes to JSON or CSV without any float rounding.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from decimal import ROUND_HALF_UP, Decimal

from sandbox.disclosure import status_changes
from sandbox.errors import BadRequest
from sandbox.policy.models import Grant
from sandbox.policy.prices import PriceSchedule, default_prices_path, load_prices
from sandbox.services import Services
from sandbox.state.ledger import NANO

PERIOD = re.compile(r"^(\d{4})-(\d{2})$")
CENT = Decimal("0.01")
CSV_FIELDS = ("period", "grant", "operator", "use", "item", "description", "quantity", "unit_price", "amount",
              "currency")


def parse_period(period: str) -> tuple[dt.datetime, dt.datetime]:
    """``YYYY-MM`` as the half-open UTC interval [first instant of the month, first of the next)."""
    match = PERIOD.match(period or "")
    year, month = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not match or not 1 <= month <= 12 or year < 1970:
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


def _in_force(grant: Grant, changed: dt.datetime | None, start: dt.datetime, end: dt.datetime) -> bool:
    """The grant's window overlaps the period and it was not already suspended/revoked when it began."""
    overlaps = grant.valid_from < end.date() and grant.valid_until >= start.date()
    stopped_before = grant.status != "active" and changed is not None and changed < start
    return overlaps and not stopped_before


def _exports_by_grant(services: Services, start: dt.datetime, end: dt.datetime) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in services.audit.entries(since=start.isoformat()):
        if entry["action"].startswith("export.submitted") and entry["grant_id"] and _ts(entry["ts"]) < end:
            counts[entry["grant_id"]] = counts.get(entry["grant_id"], 0) + 1
    return counts


def _quantity(value: Decimal) -> str:
    """Plain notation without trailing zeros: 1.5, 0, 100 (never 0E-9 or 1E+2)."""
    return format(value.normalize(), "f")


def _line(item: str, description: str, quantity: Decimal, unit_price: Decimal) -> dict:
    return {
        "item": item,
        "description": description,
        "quantity": _quantity(quantity),
        "unit_price": str(unit_price),
        "amount": _money(quantity * unit_price),
    }


def _statement(grant: Grant, metrics: dict, in_force: bool, prices: PriceSchedule) -> tuple[list[dict], str]:
    lines = []
    if in_force:
        lines.append(_line("monthly_base", "Monthly base fee (grant in force during the period)",
                           Decimal(1), prices.monthly_base))
    lines += [
        _line("queries", "Charged DP queries (cached replays are free)", Decimal(metrics["queries"]),
              prices.per_query),
        _line("epsilon", "Privacy budget spent (epsilon)", metrics["epsilon_exact"], prices.per_epsilon),
        _line("exports", "Export requests submitted for review", Decimal(metrics["exports"]), prices.per_export),
        _line("notebook_hours", "Notebook server hours", metrics["hours_exact"], prices.per_notebook_hour),
    ]
    subtotal = sum((Decimal(line["amount"]) for line in lines), Decimal(0))
    if grant.use == "public_welfare" and prices.public_welfare == "free":
        lines.append({
            "item": "public_welfare_waiver",
            "description": "Public-welfare use: free of charge under the price schedule (public_welfare: free)",
            "quantity": "1",
            "unit_price": _money(-subtotal),
            "amount": _money(-subtotal),
        })
        subtotal = Decimal(0)
    return lines, _money(subtotal)


def usage_report(services: Services, period: str, prices: PriceSchedule | None = None) -> list[dict]:
    """One statement per grant in force during ``period`` (``YYYY-MM``, UTC) or with usage in it.

    Each statement: ``period``, ``grant``, ``operator``, ``use``, ``currency``, the metrics ``queries``
    (charged), ``epsilon``, ``exports`` (submitted), ``notebook_hours``, then ``lines`` (each ``item``,
    ``description``, ``quantity``, ``unit_price``, ``amount``) and ``total``. Raises BadRequest for a bad
    period and PolicyError when no price schedule is given and ``policies/prices.yaml`` cannot be read.
    """
    start, end = parse_period(period)
    prices = prices or load_prices(default_prices_path())
    exports = _exports_by_grant(services, start, end)
    changed = status_changes(services.audit)
    report = []
    for grant in sorted(services.policies.grants(), key=lambda g: g.id):
        charges = [c for c in services.ledger.charges(grant.id) if start <= _ts(c.ts) < end]
        nano = sum(c.epsilon_nano for c in charges)
        hours = services.sessions.hours(grant.id, start, end)
        metrics = {
            "queries": len(charges),
            "epsilon_exact": Decimal(nano) / NANO,
            "exports": exports.get(grant.id, 0),
            "hours_exact": Decimal(str(round(hours, 4))),
        }
        in_force = _in_force(grant, changed.get(grant.id), start, end)
        if not in_force and not (charges or metrics["exports"] or hours):
            continue
        lines, total = _statement(grant, metrics, in_force, prices)
        report.append({
            "period": period,
            "grant": grant.id,
            "operator": grant.operator,
            "use": grant.use,
            "currency": prices.currency,
            "queries": metrics["queries"],
            "epsilon": nano / NANO,
            "exports": metrics["exports"],
            "notebook_hours": round(hours, 4),
            "lines": lines,
            "total": total,
        })
    return report


def format_csv(report: list[dict]) -> str:
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
