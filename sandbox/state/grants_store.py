"""What is in force: the catalog, grants and roles, with history in the audit log.

Policy files are what admins write; this store is what the gateway enforces. A grant's
status only moves forward through commands (suspend, resume, revoke) or a file that is
stricter than the state; a revoked grant stays revoked whatever is applied later.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.errors import Conflict, NotFound, PolicyError
from sandbox.policy.models import Dataset, Grant, Roles, operator_key
from sandbox.policy.rules import check_caps_not_raised, check_grant_fits_catalog
from sandbox.state.audit import AuditLog
from sandbox.state.chain import AuditEvent
from sandbox.state.db import StateDB, register_schema
from sandbox.state.ledger import Ledger
from sandbox.state.offerings_store import add_notice

register_schema(
    """
    CREATE TABLE IF NOT EXISTS datasets (
        id TEXT PRIMARY KEY, body TEXT NOT NULL, applied_at TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS grants (
        id TEXT PRIMARY KEY, body TEXT NOT NULL, status TEXT NOT NULL,
        applied_at TEXT NOT NULL, updated_at TEXT NOT NULL, status_reason TEXT
    );
    CREATE TABLE IF NOT EXISTS roles (
        id INTEGER PRIMARY KEY CHECK (id = 1), body TEXT NOT NULL
    )
    """
)

STRICTNESS = {"active": 0, "suspended": 1, "revoked": 2}


class _DryRun(Exception):  # noqa: N818 - control flow, never seen outside this module
    """Ends a dry-run apply inside its transaction, so that everything it did is rolled back."""

    def __init__(self, result: ApplyResult) -> None:
        super().__init__(result.grant_id)
        self.result = result


@dataclass(frozen=True)
class ApplyResult:
    grant_id: str
    outcome: str  # created | changed | unchanged
    changes: tuple[str, ...]


@dataclass(frozen=True)
class GrantRecord:
    """A grant in force with when it was applied and last changed (for the register and listings)."""

    grant: Grant
    status: str
    applied_at: str
    updated_at: str
    status_reason: str | None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _clear_notices(conn: sqlite3.Connection, grant_id: str) -> None:
    """Withdraw the published reasons of a grant whose status changes (the audit log keeps them)."""
    conn.execute("DELETE FROM grant_notices WHERE grant_id = ?", (grant_id,))


def _dump(model: Grant | Dataset | Roles) -> dict[str, Any]:
    return model.model_dump(mode="json")


def diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            lines.extend(diff(a, b, f"{prefix}{key}."))
        elif a != b:
            lines.append(f"{prefix}{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return lines


def _check_operator(conn: sqlite3.Connection, grant: Grant, existing: Any) -> None:
    """One grant, one operator for life; one institution, one spelling across grants.

    Caps across grants key on :func:`operator_key`; a rename or a second spelling would make a
    register that names one institution two ways (and, before the key, a fresh cap)."""
    if existing is not None:
        before = json.loads(existing["body"])["operator"]
        if before != grant.operator and existing["status"] != "revoked":
            raise Conflict(
                f"grant {grant.id}: the operator is fixed once applied ({before!r}); issue a new grant instead",
                code="operator_fixed",
            )
        return
    key = operator_key(grant.operator)
    for row in conn.execute("SELECT id, body FROM grants ORDER BY id"):
        other = json.loads(row["body"])["operator"]
        if other != grant.operator and operator_key(other) == key:
            raise Conflict(
                f"operator {grant.operator!r} is spelled {other!r} in grant {row['id']}: one institution has one "
                "spelling (names are compared ignoring case, spacing and punctuation); use that spelling",
                code="operator_spelling",
            )


class PolicyStore:
    def __init__(self, db: StateDB, audit: AuditLog | None = None, *,
                 on_grant_change: Callable[[str], object] | None = None) -> None:
        self.db = db
        self.audit = audit or AuditLog(db)  # for reading; events are written by the unit of work
        self.on_grant_change = on_grant_change  # e.g. sign an audit checkpoint

    def _grant_changed(self, grant_id: str) -> None:
        if self.on_grant_change is not None:
            self.on_grant_change(grant_id)

    # -- catalog ---------------------------------------------------------------------------
    def apply_dataset(self, dataset: Dataset, actor: str) -> ApplyResult:
        body = _dump(dataset)
        with self.db.work() as work:
            conn = work.conn
            row = conn.execute("SELECT body FROM datasets WHERE id = ?", (dataset.id,)).fetchone()
            old = json.loads(row["body"]) if row else None
            if old == body:
                return ApplyResult(dataset.id, "unchanged", ())
            if old is not None:
                check_caps_not_raised(Dataset.model_validate(old, context={"stored": True}), dataset)
            changes = tuple(diff(old or {}, body)) if old else ()
            conn.execute(
                "INSERT INTO datasets (id, body, applied_at) VALUES (?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET body = excluded.body, applied_at = excluded.applied_at",
                (dataset.id, json.dumps(body), _now()),
            )
            outcome = "changed" if old else "created"
            work.record(AuditEvent(actor, f"dataset.{outcome}", None,
                                   {"dataset": dataset.id, "changes": changes, "body": body}))
        return ApplyResult(dataset.id, outcome, changes)

    def datasets(self) -> dict[str, Dataset]:
        return {
            # entries in force: a name the rules refuse since (``__``) must not make the state unreadable
            r["id"]: Dataset.model_validate(json.loads(r["body"]), context={"stored": True})
            for r in self.db.read("SELECT id, body FROM datasets ORDER BY id")
        }

    def datasets_applied_at(self) -> dict[str, str]:
        """When each dataset's entry was applied (ISO timestamp), by dataset id."""
        return {r["id"]: r["applied_at"] for r in self.db.read("SELECT id, applied_at FROM datasets")}

    # -- roles -----------------------------------------------------------------------------
    def apply_roles(self, roles: Roles, actor: str) -> None:
        body = json.dumps(_dump(roles))
        with self.db.work() as work:
            conn = work.conn
            row = conn.execute("SELECT body FROM roles WHERE id = 1").fetchone()
            if row and row["body"] == body:
                return
            conn.execute(
                "INSERT INTO roles (id, body) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                (body,),
            )
            work.record(AuditEvent(actor, "roles.applied", None, _dump(roles)))

    def roles(self) -> Roles:
        rows = self.db.read("SELECT body FROM roles WHERE id = 1")
        return Roles.model_validate(json.loads(rows[0]["body"])) if rows else Roles()

    # -- grants ----------------------------------------------------------------------------
    def plan_grant(self, grant: Grant) -> ApplyResult:
        """What applying would change, without changing anything (for `grants apply --dry-run`).

        It is the real apply, every check included, inside a transaction that is rolled back.
        """
        try:
            self.apply_grant(grant, "dry-run", dry_run=True)
        except _DryRun as done:
            return done.result
        raise AssertionError("a dry run always ends in _DryRun")  # pragma: no cover

    def _resolve(self, grant: Grant, existing: Any) -> Grant:
        in_force = existing["status"]
        if in_force == "revoked":
            raise Conflict(f"grant {grant.id} was revoked; revocation is final", code="grant_revoked")
        status = grant.status if STRICTNESS[grant.status] > STRICTNESS[in_force] else in_force
        return grant.model_copy(update={"status": status})

    def apply_grant(self, grant: Grant, actor: str, *, dry_run: bool = False) -> ApplyResult:
        """Check and apply a grant; with ``dry_run`` the same steps run and are rolled back."""
        catalog = self.datasets()
        check_grant_fits_catalog(grant, catalog)
        auditors = sorted(set(grant.members) & set(self.roles().auditors))
        if auditors:  # audit authorities are read-only: no data access, whatever a grant says
            raise PolicyError(f"grant {grant.id}: members {', '.join(auditors)} are auditors; "
                              "an auditor cannot be a member of a grant")
        with self.db.work() as work:
            conn = work.conn
            existing = conn.execute(
                "SELECT body, status FROM grants WHERE id = ?", (grant.id,)
            ).fetchone()
            _check_operator(conn, grant, existing)
            changes: tuple[str, ...] = ()
            if existing is None:
                new, outcome = grant, "created"
            else:
                new = self._resolve(grant, existing)
                changes = tuple(diff(json.loads(existing["body"]), _dump(new)))
                outcome = "changed" if changes else "unchanged"
            if outcome == "unchanged":
                if dry_run:
                    raise _DryRun(ApplyResult(grant.id, outcome, ()))
                return ApplyResult(grant.id, outcome, ())
            Ledger.ensure_budget(conn, grant.id, new.budget.epsilon, new.budget.delta, new.accounting)
            now = _now()
            conn.execute(
                "INSERT INTO grants (id, body, status, applied_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(id) DO UPDATE SET body = excluded.body, status = excluded.status,"
                " updated_at = excluded.updated_at, status_reason = CASE WHEN grants.status = excluded.status"
                " THEN grants.status_reason END",
                (grant.id, json.dumps(_dump(new)), new.status, now, now),
            )
            if existing is not None and existing["status"] != new.status:
                _clear_notices(conn, grant.id)  # a reason published for the old status no longer applies
            detail = {"changes": list(changes), "grant": _dump(new)} if existing else {"grant": _dump(new)}
            work.record(AuditEvent(actor, f"grant.{outcome}", grant.id, detail))
            if dry_run:  # every check above ran; roll it all back (the audit entry too)
                raise _DryRun(ApplyResult(grant.id, outcome, changes))
        self._grant_changed(grant.id)
        return ApplyResult(grant.id, outcome, changes)

    def set_status(self, grant_id: str, status: str, actor: str, reason: str = "") -> Grant:
        with self.db.work() as work:
            conn = work.conn
            row = conn.execute("SELECT body, status FROM grants WHERE id = ?", (grant_id,)).fetchone()
            if row is None:
                raise NotFound(f"no grant {grant_id} in force", code="unknown_grant")
            if row["status"] == "revoked":
                raise Conflict(f"grant {grant_id} was revoked; revocation is final", code="grant_revoked")
            grant = Grant.model_validate(json.loads(row["body"])).model_copy(update={"status": status})
            conn.execute(
                "UPDATE grants SET body = ?, status = ?, updated_at = ?, status_reason = ? WHERE id = ?",
                (json.dumps(_dump(grant)), status, _now(), reason or None, grant_id),
            )
            # ``status_reason`` is private (audit log, auditors): it is never published. What the
            # register shows is a notice: one published explicitly, or a revocation's reason.
            _clear_notices(conn, grant_id)
            if status == "revoked" and reason.strip():
                add_notice(conn, grant_id, "revoked", reason.strip(), actor)
            action = {"active": "resumed", "suspended": "suspended", "revoked": "revoked"}[status]
            work.record(AuditEvent(actor, f"grant.{action}", grant_id,
                                   {"reason": reason, "from": row["status"], "to": status}))
        self._grant_changed(grant_id)
        return grant

    def _get_row(self, grant_id: str) -> Any:
        rows = self.db.read("SELECT * FROM grants WHERE id = ?", (grant_id,))
        return rows[0] if rows else None

    def grant(self, grant_id: str) -> Grant:
        row = self._get_row(grant_id)
        if row is None:
            raise NotFound(f"no grant {grant_id}", code="unknown_grant")
        return Grant.model_validate(json.loads(row["body"]))

    def grants(self) -> list[Grant]:
        return [
            Grant.model_validate(json.loads(r["body"]))
            for r in self.db.read("SELECT body FROM grants ORDER BY id")
        ]

    def grant_records(self) -> list[GrantRecord]:
        """Grants with when they were applied and last changed (for the register and listings)."""
        return [
            GrantRecord(Grant.model_validate(json.loads(r["body"])), r["status"], r["applied_at"], r["updated_at"],
                        r["status_reason"])
            for r in self.db.read("SELECT * FROM grants ORDER BY applied_at, id")
        ]

    def grants_for(self, user: str) -> list[Grant]:
        return [g for g in self.grants() if user in g.members]


def apply_policies(store: PolicyStore, policies: Any, actor: str) -> list[ApplyResult]:
    """Apply a loaded policies directory: catalog first, then roles, then grants."""
    results = [store.apply_dataset(ds, actor) for ds in policies.datasets.values()]
    store.apply_roles(policies.roles, actor)
    for grant in policies.grants.values():
        try:
            results.append(store.apply_grant(grant, actor))
        except Conflict as exc:
            if exc.code != "grant_revoked":
                raise
            results.append(ApplyResult(grant.id, "kept_revoked", ()))
        except PolicyError:
            raise
    return results
