"""Admin override of failed checks: the only way a file with a ``fail`` outcome can be approved.

Only an admin (``policies/roles.yaml``) who is not the requester, not a member of the request's
grant and not a reviewer of the request may override, with a written reason. The override covers
the files failing *now*, pinned by their canonical sha256 and the review round: a changed file or
a new round needs a new override. It does not approve anything: the grant's reviewers still
decide. It is a transition of the one table (state unchanged) with its audit entry, shown on the
request and counted per grant on the public register.
"""

from __future__ import annotations

import sqlite3

from sandbox.errors import Conflict, Forbidden
from sandbox.exports.deps import ExportDeps
from sandbox.exports.workflow import (
    MAX_TEXT,
    OPEN,
    blocked_files,
    grant_members,
    next_state,
    transition,
)
from sandbox.fields import text_field
from sandbox.state import exports_repo
from sandbox.state.exports_repo import ExportRequest
from sandbox.state.grants_store import PolicyStore


def check_may_override(policies: PolicyStore, conn: sqlite3.Connection, row: ExportRequest, user: str) -> None:
    """Raises Forbidden (not_admin, override_own, admin_is_member, admin_is_reviewer)."""
    if user not in policies.roles().admins:
        raise Forbidden("only an admin outside the grant may override a failed check", code="not_admin")
    if row.requester == user:
        raise Forbidden("nobody overrides checks on their own request", code="override_own")
    members = grant_members(policies, row.grant_id)
    if members is None:
        raise Forbidden("the request's grant cannot be read, so nobody may override", code="unknown_grant")
    if user in members:
        raise Forbidden("members of a grant never override checks on its exports", code="admin_is_member")
    if any(r.reviewer == user for r in exports_repo.reviews(conn, row.id)):
        raise Forbidden("a reviewer of this request cannot also override its checks", code="admin_is_reviewer")


def can_override(policies: PolicyStore, conn: sqlite3.Connection, row: ExportRequest, user: str) -> bool:
    if row.status not in OPEN or not blocked_files(conn, row):
        return False
    try:
        check_may_override(policies, conn, row, user)
    except Forbidden:
        return False
    return True


def override(deps: ExportDeps, request_id: str, admin: str, reason: object) -> str:
    """Lift the block of the files failing now (this round); returns the (unchanged) state."""
    text = text_field(reason, "reason", MAX_TEXT)
    with deps.db.work() as work:
        conn = work.conn
        row = exports_repo.request(conn, request_id)
        check_may_override(deps.policies, conn, row, admin)
        next_state(row.status, "override")  # raises illegal_transition outside open states
        blocked = blocked_files(conn, row)
        if not blocked:
            raise Conflict("no file of this round has a failed check that is not overridden",
                           code="nothing_to_override")
        files = {f.name: f.sha256 for f in blocked}
        rules = {f.name: sorted({c["rule"] for c in f.checks if c["outcome"] == "fail"}) for f in blocked}
        exports_repo.insert_override(conn, row.id, row.grant_id, row.round, admin, text, files)
        new = transition(deps.audit, conn, row, "override", admin, comment=text,
                         detail={"round": row.round, "files": files, "rules": rules})
    return new
