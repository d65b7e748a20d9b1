"""The public disclosure register: who holds which grant, for what, until when, and what was released.

Everything here is safe to publish: the operator institution (never members' user names), mode, purpose,
datasets and columns, validity, status (``out_of_policy`` when an active grant no longer fits the catalog),
the published reason of a suspension or revocation (``sandbox.offerings.public_reason``), and released
data-product titles and how many failed export checks an admin overrode. No budgets, no data values.
Each grant's declarations and use per quarter are in ``sandbox.offerings``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import sqlite3
from typing import Any

from sandbox.errors import BadRequest
from sandbox.policy.rules import effective_status
from sandbox.state import exports_repo
from sandbox.state.audit import AuditLog
from sandbox.state.db import StateDB
from sandbox.state.grants_store import PolicyStore

STATUS_ACTIONS = ("grant.created", "grant.changed", "grant.suspended", "grant.revoked", "grant.resumed")
CSV_FIELDS = ("grant", "operator", "use", "mode", "purpose", "datasets", "valid_from", "valid_until", "status",
              "status_changed", "reviewers_required", "applied", "released_products")
USE_LABELS = {"commercial": "Commercial", "public_welfare": "Public welfare"}


def status_changes(audit: AuditLog) -> dict[str, dt.datetime]:
    """When each grant's stored status (active/suspended/revoked) last changed, from the audit log."""
    changed: dict[str, dt.datetime] = {}
    for entry in audit.iter_entries(actions=STATUS_ACTIONS):
        detail = entry.detail
        if entry.action == "grant.created":
            moved = detail.get("grant", {}).get("status", "active") != "active"
        elif entry.action == "grant.changed":
            moved = any(str(c).startswith("status:") for c in detail.get("changes", ()))
        else:
            moved = True
        if moved and entry.grant_id:
            changed[entry.grant_id] = dt.datetime.fromisoformat(entry.ts)
    return changed


def grant_entries(policies: PolicyStore, audit: AuditLog, db: StateDB, today: dt.date) -> list[dict[str, Any]]:
    """Every grant ever applied, as the register shows it (status as of ``today``)."""
    from sandbox.offerings import out_of_policy, public_reason

    titles = {ds_id: ds.title for ds_id, ds in policies.datasets().items()}
    changed = status_changes(audit)
    overrides = override_counts(db)
    entries = []
    for record in policies.grant_records():
        grant = record.grant
        status = effective_status(grant, today)
        if status == "active" and out_of_policy(policies, grant) is not None:
            status = "out_of_policy"
        status_changed = None
        if status in ("revoked", "suspended"):
            when = changed.get(grant.id)
            status_changed = when.date().isoformat() if when else record.updated_at[:10]
        entries.append({
            "id": grant.id,
            "operator": grant.operator,
            "use": grant.use,
            "mode": grant.mode,
            "purpose": grant.purpose,
            "datasets": [
                {"id": ds_id, "title": titles.get(ds_id, ds_id), "columns": list(granted.columns)}
                for ds_id, granted in sorted(grant.datasets.items())
            ],
            "valid_from": grant.valid_from.isoformat(),
            "valid_until": grant.valid_until.isoformat(),
            "status": status,
            "status_changed": status_changed,
            "status_reason": public_reason(db, record),
            "reviewers_required": grant.exports.reviewers_required,
            "check_overrides": overrides.get(grant.id, 0),
            "applied": record.applied_at[:10],
        })
    return entries


def override_counts(db: StateDB) -> dict[str, int]:
    """Per grant, how many times an admin overrode failed export checks (a count, never the reasons)."""
    return exports_repo.override_counts(db.conn)


def released_products(db: StateDB) -> list[dict[str, str]]:
    """Data products released through the export airlock: ``title``, ``date`` (YYYY-MM-DD), ``grant``.

    Returns [] when the export tables cannot be read or nothing has been released yet.
    """
    conn = db.conn
    try:
        requests = exports_repo.list_requests(conn, statuses=("released",), limit=1_000_000)
        products = []
        for req in requests:
            released = [e.ts for e in exports_repo.events(conn, req.id) if e.to_status == "released"]
            when = released[0] if released else req.updated_at
            products.append({"title": req.title, "date": when[:10], "grant": req.grant_id})
    except (sqlite3.Error, AttributeError, KeyError, TypeError):
        return []
    return sorted(products, key=lambda p: (p["date"], p["grant"], p["title"]))


def register(policies: PolicyStore, audit: AuditLog, db: StateDB, today: dt.date) -> dict[str, Any]:
    """The whole register as of ``today``, as ``/public/grants.json`` serves it."""
    return {
        "as_of": today.isoformat(),
        "grants": grant_entries(policies, audit, db, today),
        "released_products": released_products(db),
    }


def parse_year(value: str | None, default: int) -> int:
    """A ``?year=`` parameter; raises BadRequest(bad_year) unless it is a four-digit year."""
    if value is None or value == "":
        return default
    if not (value.isdigit() and len(value) == 4 and int(value) >= 1970):
        raise BadRequest(f"year must be a four-digit year such as 2026 (got {value!r})", code="bad_year")
    return int(value)


def in_force_during(entry: dict[str, Any], year: int) -> bool:
    """The grant's window overlaps ``year`` and it was not already suspended/revoked before the year began."""
    first, last = f"{year}-01-01", f"{year}-12-31"
    overlaps = entry["valid_from"] <= last and entry["valid_until"] >= first
    stopped_before = entry["status"] in ("revoked", "suspended") and (entry["status_changed"] or last) < first
    return overlaps and not stopped_before


def _cell(value: object) -> str:
    """Text safe to open in a spreadsheet: a leading =, +, -, @ is not read as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def register_csv(policies: PolicyStore, audit: AuditLog, db: StateDB, today: dt.date, year: int) -> str:
    """The yearly disclosure export: grants in force at any time during ``year``, one row each
    (statuses as of ``today``)."""
    products = [p for p in released_products(db) if p["date"].startswith(f"{year}-")]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for e in grant_entries(policies, audit, db, today):
        if not in_force_during(e, year):
            continue
        datasets = "; ".join(f"{d['title']} ({d['id']}): {', '.join(d['columns'])}" for d in e["datasets"])
        released = "; ".join(f"{p['date']} {p['title']}" for p in products if p["grant"] == e["id"])
        row = (e["id"], e["operator"], USE_LABELS.get(e["use"], e["use"]), e["mode"], e["purpose"], datasets,
               e["valid_from"], e["valid_until"], e["status"], e["status_changed"], e["reviewers_required"],
               e["applied"], released)
        writer.writerow([_cell(v) for v in row])
    return out.getvalue()
