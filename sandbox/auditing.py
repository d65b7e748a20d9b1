"""What audit authorities read: the audit log searched and verified, grants with their history, usage.

Read-only by construction: nothing here opens a write transaction. Who may call it is decided by
``check_auditor`` (members of ``auditors`` or ``admins`` in roles.yaml).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from sandbox.errors import BadRequest, Forbidden, NotFound
from sandbox.policy.rules import effective_status
from sandbox.services import Services
from sandbox.state.audit import AuditEvent

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def can_audit(services: Services, user: str) -> bool:
    roles = services.policies.roles()
    return user in getattr(roles, "auditors", ()) or user in roles.admins


def check_auditor(services: Services, user: str) -> None:
    if not can_audit(services, user):
        raise Forbidden(f"{user} is not an auditor", code="not_auditor")


def check_no_data_access(services: Services, user: str, audit_action: str | None = None) -> None:
    """Auditors never reach data, even if a grant lists them by mistake (the refusal is audited)."""
    if user in getattr(services.policies.roles(), "auditors", ()):
        exc = Forbidden(f"{user} is an auditor: auditors have no data access", code="auditor_no_data_access")
        if audit_action:
            services.audit.record(AuditEvent(user, audit_action, None, {"code": exc.code, "status": exc.status}))
        raise exc


@dataclass(frozen=True)
class AuditQuery:
    action: str | None = None  # exact, or a prefix ending in '*' (e.g. ``grant.*``)
    grant: str | None = None
    actor: str | None = None
    since: str | None = None  # ISO date or date-time, inclusive
    until: str | None = None  # ISO date (whole day included) or date-time, exclusive
    limit: int = DEFAULT_LIMIT
    offset: int = 0


def _when(value: str | None, name: str, end_of_day: bool = False) -> str | None:
    if not value:
        return None
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value) + dt.timedelta(days=1 if end_of_day else 0)
            return dt.datetime.combine(day, dt.time(), dt.UTC).isoformat(timespec="microseconds")
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"`{name}` must be a date (2026-12-01) or an ISO date-time", code="bad_time") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _int(value: object, name: str, low: int, high: int, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(str(value))
    except ValueError:
        raise BadRequest(f"`{name}` must be a whole number", code="bad_parameter") from None
    if not low <= number <= high:
        raise BadRequest(f"`{name}` must be between {low} and {high}", code="bad_parameter")
    return number


def parse_query(args: dict) -> AuditQuery:
    return AuditQuery(
        action=(args.get("action") or None), grant=(args.get("grant") or None), actor=(args.get("actor") or None),
        since=_when(args.get("since"), "since"), until=_when(args.get("until"), "until", end_of_day=True),
        limit=_int(args.get("limit"), "limit", 1, MAX_LIMIT, DEFAULT_LIMIT),
        offset=_int(args.get("offset"), "offset", 0, 10**12, 0),
    )


def search(services: Services, q: AuditQuery) -> dict:
    """Entries matching every filter given, newest first, with the total count for paging."""
    where, params = [], []
    if q.action:
        if q.action.endswith("*"):
            where.append("action LIKE ? ESCAPE '\\'")
            params.append(q.action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        else:
            where.append("action = ?")
            params.append(q.action)
    for column, value in (("grant_id", q.grant), ("actor", q.actor)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if q.since:
        where.append("ts >= ?")
        params.append(q.since)
    if q.until:
        where.append("ts < ?")
        params.append(q.until)
    clause = (" WHERE " + " AND ".join(where)) if where else ""
    total = services.db.read(f"SELECT COUNT(*) AS n FROM audit{clause}", tuple(params))[0]["n"]
    rows = services.db.read(f"SELECT * FROM audit{clause} ORDER BY seq DESC LIMIT ? OFFSET ?",
                            (*params, q.limit, q.offset))
    entries = []
    for row in rows:
        item = dict(row)
        item["detail"] = json.loads(item["detail"])
        entries.append(item)
    return {"total": total, "limit": q.limit, "offset": q.offset, "entries": entries}


def verify(services: Services) -> dict:
    result = services.audit.verify()
    problems = [*result.problems, *services.ledger.reconcile()]
    return {"ok": not problems, "entries": result.entries, "head": result.head, "problems": problems}


def grants_overview(services: Services) -> list[dict]:
    today = services.today()
    out = []
    for record in services.policies.grant_records():
        grant = record["grant"]
        try:
            budget = services.ledger.state(grant.id).to_dict()
        except NotFound:
            budget = None
        out.append({
            "id": grant.id, "operator": grant.operator, "use": grant.use, "mode": grant.mode,
            "purpose": grant.purpose, "members": list(grant.members), "stored_status": grant.status,
            "status": effective_status(grant, today), "status_reason": record["status_reason"],
            "valid_from": grant.valid_from.isoformat(), "valid_until": grant.valid_until.isoformat(),
            "applied_at": record["applied_at"], "updated_at": record["updated_at"], "budget": budget,
            "datasets": {k: list(v.columns) for k, v in grant.datasets.items()},
        })
    return out


def grant_history(services: Services, grant_id: str) -> dict:
    """The grant as in force and every grant.* entry of the audit log about it, oldest first."""
    grant = next((g for g in grants_overview(services) if g["id"] == grant_id), None)
    if grant is None:
        raise NotFound(f"no grant {grant_id}", code="unknown_grant")
    rows = services.db.read("SELECT * FROM audit WHERE grant_id = ? AND action LIKE 'grant.%' ORDER BY seq",
                            (grant_id,))
    history = [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]
    return {"grant": grant, "history": history}
