"""Embedded-mode API tokens and admin credentials, stored only as SHA-256 hashes.

Scope ``api`` tokens authenticate gateway calls (embedded mode); scope ``admin`` tokens are the
admin credential the CLI's mutating commands require. Creating and revoking either writes an
audit event (with the token's hash, never the token), so the table can be rebuilt from the log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import sqlite3
from dataclasses import dataclass

from sandbox.state.chain import AuditEvent
from sandbox.state.db import StateDB, add_column, register_migration, register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS tokens (
        token_hash TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT,
        scope TEXT NOT NULL DEFAULT 'api'
    )
    """
)


@register_migration
def _scope_column(conn: sqlite3.Connection) -> None:
    add_column(conn, "tokens", "scope", "TEXT NOT NULL DEFAULT 'api'")


PREFIX = "sbx_"
ADMIN_PREFIX = "sbxadm_"
SCOPES = ("api", "admin")


@dataclass(frozen=True)
class TokenRecord:
    token_hash: str
    user: str
    scope: str
    created_at: str
    revoked_at: str | None


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class TokenStore:
    def __init__(self, db: StateDB) -> None:
        self.db = db

    def create(self, user: str, actor: str = "gateway", scope: str = "api") -> str:
        """A new token for ``user`` (returned once; only its hash is stored), audited as ``token.created``."""
        token = (ADMIN_PREFIX if scope == "admin" else PREFIX) + secrets.token_urlsafe(32)
        self.register(token, user, actor, scope)
        return token

    def register(self, token: str, user: str, actor: str, scope: str = "api") -> None:
        if scope not in SCOPES:
            raise ValueError(f"unknown token scope {scope}")
        digest = token_hash(token)
        with self.db.work() as work:
            work.execute("INSERT INTO tokens (token_hash, user, created_at, scope) VALUES (?, ?, ?, ?)",
                         (digest, user, _now(), scope))
            work.record(AuditEvent(actor, "token.created", None,
                                   {"user": user, "scope": scope, "token_sha256": digest}))

    def user_for(self, token: str, scope: str = "api") -> str | None:
        if len(token) > 256:
            return None
        rows = self.db.read(
            "SELECT user FROM tokens WHERE token_hash = ? AND revoked_at IS NULL AND scope = ?",
            (token_hash(token), scope),
        )
        return rows[0]["user"] if rows else None

    def admin_for(self, token: str) -> str | None:
        return self.user_for(token, scope="admin")

    def known(self, token: str) -> bool:
        return bool(self.db.read("SELECT 1 FROM tokens WHERE token_hash = ?", (token_hash(token),)))

    def has_admin(self) -> bool:
        return bool(self.db.read("SELECT 1 FROM tokens WHERE scope = 'admin' AND revoked_at IS NULL LIMIT 1"))

    def revoke_user(self, user: str, actor: str = "gateway", scope: str | None = None) -> int:
        """Revoke every live token of ``user`` (of one scope, or all), audited as ``token.revoked``."""
        with self.db.work() as work:
            sql = "SELECT token_hash FROM tokens WHERE user = ? AND revoked_at IS NULL"
            params: tuple[str, ...] = (user,)
            if scope is not None:
                sql += " AND scope = ?"
                params = (user, scope)
            hashes = [r["token_hash"] for r in work.execute(sql, params).fetchall()]
            if not hashes:
                return 0
            now = _now()
            for digest in hashes:
                work.execute("UPDATE tokens SET revoked_at = ? WHERE token_hash = ?", (now, digest))
            work.record(AuditEvent(actor, "token.revoked", None, {"user": user, "token_sha256": hashes}))
        return len(hashes)

    def records(self) -> list[TokenRecord]:
        return [
            TokenRecord(r["token_hash"], r["user"], r["scope"], r["created_at"], r["revoked_at"])
            for r in self.db.read("SELECT * FROM tokens ORDER BY created_at, token_hash")
        ]
