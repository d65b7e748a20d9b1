"""Attack from the independent review of issue 12 on billing: declarations approved or withdrawn
today must not rewrite past statements (public-welfare freeness is effective-dated per day)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from contextlib import closing

from sandbox import offerings
from sandbox.services import Services
from sandbox.usage import usage_report
from sandbox.wiring import usage_sources

GRANT = "g-2026-001"


def _statement(services: Services, period: str) -> tuple[int, dict, str]:
    st = next(s for s in usage_report(usage_sources(services), period) if s["grant"] == GRANT)
    return st["billable_days"], st["not_billed_days"], st["total"]


def test_offering_changes_never_bill_past_months(services: Services) -> None:
    with closing(sqlite3.connect(services.db.path, isolation_level=None)) as raw:  # back-date (test setup)
        raw.execute("UPDATE grants SET applied_at = '2020-01-01T00:00:00+00:00'")
    today = dt.datetime.now(dt.UTC)
    last = today.replace(day=1) - dt.timedelta(days=1)
    past = f"{last.year:04d}-{last.month:02d}"
    before = _statement(services, past)
    assert before[0] == 0 and set(before[1]) == {"public_welfare"}  # public welfare, no products: free
    oid = offerings.declare(services, "alice", {"grant": GRANT, "kind": "product", "name": "Risk score API",
                                                "description": "paid", "price": "100.00"})
    offerings.act(services, oid, "admin", "approve")
    assert _statement(services, past) == before  # the approval is effective from its moment only
    this = _statement(services, f"{today.year:04d}-{today.month:02d}")
    assert this[1].get("public_welfare", 0) >= today.day  # every day up to today started free
    offerings.act(services, oid, "alice", "withdraw")
    assert _statement(services, past) == before
