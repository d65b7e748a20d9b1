"""Tracked cases: requests to open a resource, feedback, complaints, and operators' data-quality reports.

One transition table (``TRANSITIONS``): open -> in_progress (an owner takes it) -> answered (a response
is written) -> closed; answered may be reopened. Only the authority (admins) moves a case; every
move is one SQLite transaction with its audit entry. What is published: kind, resource, subject,
status, dates and the authority's response; never the message or the contact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import statistics

from sandbox.errors import BadRequest, Conflict, Forbidden, NotFound, SandboxError
from sandbox.fields import text_field
from sandbox.oversight import settings_of, state_key
from sandbox.policy.rules import can_use_grant
from sandbox.services import Services
from sandbox.state import cases_store as store
from sandbox.state.audit import AuditEvent

KINDS = {
    "open_request": "Request to open a data resource",
    "feedback": "Feedback",
    "complaint": "Complaint",
    "data_quality": "Data-quality report",
}
PUBLIC_KINDS = ("open_request", "feedback", "complaint")
STATUSES = ("open", "in_progress", "answered", "closed")
TRANSITIONS: dict[str, dict[str, str]] = {
    "open": {"assign": "in_progress", "respond": "answered", "close": "closed"},
    "in_progress": {"assign": "in_progress", "respond": "answered", "close": "closed"},
    "answered": {"respond": "answered", "reopen": "in_progress", "close": "closed"},
    "closed": {},
}
AUDIT_ACTIONS = {"file": "case.filed", "assign": "case.assigned", "respond": "case.answered",
                 "reopen": "case.reopened", "close": "case.closed"}
MAX_SUBJECT = 200
MAX_CONTACT = 200


class RateLimited(SandboxError):
    """Too many filings from one client or in total (429)."""

    status = 429
    code = "rate_limited"


# -- policy -------------------------------------------------------------------------------------
def next_status(status: str, action: str) -> str:
    try:
        return TRANSITIONS[status][action]
    except KeyError:
        raise Conflict(f"a case that is {status} cannot be {action}ed", code="illegal_transition") from None


def can_act(status: str, action: str) -> bool:
    return action in TRANSITIONS.get(status, {})


def check_authority(services: Services, user: str) -> None:
    if user not in services.policies.roles().admins:
        raise Forbidden(f"{user} is not an admin: only the authority handles cases", code="not_admin")


def _networks(address: str) -> tuple[str, str]:
    """(client, network) for rate limits: an IPv4 address and its /24; an IPv6 client is its /64
    (one subscriber usually holds a whole /64), and so is its network."""
    try:
        ip = ipaddress.ip_address(address.strip().split("%", 1)[0])
    except ValueError:
        return address, address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip), str(ipaddress.ip_network(f"{ip}/24", strict=False))
    net = str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return net, net


def _keyed(services: Services, text: str) -> str:
    key = state_key(services.db.dir, "oversight")
    return hmac.new(key, text.encode("utf-8", "backslashreplace"), hashlib.sha256).hexdigest()[:16]


def client_key(services: Services, address: str) -> str:
    """A keyed hash of the client (an IPv4 address, an IPv6 /64): enough to rate-limit, useless to
    identify anyone."""
    return _keyed(services, _networks(address)[0])


def filing_key(services: Services, address: str) -> str:
    """What a public filing stores: the keyed hash of the client's network (IPv4 /24, IPv6 /64), then
    the keyed hash of the client, so both limits read one column."""
    client, network = _networks(address)
    return _keyed(services, network) + _keyed(services, client)


def _since(hours: float) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)).isoformat(timespec="seconds")


# -- filing -------------------------------------------------------------------------------------
def file_public(services: Services, kind: object, form: dict, client_address: str) -> str:
    """A request, feedback or complaint from anyone (no login). Returns the case id."""
    if not isinstance(kind, str) or kind not in PUBLIC_KINDS:
        raise BadRequest(f"`kind` must be one of {', '.join(PUBLIC_KINDS)}", code="bad_kind")
    cfg = settings_of(services)
    datasets = services.policies.datasets()
    ds_id = form.get("dataset") or None
    if ds_id is not None and (not isinstance(ds_id, str) or ds_id not in datasets):
        raise BadRequest("`dataset` is not a registered resource", code="unknown_dataset")
    if kind == "open_request":
        if ds_id is None:
            raise BadRequest("a request to open data names the resource (`dataset`)", code="missing_dataset")
        if datasets[ds_id].classification == "L1":
            raise Conflict(f"{ds_id} is already open data: download it from the directory", code="already_open")
    subject = text_field(form.get("subject"), "subject", MAX_SUBJECT)
    body = text_field(form.get("message"), "message", cfg.max_case_text)
    contact = text_field(form.get("contact"), "contact", MAX_CONTACT, required=False) or None
    client = filing_key(services, client_address)
    with services.db.work() as work:
        conn = work.conn
        if store.filed_since(conn, _since(1), client) >= cfg.public_filings_per_client_hour:
            raise RateLimited("too many filings from your address in the last hour; try again later")
        # no one network (IPv4 /24, IPv6 /64) may take more than its share of the hourly total
        network_share = max(1, int(cfg.public_filings_per_hour * cfg.public_filings_network_share))
        if store.filed_since_network(conn, _since(1), client[:16]) >= network_share:
            raise RateLimited("too many filings from your network in the last hour; try again later")
        if store.filed_since(conn, _since(1)) >= cfg.public_filings_per_hour:
            raise RateLimited("too many filings in the last hour; try again later")
        case_id = _insert(services, conn, kind, ds_id, None, subject, body, contact, "public", client)
    return case_id


def file_data_quality(services: Services, user: str, form: dict) -> str:
    """An operator's report of a data-quality problem in a resource their usable grant covers."""
    cfg = settings_of(services)
    ds_id = form.get("dataset")
    grant_id = form.get("grant")
    if not isinstance(grant_id, str) or not grant_id:
        raise BadRequest("`grant` is required", code="missing_grant")
    try:
        grant = services.policies.grant(grant_id)
    except NotFound:
        raise Forbidden(f"no grant {grant_id} for {user}", code="not_a_member") from None
    if not can_use_grant(grant, user, services.today()):
        raise Forbidden(f"{user} cannot report under grant {grant_id}", code="not_a_member")
    if not isinstance(ds_id, str) or ds_id not in grant.datasets:
        raise BadRequest("`dataset` must be a resource of the grant", code="unknown_dataset")
    subject = text_field(form.get("subject"), "subject", MAX_SUBJECT)
    body = text_field(form.get("message"), "message", cfg.max_case_text)
    with services.db.work() as work:
        conn = work.conn
        case_id = _insert(services, conn, "data_quality", ds_id, grant.id, subject, body, None, user, None)
    return case_id


def _insert(services: Services, conn, kind: str, ds_id: str | None, grant_id: str | None,  # noqa: ANN001
            subject: str, body: str, contact: str | None, filed_by: str, client: str | None) -> str:
    case_id = store.new_case_id()
    ts = store.now()
    store.insert(conn, {
        "id": case_id, "kind": kind, "dataset_id": ds_id, "grant_id": grant_id, "subject": subject,
        "body": body, "contact": contact, "filed_by": filed_by, "client": client, "status": "open",
        "created_at": ts, "updated_at": ts,
    })
    seq = services.audit.append(conn, AuditEvent(filed_by, AUDIT_ACTIONS["file"], grant_id, {
        "case": case_id, "kind": kind, "dataset": ds_id, "subject": subject,
    }))
    store.add_event(conn, case_id, filed_by, "file", None, "open", "", seq)
    return case_id


# -- handling by the authority ------------------------------------------------------------------
def act(services: Services, case_id: str, user: str, action: object, *, owner: object = None,
        response: object = None, note: object = None) -> str:
    """assign (owner), respond (response), reopen, close (note; a response must exist). Returns the new status."""
    check_authority(services, user)
    if not isinstance(action, str) or action not in AUDIT_ACTIONS or action == "file":
        raise BadRequest("`action` must be assign, respond, reopen or close", code="bad_action")
    cfg = settings_of(services)
    note_s = text_field(note, "note", cfg.max_case_text, required=False)
    with services.db.work() as work:
        conn = work.conn
        row = store.get(conn, case_id)
        if row is None:
            raise NotFound(f"no case {case_id}", code="unknown_case")
        new = next_status(row["status"], action)
        fields: dict[str, object] = {"status": new, "updated_at": store.now()}
        detail: dict[str, object] = {"case": case_id, "from": row["status"], "to": new}
        if action == "assign":
            owner_s = text_field(owner if owner is not None else user, "owner", 128)
            if owner_s not in services.policies.roles().admins:
                raise BadRequest(f"{owner_s} is not an admin of the authority", code="bad_owner")
            fields["owner"] = detail["owner"] = owner_s
        elif action == "respond":
            fields["response"] = text_field(response, "response", cfg.max_case_text)
            detail["response"] = fields["response"]
            if row["owner"] is None:
                fields["owner"] = user
        elif action == "close":
            if response is not None and str(response).strip():
                fields["response"] = text_field(response, "response", cfg.max_case_text)
                detail["response"] = fields["response"]
            elif not row["response"]:
                raise Conflict("write a response before closing the case", code="response_required")
            fields["closed_at"] = fields["updated_at"]
            if row["owner"] is None:
                fields["owner"] = user
        elif action == "reopen":
            fields["closed_at"] = None
        if note_s:
            detail["note"] = note_s
        store.update(conn, case_id, **fields)
        seq = services.audit.append(conn, AuditEvent(user, AUDIT_ACTIONS[action], row["grant_id"], detail))
        store.add_event(conn, case_id, user, action, row["status"], new, note_s, seq)
    return new


# -- views --------------------------------------------------------------------------------------
def public_view(row: dict) -> dict:
    """What anyone may see of a case: never the message, the contact, the filer or the client hash."""
    return {
        "id": row["id"], "kind": row["kind"], "kind_label": KINDS[row["kind"]], "dataset": row["dataset_id"],
        "subject": row["subject"], "status": row["status"], "response": row["response"],
        "filed": row["created_at"][:10], "updated": row["updated_at"][:10],
        "closed": row["closed_at"][:10] if row["closed_at"] else None,
    }


def public_case(services: Services, case_id: str) -> dict:
    row = store.get(services.db.conn, case_id)
    if row is None:
        raise NotFound(f"no case {case_id}", code="unknown_case")
    return public_view(dict(row))


def open_requests(services: Services) -> list[dict]:
    """Requests to open data are public: anyone can follow them."""
    return [public_view(r) for r in store.listing(services.db.conn, kinds=("open_request",))]


def authority_view(services: Services, case_id: str, user: str) -> dict:
    check_authority(services, user)
    conn = services.db.conn
    row = store.get(conn, case_id)
    if row is None:
        raise NotFound(f"no case {case_id}", code="unknown_case")
    item = dict(row)
    item.pop("client", None)
    item["actions"] = sorted(TRANSITIONS[row["status"]])
    item["events"] = store.events(conn, case_id)
    return item


def authority_list(services: Services, user: str, statuses: tuple[str, ...] | None = None) -> list[dict]:
    check_authority(services, user)
    rows = store.listing(services.db.conn, statuses=statuses, limit=1000)
    return [{k: v for k, v in r.items() if k not in ("client", "body", "contact")} for r in rows]


def statistics_by_kind(services: Services) -> dict:
    """Counts per kind and status, and the median days from filing to closing, for the register."""
    rows = store.lifetimes(services.db.conn)
    out: dict[str, dict] = {}
    for kind in KINDS:
        mine = [r for r in rows if r.kind == kind]
        days = [
            (dt.datetime.fromisoformat(r.closed_at) - dt.datetime.fromisoformat(r.created_at)).total_seconds()
            / 86400 for r in mine if r.status == "closed" and r.closed_at
        ]
        out[kind] = {
            "label": KINDS[kind],
            "total": len(mine),
            **{s: sum(1 for r in mine if r.status == s) for s in STATUSES},
            "median_days_to_close": round(statistics.median(days), 2) if days else None,
        }
    return out
