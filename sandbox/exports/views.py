"""What each caller may see of export requests: the JSON the API returns and the pages render.

Requesters see their own requests; reviewers and admins see all. Reviews of a round become
visible once the round is complete; until then a reviewer sees only their own vote.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sandbox.errors import Forbidden, NotFound
from sandbox.exports import store
from sandbox.exports.checks import worst
from sandbox.exports.override import can_override
from sandbox.exports.workflow import (
    OPEN,
    IntegrityError,
    blocked_files,
    can_approve,
    can_review,
    can_transition,
    reviewers_required,
)
from sandbox.state import exports_repo
from sandbox.state.db import StateDB
from sandbox.state.exports_repo import ExportFile, ExportRequest, Override
from sandbox.state.grants_store import PolicyStore

# Checks that consult raw data answer reviewers only: shown to a requester, the identifier
# check would tell them, for free, which ids are in a dataset (a membership oracle).
REVIEWER_ONLY_RULES = frozenset({"identifiers"})
HIDDEN_DETAIL = "checked against raw data; shown to reviewers only"
# Everything else a requester sees of their checks is the rule and its outcome: the details and
# flagged cells quote the file (values, column names, chunk names) and the requester can read
# them from outside the sandbox, so they would carry unreleased content out of the airlock.
REQUESTER_DETAIL = "details and flagged cells are shown to reviewers only: they quote the file"
# The requester's own words (title, justification, count columns, withdraw and resubmit comments)
# are unreleased content as well until the request is approved: echoed back, they would carry text
# (rows pasted into a justification) out of the airlock without a review.
REVIEWED = ("approved", "released")
HIDDEN_TEXT = "(shown to the requester once approved: not reviewed yet)"
SEALED_TEXT = ("name, digest, sizes and check outcomes are shown to the requester in the answer to the upload "
               "and again once approved: read back later they would be a channel around the review")


def shows_metadata(row: ExportRequest, privileged: bool) -> bool:
    return privileged or row.status in REVIEWED


def is_privileged(policies: PolicyStore, user: str) -> bool:
    roles = policies.roles()
    return user in roles.reviewers or user in roles.admins


def sees_all(policies: PolicyStore, row: ExportRequest, user: str) -> bool:
    """Reviewers and admins see a request's previews, check details and identifier results, unless
    it is their own or on a grant they are a member of: then they see it as its requester does
    (otherwise a reviewer who is also an operator would have the membership oracle and the
    unreleased content that requesters are denied)."""
    if not is_privileged(policies, user) or row.requester == user:
        return False
    try:
        return user not in policies.grant(row.grant_id).members
    except NotFound:
        return False


def visible_checks(checks: list[dict[str, Any]], privileged: bool) -> list[dict[str, Any]]:
    if privileged:
        return checks
    return [
        {"rule": c["rule"], "outcome": "review", "detail": HIDDEN_DETAIL, "cells": []}
        if c["rule"] in REVIEWER_ONLY_RULES
        else {"rule": c["rule"], "outcome": c["outcome"], "detail": REQUESTER_DETAIL, "cells": [],
              **({"queries": c["queries"]} if "queries" in c else {})}
        for c in checks
    ]


def _may_view(policies: PolicyStore, row: ExportRequest, user: str) -> bool:
    roles = policies.roles()
    return row.requester == user or user in roles.reviewers or user in roles.admins


def load(db: StateDB, policies: PolicyStore, request_id: str, user: str) -> ExportRequest:
    row = exports_repo.request(db.conn, request_id)
    if not _may_view(policies, row, user):
        raise NotFound(f"no export request {request_id}", code="unknown_export")
    return row


def preview(db: StateDB, policies: PolicyStore, request_id: str, name: str, user: str) -> tuple[ExportFile, bytes]:
    """A current file's canonical bytes (what would leave), sha256-checked, for the reviewers and
    admins who see the request in full; never for its requester (they download once approved)."""
    row = load(db, policies, request_id, user)
    if not sees_all(policies, row, user):
        raise Forbidden("previews are for reviewers; download the files once they are approved",
                        code="preview_reviewers_only")
    f = next((f for f in exports_repo.current_files(db.conn, row.id) if f.name == name), None)
    if f is None:
        raise NotFound(f"no file {name} on this request", code="unknown_file")
    data = store.BlobStore(db).get(request_id, f.sha256)
    if data is None or store.sha256(data) != f.sha256:
        raise IntegrityError(f"{name}: the stored bytes do not match their sha256")
    return f, data


def sealed_name(position: int, kind: str) -> str:
    """How a sealed view names a file: by its position and kind, never by the name chosen inside."""
    return f"file-{position}.{kind}"


def resolve_names(conn: sqlite3.Connection, request_id: str, names: list[str]) -> list[str]:
    """Names as given by a requester, with the sealed view's positional names mapped to the stored ones."""
    files = exports_repo.current_files(conn, request_id)
    stored = {f.name for f in files}
    alias = {sealed_name(i, f.kind): f.name for i, f in enumerate(files, 1)}
    return [n if n in stored else alias.get(n, n) for n in names]


def file_view(f: ExportFile, privileged: bool, sealed: bool = False, position: int = 0) -> dict[str, Any]:
    """One file: ``sha256`` and ``size`` are the canonical file's (what leaves); ``uploaded_size`` the upload's.

    ``sealed`` (a requester's later view of a request not yet approved) leaves out the digest, the sizes
    and the check outcomes: whoever is inside the sandbox chooses the file, so its exact size, a ground
    sha256 prefix, a pattern of outcomes or the file name would carry unreviewed bits to anyone reading the
    request from outside. The uploader sees them once, in the answer to the upload itself; the file is
    named by its position and kind (``sealed_name``).
    """
    if sealed:
        return {"name": sealed_name(position, f.kind), "sha256": None, "size": None, "uploaded_size": None,
                "kind": f.kind, "outcome": None, "checks": [], "added_round": f.added_round,
                "sealed": SEALED_TEXT}
    checks = visible_checks(f.checks, privileged)
    sizes: dict[str, Any] = next((c for c in f.checks if c["rule"] == "canonical.size"), {})
    return {"name": f.name, "sha256": f.sha256, "size": f.size, "uploaded_size": sizes.get("uploaded"),
            "kind": f.kind, "outcome": worst(checks), "checks": checks, "added_round": f.added_round}


def override_view(o: Override) -> dict[str, Any]:
    return {"admin": o.admin, "reason": o.reason, "round": o.round, "ts": o.ts, "files": o.files}


def request_view(db: StateDB, policies: PolicyStore, request_id: str, user: str,
                 uploaded: bool = False) -> dict[str, Any]:
    """The request with its files, checks, visible reviews, history and what ``user`` may do.

    ``uploaded``: the answer to ``user``'s own upload (submit, file change), which shows them the digests
    and outcomes of what they just sent; any later read by the requester is sealed until approval."""
    row = load(db, policies, request_id, user)
    conn = db.conn
    complete = row.status not in OPEN
    reviews = [
        {"reviewer": r.reviewer, "decision": r.decision, "comment": r.comment, "round": r.round, "ts": r.ts}
        for r in exports_repo.reviews(conn, request_id)
        if r.round < row.round or complete or r.reviewer == user
    ]
    votes = len(exports_repo.reviews(conn, request_id, row.round))
    is_requester = row.requester == user
    status = row.status
    privileged = sees_all(policies, row, user)
    # which files are blocked is shown to reviewers and admins only: a requester would learn from it,
    # for free, that the (reviewer-only) identifier check failed
    blocked = [f.name for f in blocked_files(conn, row)] if privileged and status in OPEN else []
    shown = shows_metadata(row, privileged)
    sealed = not shown and not uploaded
    history = [{"ts": e.ts, "actor": e.actor, "action": e.action, "from_status": e.from_status,
                "to_status": e.to_status,
                "comment": HIDDEN_TEXT if not shown and e.actor == row.requester and e.comment else e.comment}
               for e in exports_repo.events(conn, request_id)]
    return {
        "id": row.id, "grant": row.grant_id, "requester": row.requester,
        "title": row.title if shown else HIDDEN_TEXT,
        "justification": row.justification if shown else HIDDEN_TEXT, "status": status, "round": row.round,
        "count_columns": list(row.count_columns) if shown else [],
        "created_at": row.created_at, "updated_at": row.updated_at,
        "reviewers_required": reviewers_required(policies, row.grant_id),
        "votes_this_round": votes if status in OPEN else None,
        "files": [file_view(f, privileged, sealed, i)
                  for i, f in enumerate(exports_repo.current_files(conn, request_id), 1)],
        "reviews": reviews,
        "overrides": [override_view(o) for o in exports_repo.overrides(conn, request_id)],
        "blocked": blocked,
        "history": history,
        "can": {
            "review": can_review(policies, conn, row, user),
            "approve": can_approve(policies, conn, row, user),
            "override": can_override(policies, conn, row, user),
            "withdraw": is_requester and can_transition(status, "withdraw"),
            "change_files": is_requester and can_transition(status, "change_files"),
            "resubmit": is_requester and can_transition(status, "resubmit"),
            "download": is_requester and status in ("approved", "released"),
        },
    }


def summary(conn: sqlite3.Connection, row: ExportRequest, privileged: bool = True) -> dict[str, Any]:
    files = exports_repo.current_files(conn, row.id)
    shown = shows_metadata(row, privileged)
    return {"id": row.id, "grant": row.grant_id, "requester": row.requester,
            "title": row.title if shown else HIDDEN_TEXT,
            "status": row.status, "round": row.round,
            "created_at": row.created_at, "updated_at": row.updated_at,
            "files": [f.name if shown else sealed_name(i, f.kind) for i, f in enumerate(files, 1)],
            "outcome": worst([c for f in files for c in visible_checks(f.checks, privileged)]) if shown else None}


def mine(db: StateDB, policies: PolicyStore, user: str) -> list[dict[str, Any]]:
    conn = db.conn
    return [summary(conn, r, sees_all(policies, r, user)) for r in exports_repo.list_requests(conn, requester=user)]


def queue(db: StateDB, policies: PolicyStore, user: str) -> list[dict[str, Any]]:
    """Open requests awaiting this reviewer's vote (never their own); empty for non-reviewers."""
    conn = db.conn
    roles = policies.roles()
    if user not in roles.reviewers:
        return []
    return [summary(conn, r) for r in reversed(exports_repo.list_requests(conn, statuses=OPEN, limit=1000))
            if can_review(policies, conn, r, user)]


def recent(db: StateDB, policies: PolicyStore, user: str, limit: int = 50) -> list[dict[str, Any]]:
    """Every request a reviewer or admin may see, newest first (not the queue)."""
    roles = policies.roles()
    if user not in roles.reviewers and user not in roles.admins:
        return []
    conn = db.conn
    return [summary(conn, r, sees_all(policies, r, user)) for r in exports_repo.list_requests(conn, limit=limit)]
