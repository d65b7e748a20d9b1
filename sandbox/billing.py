"""Which days of a month a grant is billable, reconstructed from the audit log (effective-dated terms).

A grant's terms are what was in force at each moment: the body applied first (from the moment the
grants table says it was applied), then every ``grant.changed`` from the moment it was recorded,
and every suspension, resumption and revocation from its moment. The catalog is rebuilt backwards
from what is in force through each ``dataset.changed``. Nothing is ever applied before the moment
it was recorded, so a change is never billed retroactively.

A day is billable only if, at its start (or at the moment the grant was applied, that day) and at
every change during it, the grant was applied, inside its validity window, active (not suspended or
revoked), in policy (it fits the catalog), and not free public-welfare use. Days after today are
judged by the state in force now.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sandbox.errors import PolicyError
from sandbox.policy.models import Dataset, Grant
from sandbox.policy.prices import PriceSchedule
from sandbox.policy.rules import check_grant_fits_catalog
from sandbox.state import offerings_store
from sandbox.state.audit import AuditLog
from sandbox.state.db import StateDB
from sandbox.state.grants_store import PolicyStore

STATUS_ACTIONS = {"grant.suspended": "suspended", "grant.revoked": "revoked", "grant.resumed": "active"}


def _ts(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def parse_change(line: str) -> tuple[list[str], object, object]:
    """A diff line ``a.b: OLD -> NEW`` (values in JSON) as (path, old, new)."""
    path, _, rest = line.partition(": ")
    start = 0
    while True:
        at = rest.find(" -> ", start)
        if at < 0:
            raise ValueError(f"not a change line: {line!r}")
        try:
            return path.split("."), json.loads(rest[:at]), json.loads(rest[at + 4:])
        except ValueError:
            start = at + 1


def _set(body: dict[str, Any], path: list[str], value: object) -> None:
    node = body
    for key in path[:-1]:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            node[key] = nxt
        node = nxt
    if value is None:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@dataclass
class Timeline:
    """A grant's terms and the catalog as they were at any moment."""

    applied_at: dt.datetime
    grant_points: list[tuple[dt.datetime, dict[str, Any]]] = field(default_factory=list)  # (from, body), ascending
    catalog_now: dict[str, dict[str, Any]] = field(default_factory=dict)
    catalog_changes: list[tuple[dt.datetime, str, list[tuple[list[str], object, object]]]] = field(default_factory=list)
    # approved products not free to the public: (moment, offering id, approved?) ascending
    priced_products: list[tuple[dt.datetime, int, bool]] = field(default_factory=list)

    def priced_at(self, moment: dt.datetime) -> bool:
        """Whether an approved product not free to the public was published at that moment."""
        live: set[int] = set()
        for since, offering, approved in self.priced_products:
            if since <= moment:
                (live.add if approved else live.discard)(offering)
        return bool(live)

    def grant_at(self, moment: dt.datetime) -> dict[str, Any] | None:
        body = None
        for since, b in self.grant_points:
            if since <= moment:
                body = b
        return body

    def catalog_at(self, moment: dt.datetime) -> dict[str, Dataset]:
        bodies = json.loads(json.dumps(self.catalog_now))
        for ts, ds_id, changes in reversed(self.catalog_changes):
            if ts <= moment or ds_id not in bodies:
                continue
            for path, old, _new in changes:
                _set(bodies[ds_id], path, old)
        out = {}
        for ds_id, body in bodies.items():
            try:
                out[ds_id] = Dataset.model_validate(body, context={"stored": True})
            except ValueError:
                continue
        return out

    def moments(self) -> list[dt.datetime]:
        return sorted({t for t, _ in self.grant_points} | {t for t, _, _ in self.catalog_changes}
                      | {t for t, _, _ in self.priced_products})


def timeline(policies: PolicyStore, audit: AuditLog, db: StateDB, grant_id: str) -> Timeline | None:
    record = next((r for r in policies.grant_records() if r.grant.id == grant_id), None)
    if record is None:
        return None
    tl = Timeline(applied_at=_ts(record.applied_at))
    body: dict[str, Any] | None = None
    for row in audit.iter_entries(grant_id=grant_id, action_prefix="grant."):
        detail = row.detail
        if row.action == "grant.created" and isinstance(detail.get("grant"), dict):
            body = detail["grant"]
            tl.grant_points.append((tl.applied_at, json.loads(json.dumps(body))))
            continue
        if body is None:
            continue
        body = json.loads(json.dumps(body))
        if row.action == "grant.changed":
            for line in detail.get("changes", ()):
                try:
                    path, _old, new = parse_change(str(line))
                except ValueError:
                    continue
                _set(body, path, new)
        elif row.action in STATUS_ACTIONS:
            body["status"] = STATUS_ACTIONS[row.action]
        else:
            continue
        tl.grant_points.append((max(_ts(row.ts), tl.applied_at), body))
    if not tl.grant_points:  # no creation entry: the terms in force, from the moment they were applied
        tl.grant_points.append((tl.applied_at, record.grant.model_dump(mode="json")))
    tl.catalog_now = {ds_id: ds.model_dump(mode="json") for ds_id, ds in policies.datasets().items()}
    for entry in audit.iter_entries(actions=("dataset.changed",)):
        detail = entry.detail
        changes = []
        for line in detail.get("changes", ()):
            try:
                changes.append(parse_change(str(line)))
            except ValueError:
                continue
        tl.catalog_changes.append((_ts(entry.ts), str(detail.get("dataset")), changes))
    tl.priced_products = _priced_product_events(audit, db, grant_id)
    return tl


def _priced_product_events(audit: AuditLog, db: StateDB, grant_id: str) -> list[tuple[dt.datetime, int, bool]]:
    """When each priced product of the grant was approved and withdrawn, from the audit log (a change
    of the grant's declarations is effective from that moment, never retroactively)."""
    try:
        priced = {p.id for p in offerings_store.product_prices(db.conn, grant_id)
                  if not p.free_to_public and p.price is not None and Decimal(p.price) != 0}
    except sqlite3.Error:  # the offerings module is not installed
        return []
    events = []
    for entry in audit.iter_entries(grant_id=grant_id, actions=("offering.approved", "offering.withdrawn")):
        offering = entry.detail.get("offering")
        if isinstance(offering, int) and offering in priced:
            events.append((_ts(entry.ts), offering, entry.action == "offering.approved"))
    return events


def welfare_free(grant: Grant, prices: PriceSchedule, priced_products: bool) -> tuple[bool, str]:
    """Whether public-welfare use is free under the schedule's conditions, and why not."""
    if grant.use != "public_welfare":
        return False, "commercial use"
    if prices.public_welfare != "free":
        return False, "the schedule prices public-welfare use like commercial use"
    cond = prices.public_welfare_conditions
    if grant.purpose_category not in cond.purpose_categories:
        return False, (f"purpose category {grant.purpose_category or '(none declared)'!r} is not one of "
                       f"{', '.join(cond.purpose_categories)}")
    if cond.products_free_to_public and priced_products:
        return False, "an approved product is not free to the public"
    return True, "public-welfare use meeting the conditions"


def state_at(tl: Timeline, moment: dt.datetime, prices: PriceSchedule, priced_products: bool) -> str:
    """``billable`` or why not: not_applied, outside_window, suspended, revoked, out_of_policy, public_welfare."""
    if moment < tl.applied_at:
        return "not_applied"
    body = tl.grant_at(moment)
    if body is None:
        return "not_applied"
    try:
        grant = Grant.model_validate(body)
    except ValueError:
        return "not_applied"
    if not grant.valid_from <= moment.date() <= grant.valid_until:
        return "outside_window"
    if grant.status != "active":
        return grant.status
    try:
        check_grant_fits_catalog(grant, tl.catalog_at(moment))
    except PolicyError:
        return "out_of_policy"
    if welfare_free(grant, prices, priced_products or tl.priced_at(moment))[0]:
        return "public_welfare"
    return "billable"


def billable_days(policies: PolicyStore, audit: AuditLog, db: StateDB, grant_id: str, start: dt.datetime,
                  end: dt.datetime, prices: PriceSchedule,
                  priced_products: bool = False) -> tuple[list[dt.date], Counter[str]]:
    """The billable days in [start, end) and, for the others, a count per reason (the first found that day)."""
    tl = timeline(policies, audit, db, grant_id)
    if tl is None:
        return [], Counter()
    return classify_days(tl, start, end, prices, priced_products)


def classify_days(tl: Timeline, start: dt.datetime, end: dt.datetime, prices: PriceSchedule,
                  priced_products: bool = False) -> tuple[list[dt.date], Counter[str]]:
    """:func:`billable_days` over a timeline already built."""
    days: list[dt.date] = []
    reasons: Counter[str] = Counter()
    moments = tl.moments()
    day = start
    while day < end:
        nxt = day + dt.timedelta(days=1)
        first = max(day, tl.applied_at) if tl.applied_at < nxt else day
        samples = [first, *[m for m in moments if first < m < nxt]]
        states = [state_at(tl, m, prices, priced_products) for m in samples]
        bad = next((s for s in states if s != "billable"), None)
        if bad is None:
            days.append(day.date())
        else:
            reasons[bad] += 1
        day = nxt
    return days, reasons
