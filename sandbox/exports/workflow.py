"""The export workflow: ONE transition table, the policy checks, and every operation on a request.

Every transition runs in one IMMEDIATE write transaction that re-reads the request, checks the
transition against :data:`TRANSITIONS`, updates the state, writes an ``export_events`` row and
appends its audit event to the hash-chained log; the audit head is written after the commit.

Review model: each required reviewer casts an independent vote (approve, reject or return).
A vote that leaves votes missing is the ``vote`` action (-> partially_reviewed); the vote that
completes the round decides: all approve -> ``approve``; any reject -> ``reject``; otherwise
``return``. Until the round is complete each reviewer sees only their own vote. ``resubmit``
opens a new round, so changing files on a returned request always resets its reviews.
``released`` is the state after the requester's first download of an approved request.

Separation of duties: nobody reviews their own request or a request on a grant they are a member
of. A file with a failed check cannot be approved until an admin outside the grant overrides it
(:mod:`sandbox.exports.override`). Files are kept as their canonical rendering only
(:mod:`sandbox.exports.canonical`); every upload attempt, refused ones included, is audited. The
upload paths (submit, change files) are in :mod:`sandbox.exports.uploads`.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any

from sandbox.errors import BadRequest, Conflict, Forbidden, NotFound
from sandbox.exports import store
from sandbox.exports.checks import worst
from sandbox.exports.checks.file_gates import NAME_RE
from sandbox.exports.deps import ExportDeps
from sandbox.fields import text_field
from sandbox.policy.models import Grant, Roles
from sandbox.policy.rules import check_grant_usable
from sandbox.state import exports_repo
from sandbox.state.audit import AuditEvent, AuditLog
from sandbox.state.exports_repo import ExportFile, ExportRequest
from sandbox.state.grants_store import PolicyStore

STATES = ("submitted", "partially_reviewed", "approved", "rejected", "returned", "withdrawn", "released")
OPEN = ("submitted", "partially_reviewed")
PENDING = (*OPEN, "returned", "approved")  # what a revoked grant's withdrawal sweeps
ACTIONS = ("submit", "vote", "approve", "reject", "return", "withdraw", "change_files", "resubmit",
           "release", "override")
DECISIONS = ("approve", "reject", "return")

TRANSITIONS: dict[tuple[str | None, str], str] = {
    (None, "submit"): "submitted",
    ("submitted", "vote"): "partially_reviewed",
    ("submitted", "approve"): "approved",
    ("submitted", "reject"): "rejected",
    ("submitted", "return"): "returned",
    ("submitted", "withdraw"): "withdrawn",
    ("partially_reviewed", "vote"): "partially_reviewed",
    ("partially_reviewed", "approve"): "approved",
    ("partially_reviewed", "reject"): "rejected",
    ("partially_reviewed", "return"): "returned",
    ("partially_reviewed", "withdraw"): "withdrawn",
    ("submitted", "override"): "submitted",  # an admin lifts the block of failed checks; state unchanged
    ("partially_reviewed", "override"): "partially_reviewed",
    ("returned", "change_files"): "returned",
    ("returned", "resubmit"): "submitted",
    ("returned", "withdraw"): "withdrawn",
    ("approved", "release"): "released",
    ("approved", "withdraw"): "withdrawn",
}
AUDIT_ACTIONS = {
    "submit": "export.submitted", "vote": "export.reviewed", "approve": "export.approved",
    "reject": "export.rejected", "return": "export.returned", "withdraw": "export.withdrawn",
    "change_files": "export.files_changed", "resubmit": "export.resubmitted", "release": "export.released",
    "override": "export.override",
}
MAX_AUDITED_NAME = 300
MAX_TITLE = 200
MAX_JUSTIFICATION = 1000
MAX_COMMENT = 1000  # the requester's withdraw and resubmit comments
MAX_TEXT = 5000  # reviewers' comments


class IntegrityError(Conflict):
    """Stored bytes differ from what was approved: nothing is sent."""

    code = "integrity_failed"


# -- policy: check_* raise, can_* return bools ---------------------------------------------------
def next_state(status: str | None, action: str) -> str:
    try:
        return TRANSITIONS[(status, action)]
    except KeyError:
        raise Conflict(f"cannot {action.replace('_', ' ')} a request that is {status or 'new'}",
                       code="illegal_transition") from None


def can_transition(status: str | None, action: str) -> bool:
    return (status, action) in TRANSITIONS


def check_reviewer(roles: Roles, user: str) -> None:
    if user not in roles.reviewers:
        raise Forbidden(f"{user} is not a reviewer", code="not_reviewer")


def check_not_own(row: ExportRequest, user: str) -> None:
    if row.requester == user:
        raise Forbidden("reviewers never review their own request", code="self_review")


def check_requester(row: ExportRequest, user: str) -> None:
    if row.requester != user:
        raise Forbidden("only the requester may do this", code="not_requester")


def grant_members(policies: PolicyStore, grant_id: str) -> frozenset[str] | None:
    """The grant's members, or None when the grant cannot be read (then nobody may review it)."""
    try:
        return frozenset(policies.grant(grant_id).members)
    except NotFound:
        return None


def check_not_member(members: frozenset[str] | None, user: str) -> None:
    """Separation of duties: nobody reviews a request on a grant they are a member of."""
    if members is None:
        raise Forbidden("the request's grant cannot be read, so nobody may review it", code="unknown_grant")
    if user in members:
        raise Forbidden("members of a grant never review its exports", code="reviewer_is_member")


def check_not_overrider(conn: sqlite3.Connection, row: ExportRequest, user: str) -> None:
    if any(o.admin == user for o in exports_repo.overrides(conn, row.id)):
        raise Forbidden("the admin who overrode a check does not also review the request",
                        code="reviewer_is_overrider")


def blocked_files(conn: sqlite3.Connection, row: ExportRequest) -> list[ExportFile]:
    """Current files with a failed check that no admin override of this round covers."""
    covered = {(n, sha) for o in exports_repo.overrides(conn, row.id, row.round) for n, sha in o.files.items()}
    return [f for f in exports_repo.current_files(conn, row.id)
            if worst(f.checks) == "fail" and (f.name, f.sha256) not in covered]


def check_not_blocked(conn: sqlite3.Connection, row: ExportRequest) -> None:
    blocked = blocked_files(conn, row)
    if blocked:
        names = ", ".join(f.name for f in blocked)
        raise Conflict(f"a check failed on {names}: reviewers cannot approve it; return or reject it, "
                       "or ask an admin outside the grant for a written override", code="check_failed")


def check_not_voted(conn: sqlite3.Connection, row: ExportRequest, user: str) -> None:
    if any(r.reviewer == user for r in exports_repo.reviews(conn, row.id, row.round)):
        raise Conflict("you already reviewed this round; reviews are independent and final",
                       code="already_reviewed")


def can_review(policies: PolicyStore, conn: sqlite3.Connection, row: ExportRequest, user: str) -> bool:
    try:
        check_reviewer(policies.roles(), user)
        check_not_own(row, user)
        check_not_member(grant_members(policies, row.grant_id), user)
        check_not_overrider(conn, row, user)
        check_not_voted(conn, row, user)
    except (Forbidden, Conflict):
        return False
    return row.status in OPEN


def can_approve(policies: PolicyStore, conn: sqlite3.Connection, row: ExportRequest, user: str) -> bool:
    return can_review(policies, conn, row, user) and not blocked_files(conn, row)


def reviewers_required(policies: PolicyStore, grant_id: str) -> int:
    try:
        return policies.grant(grant_id).exports.reviewers_required
    except NotFound:
        return 2


def outcome_of(decisions: list[str]) -> str:
    if "reject" in decisions:
        return "reject"
    if "return" in decisions:
        return "return"
    return "approve"


# -- the one place a state changes ----------------------------------------------------------------
def transition(audit: AuditLog, conn: sqlite3.Connection, row: ExportRequest | None,
               action: str, actor: str, *, request_id: str | None = None, grant_id: str | None = None,
               comment: str = "", detail: dict[str, Any] | None = None) -> str:
    """Apply ``action`` inside the caller's write transaction; returns the new state."""
    status = row.status if row is not None else None
    new = next_state(status, action)
    rid = row.id if row is not None else request_id
    gid = row.grant_id if row is not None else grant_id
    if rid is None:
        raise ValueError("a transition of a new request needs its request_id")
    ts = store.now()
    if row is not None:
        bump = 1 if action == "resubmit" else 0
        exports_repo.set_status(conn, rid, new, bump, ts)
    seq = audit.append(conn, AuditEvent(actor, AUDIT_ACTIONS[action], gid, {
        "request": rid, "from": status, "to": new, **({"comment": comment} if comment else {}),
        **(detail or {}),
    }))
    exports_repo.insert_event(conn, rid, ts, actor, action, status, new, comment, seq)
    return new


# -- operations -------------------------------------------------------------------------------


def _usable_grant(policies: PolicyStore, today: dt.date, grant_id: object, user: str) -> Grant:
    if not isinstance(grant_id, str) or not grant_id:
        raise BadRequest("`grant` is required", code="missing_grant")
    try:
        grant = policies.grant(grant_id)
    except NotFound:
        raise Forbidden(f"no grant {grant_id} for {user}", code="not_a_member") from None
    check_grant_usable(grant, user, today)
    return grant


def review(deps: ExportDeps, request_id: str, reviewer: str, decision: object, comment: object) -> str:
    """Cast one reviewer's vote; returns the request's new state."""
    if decision not in DECISIONS:
        raise BadRequest("`decision` must be approve, reject or return", code="bad_decision")
    text = text_field(comment, "comment", MAX_TEXT, required=decision != "approve")
    roles = deps.policies.roles()
    check_reviewer(roles, reviewer)
    with deps.db.work() as work:
        conn = work.conn
        row = exports_repo.request(conn, request_id)
        check_not_own(row, reviewer)
        check_not_member(grant_members(deps.policies, row.grant_id), reviewer)
        check_not_overrider(conn, row, reviewer)
        if row.status not in OPEN:
            next_state(row.status, "vote")  # raises illegal_transition
        check_not_voted(conn, row, reviewer)
        files = exports_repo.current_files(conn, request_id)
        if decision == "approve":
            check_not_blocked(conn, row)
            if not text and any(worst(f.checks) == "fail" for f in files):
                raise BadRequest("a check failed and an admin overrode it: approving needs a comment that says why",
                                 code="comment_required")
        exports_repo.insert_review(conn, request_id, row.round, reviewer, str(decision), text)
        votes = exports_repo.reviews(conn, request_id, row.round)
        needed = reviewers_required(deps.policies, row.grant_id)
        detail: dict[str, Any] = {"round": row.round, "decision": decision, "votes": len(votes), "required": needed}
        if len(votes) < needed:
            new = transition(deps.audit, conn, row, "vote", reviewer, detail=detail)
        else:
            action = outcome_of([v.decision for v in votes])
            detail["files"] = {f.name: f.sha256 for f in files}
            detail["reviewers"] = [v.reviewer for v in votes]
            new = transition(deps.audit, conn, row, action, reviewer, detail=detail)
    return new


def withdraw(deps: ExportDeps, request_id: str, user: str, reason: str = "") -> str:
    with deps.db.work() as work:
        conn = work.conn
        row = exports_repo.request(conn, request_id)
        check_requester(row, user)
        new = transition(deps.audit, conn, row, "withdraw", user,
                         comment=text_field(reason, "reason", MAX_COMMENT, required=False))
    return new


def withdraw_pending_for_grant(deps: ExportDeps, grant_id: str, actor: str) -> int:
    """Withdraw every pending (open, returned or approved-not-downloaded) request of a grant."""
    count = 0
    with deps.db.work() as work:
        conn = work.conn
        for row in exports_repo.list_requests(conn, grant_id=grant_id, statuses=PENDING, limit=1_000_000):
            transition(deps.audit, conn, row, "withdraw", actor, comment="grant revoked",
                       detail={"reason": "grant_revoked"})
            count += 1
    return count


def resubmit(deps: ExportDeps, request_id: str, user: str, comment: str = "") -> str:
    with deps.db.work() as work:
        conn = work.conn
        row = exports_repo.request(conn, request_id)
        check_requester(row, user)
        next_state(row.status, "resubmit")
        _usable_grant(deps.policies, deps.today(), row.grant_id, user)
        files = exports_repo.current_files(conn, request_id)
        new = transition(deps.audit, conn, row, "resubmit", user,
                         comment=text_field(comment, "comment", MAX_COMMENT, required=False),
                         detail={"round": row.round + 1, "files": {f.name: f.sha256 for f in files}})
    return new


def _approved_digests(audit: AuditLog, conn: sqlite3.Connection, request_id: str) -> dict[str, str]:
    """The files the approving event recorded in the hash-chained audit log."""
    seq = exports_repo.approving_seq(conn, request_id)
    if seq is None:
        return {}
    entry = audit.entry(seq)
    files: dict[str, str] = entry.detail.get("files", {}) if entry else {}
    return files


def _check_grant_not_stopped(policies: PolicyStore, grant_id: str) -> None:
    """Downloads stop while a grant is suspended and for good once it is revoked (expiry does not stop them)."""
    try:
        status = policies.grant(grant_id).status
    except NotFound:
        raise Forbidden(f"grant {grant_id} is not in force", code="grant_revoked") from None
    if status in ("revoked", "suspended"):
        raise Forbidden(f"grant {grant_id} is {status}: nothing leaves under it", code=f"grant_{status}")


def download(deps: ExportDeps, request_id: str, name: str, user: str) -> tuple[ExportFile, bytes]:
    """The approved bytes of one file, to the requester only, sha256-checked; first download releases."""
    conn = deps.db.conn
    row = exports_repo.request(conn, request_id)
    if row.requester != user:
        roles = deps.policies.roles()
        if user in roles.reviewers or user in roles.admins:
            raise Forbidden("only the requester downloads released files", code="not_requester")
        raise NotFound(f"no export request {request_id}", code="unknown_export")
    if row.status not in ("approved", "released"):
        raise Conflict(f"the request is {row.status}: files leave only once approved",
                       code="not_released")
    _check_grant_not_stopped(deps.policies, row.grant_id)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise NotFound("no such file", code="unknown_file")
    f = next((f for f in exports_repo.current_files(conn, request_id) if f.name == name), None)
    if f is None:
        raise NotFound(f"no file {name} on this request", code="unknown_file")
    data = store.BlobStore(deps.db).get(request_id, f.sha256)
    approved = _approved_digests(deps.audit, conn, request_id).get(name)
    if data is None or store.sha256(data) != f.sha256 or approved != f.sha256:
        deps.audit.record(AuditEvent(user, "export.integrity_failed", row.grant_id, {
            "request": request_id, "file": name, "expected": approved,
            "found": store.sha256(data) if data is not None else None}))
        raise IntegrityError(f"{name}: the stored bytes differ from the approved ones; nothing was sent")
    with deps.db.work() as work:
        conn = work.conn
        row = exports_repo.request(conn, request_id)
        if row.status not in ("approved", "released"):
            raise Conflict(f"the request is {row.status}", code="not_released")
        if row.status == "approved":
            transition(deps.audit, conn, row, "release", user, detail={"file": name})
        deps.audit.append(conn, AuditEvent(user, "export.downloaded", row.grant_id,
                                           {"request": request_id, "file": name, "sha256": f.sha256}))
    return f, data
