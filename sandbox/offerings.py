"""Disclosure by operators: the products and service capabilities each grant's operator declares,
reviewed by the authority, published on the register with the grant's use per quarter.

One transition table (``TRANSITIONS``): submitted -> approved | rejected (admins, never the operator);
submitted or approved -> withdrawn (a member of the grant). Only approved items are published. Every
move is one SQLite transaction with its audit entry.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation

from sandbox.errors import BadRequest, Conflict, Forbidden, NotFound, PolicyError
from sandbox.fields import text_field
from sandbox.policy.models import Grant
from sandbox.policy.rules import check_grant_fits_catalog, effective_status
from sandbox.services import Services
from sandbox.state import offerings_store as store
from sandbox.state.audit import AuditEvent
from sandbox.state.db import StateDB
from sandbox.state.grants_store import GrantRecord, PolicyStore

KINDS = {"product": "Data product", "service": "Service capability"}
TRANSITIONS: dict[str, dict[str, str]] = {
    "submitted": {"approve": "approved", "reject": "rejected", "withdraw": "withdrawn"},
    "approved": {"withdraw": "withdrawn"},
    "rejected": {},
    "withdrawn": {},
}
BY_AUTHORITY = ("approve", "reject")
MAX_NAME = 200
MAX_DESCRIPTION = 2000


def next_status(status: str, action: str) -> str:
    try:
        return TRANSITIONS[status][action]
    except KeyError:
        raise Conflict(f"a declaration that is {status} cannot be {action}d", code="illegal_transition") from None


def _member_grant(services: Services, grant_id: object, user: str) -> Grant:
    if not isinstance(grant_id, str) or not grant_id:
        raise BadRequest("`grant` is required", code="missing_grant")
    try:
        grant = services.policies.grant(grant_id)
    except NotFound:
        raise Forbidden(f"no grant {grant_id} for {user}", code="not_a_member") from None
    if user not in grant.members:
        raise Forbidden(f"{user} is not a member of grant {grant_id}", code="not_a_member")
    if grant.status == "revoked":
        raise Forbidden(f"grant {grant_id} has been revoked", code="grant_revoked")
    return grant


def _members(services: Services, grant_id: str) -> tuple[str, ...]:
    try:
        return tuple(services.policies.grant(grant_id).members)
    except NotFound:
        return ()


def parse_price(value: object) -> Decimal | None:
    """A price as an exact decimal string (``"120.00"``); None when not given."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest("`price` must be a decimal written as a string, e.g. \"120.00\"", code="bad_price")
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise BadRequest("`price` must be a decimal, e.g. \"120.00\"", code="bad_price") from None
    if not price.is_finite() or price < 0 or price.as_tuple().exponent < -2:  # type: ignore[operator]
        raise BadRequest("`price` must be zero or more, with at most two decimals", code="bad_price")
    return price


def declare(services: Services, user: str, body: dict) -> int:
    """A member of the grant declares a product or service capability; it waits for the authority."""
    grant = _member_grant(services, body.get("grant"), user)
    kind = body.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise BadRequest("`kind` must be product or service", code="bad_kind")
    name = text_field(body.get("name"), "name", MAX_NAME)
    description = text_field(body.get("description"), "description", MAX_DESCRIPTION)
    price = parse_price(body.get("price"))
    free = body.get("free_to_public", False)
    if not isinstance(free, bool):
        raise BadRequest("`free_to_public` must be true or false", code="bad_free_to_public")
    if free and price not in (None, Decimal(0)):
        raise BadRequest("a product free to the public has no price", code="bad_price")
    check_price_ceiling(services, kind, price)
    with services.db.work() as work:
        conn = work.conn
        offering_id = store.insert(conn, {
            "grant_id": grant.id, "kind": kind, "name": name, "description": description,
            "price": None if price is None else str(price), "free_to_public": int(free), "status": "submitted",
            "submitted_by": user, "submitted_at": store.now(),
        })
        services.audit.append(conn, AuditEvent(user, "offering.submitted", grant.id, {
            "offering": offering_id, "kind": kind, "name": name, "price": None if price is None else str(price),
            "free_to_public": free,
        }))
    return offering_id


def check_price_ceiling(services: Services, kind: str, price: Decimal | None) -> None:
    """An operator's price never exceeds the authority's ceiling for that kind (when a schedule is set)."""
    if price is None:
        return
    try:
        from sandbox.pricing import ceiling_for
    except ImportError:  # pragma: no cover - pricing not installed
        return
    ceiling = ceiling_for(services, kind)
    if ceiling is not None and price > ceiling.amount:
        raise BadRequest(f"the price {price} exceeds the authority's ceiling of {ceiling.amount} {ceiling.currency} "
                         f"for a {kind}", code="over_price_ceiling")


def act(services: Services, offering_id: int, user: str, action: object, comment: object = None) -> str:
    if action not in ("approve", "reject", "withdraw"):
        raise BadRequest("`decision` must be approve, reject or withdraw", code="bad_decision")
    note = text_field(comment, "comment", MAX_DESCRIPTION, required=action == "reject")
    if not 0 < offering_id < 2**63:  # SQLite integers: anything else names no declaration
        raise NotFound(f"no declaration {offering_id}", code="unknown_offering")
    with services.db.work() as work:
        conn = work.conn
        row = store.get(conn, offering_id)
        if row is None:
            raise NotFound(f"no declaration {offering_id}", code="unknown_offering")
        if action in BY_AUTHORITY:
            if user not in services.policies.roles().admins:
                raise Forbidden(f"{user} is not an admin: the authority reviews declarations", code="not_admin")
            if user == row["submitted_by"] or user in _members(services, row["grant_id"]):
                raise Forbidden(f"{user} declared this or is a member of grant {row['grant_id']}: "
                                "another admin reviews it", code="own_declaration")
        else:
            _member_grant(services, row["grant_id"], user)
        new = next_status(row["status"], action)
        fields: dict[str, object] = {"status": new}
        if action in BY_AUTHORITY:
            fields.update(reviewed_by=user, reviewed_at=store.now(), review_comment=note or None)
        store.update(conn, offering_id, **fields)
        services.audit.append(conn, AuditEvent(user, f"offering.{new}", row["grant_id"], {
            "offering": offering_id, "from": row["status"], "to": new, **({"comment": note} if note else {}),
        }))
    return new


def for_grant(services: Services, grant_id: str, user: str) -> list[dict]:
    """Every declaration of a grant, for its members and the authority."""
    grant = services.policies.grant(grant_id)
    if user not in grant.members and user not in services.policies.roles().admins:
        raise Forbidden(f"{user} is not a member of grant {grant_id}", code="not_a_member")
    return store.listing(services.db.conn, grant_id=grant_id)


def pending_review(services: Services, user: str) -> list[dict]:
    if user not in services.policies.roles().admins:
        raise Forbidden(f"{user} is not an admin", code="not_admin")
    return store.listing(services.db.conn, statuses=("submitted",))


def published(services: Services, grant_id: str) -> list[dict]:
    """What the register shows: approved declarations only, without who submitted or reviewed them."""
    return [
        {"id": r["id"], "kind": r["kind"], "kind_label": KINDS[r["kind"]], "name": r["name"],
         "description": r["description"], "price": r["price"], "free_to_public": bool(r["free_to_public"]),
         "approved": (r["reviewed_at"] or "")[:10]}
        for r in store.listing(services.db.conn, grant_id=grant_id, statuses=("approved",))
    ]


# -- the grant's public record ----------------------------------------------------------------------
def out_of_policy(policies: PolicyStore, grant: Grant) -> str | None:
    """Why a grant no longer fits the catalog (a dataset reclassified, removed, a column gone), or None."""
    try:
        check_grant_fits_catalog(grant, policies.datasets())
    except PolicyError as exc:
        return exc.message
    return None


def public_status(services: Services, grant: Grant) -> str:
    """The register's status: ``out_of_policy`` replaces ``active`` when the grant no longer fits."""
    status = effective_status(grant, services.today())
    if status == "active" and out_of_policy(services.policies, grant) is not None:
        return "out_of_policy"
    return status


def quarter_of(day: dt.date) -> str:
    return f"{day.year}-Q{(day.month - 1) // 3 + 1}"


def _quarter_bounds(label: str) -> tuple[dt.datetime, dt.datetime]:
    year, q = int(label[:4]), int(label[-1])
    start = dt.datetime(year, 3 * (q - 1) + 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + (q == 4), (3 * q) % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end


def quarterly_use(services: Services, grant_id: str, applied_at: str) -> list[dict]:
    """Per quarter from the one the grant was applied in to today's: queries charged, epsilon spent,
    exports released and notebook hours."""
    first = dt.datetime.fromisoformat(applied_at).date()
    today = services.today()
    labels: list[str] = []
    day = dt.date(first.year, 3 * ((first.month - 1) // 3) + 1, 1)
    while day <= today and len(labels) < 200:
        labels.append(quarter_of(day))
        day = dt.date(day.year + (day.month + 3 > 12), (day.month + 2) % 12 + 1, 1)
    charges = services.ledger.charges(grant_id)
    released = [e.ts for e in services.audit.iter_entries(actions=("export.released",), grant_id=grant_id)]
    out = []
    for label in labels:
        start, end = _quarter_bounds(label)
        mine = [c for c in charges if start <= _utc(c.ts) < end]
        out.append({
            "quarter": label,
            "queries": len(mine),
            "epsilon": round(sum(c.epsilon_nano for c in mine) / 1e9, 9),
            "exports_released": sum(1 for ts in released if start <= _utc(ts) < end),
            "notebook_hours": round(services.sessions.hours(grant_id, start, end), 2),
        })
    return out


def _utc(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


GENERIC_SUSPENSION = "suspended by the authority; no public reason given yet"


def publish_reason(services: Services, grant_id: str, actor: str, text: str) -> None:
    """Publish why a grant is suspended or revoked (``sandbox grants publish-reason``), audited.

    Suspension reasons recorded with ``grants suspend --reason`` stay in the audit log only (they
    may name people); a revocation's ``--reason`` is published as the CLI promises.
    """
    text = text_field(text, "reason", 500)
    grant = services.policies.grant(grant_id)
    if grant.status == "active":
        raise Conflict(f"grant {grant_id} is active: there is no suspension or revocation to explain",
                       code="grant_active")
    with services.db.work() as work:
        conn = work.conn
        store.add_notice(conn, grant_id, grant.status, text, actor)
        services.audit.append(conn, AuditEvent(actor, "grant.reason_published", grant_id,
                                               {"status": grant.status, "reason": text}))


def public_reason(db: StateDB, record: GrantRecord) -> str | None:
    """The published reason for a suspension or revocation (None while active).

    Only text published on purpose is shown: a notice (``grants publish-reason``, an automatic
    suspension's rule, the emergency stop) or a revocation's ``--reason``, given for the status in
    force and recorded after it was set. The stored ``status_reason`` is never published: it may
    name people (a suspension's ``--reason``, an emergency stop's reason).
    """
    status = record.grant.status
    if status == "active":
        return None
    notice = store.latest_notice(db.conn, record.grant.id, status)
    if notice is not None and _utc(notice["ts"]) >= _utc(record.updated_at).replace(microsecond=0):
        return notice["text"]
    return "revoked by the authority" if status == "revoked" else GENERIC_SUSPENSION


def grant_record(services: Services, grant_id: str) -> dict:
    """A grant's public record: the register's facts, its status and reason, declarations, use per quarter."""
    record = next((r for r in services.policies.grant_records() if r.grant.id == grant_id), None)
    if record is None:
        raise NotFound(f"no grant {grant_id}", code="unknown_grant")
    grant: Grant = record.grant
    return {
        "id": grant.id, "operator": grant.operator, "use": grant.use, "mode": grant.mode,
        "purpose": grant.purpose, "valid_from": grant.valid_from.isoformat(),
        "valid_until": grant.valid_until.isoformat(), "status": public_status(services, grant),
        "status_reason": public_reason(services.db, record),
        "out_of_policy": out_of_policy(services.policies, grant),
        "datasets": {k: list(v.columns) for k, v in sorted(grant.datasets.items())},
        "offerings": published(services, grant.id),
        "use_by_quarter": quarterly_use(services, grant.id, record.applied_at),
    }
