"""Embedded-mode API tokens and admin credentials, stored only as SHA-256 hashes.

Each row carries an HMAC under the audit MAC key (kept outside the state directory) over its hash,
user, scope and whether it is revoked; a lookup refuses a row whose MAC does not verify. Someone who
can write the state directory but cannot read the keys can neither plant a token, move one to
another user, nor un-revoke one. Nor can they restore an older copy of a revoked row (its MAC was
valid once): a lookup also refuses a token that any ``token.revoked`` entry of the log names
(:mod:`sandbox.state.follow` reads and checks the log's new entries as it grows). Rows from before the MAC
are MACed on open only when their ``token.created`` entry verifies under the keyring; otherwise
they stay refused.

Scope ``api`` tokens authenticate gateway calls (embedded mode); scope ``admin`` tokens are the
admin credential the CLI's mutating commands require. Creating and revoking either writes an
audit event (with the token's hash, never the token), so the table can be rebuilt from the log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
import sqlite3
from dataclasses import dataclass

from sandbox.state.chain import AuditEvent, entry_hash
from sandbox.state.db import StateDB, add_column, register_keyed_migration, register_migration, register_schema
from sandbox.state.follow import LogFollower
from sandbox.state.keys import MacKey, MacKeyring

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
    add_column(conn, "tokens", "key_id", "TEXT")
    add_column(conn, "tokens", "mac", "TEXT")


def row_message(digest: str, user: str, scope: str, revoked: bool) -> str:
    return f"token:{digest}:{user}:{scope}:{'revoked' if revoked else 'live'}"


def _verified_events(conn: sqlite3.Connection, keys: dict[str, MacKey], action: str) -> list[sqlite3.Row]:
    """Entries of ``action`` whose hash matches their content and whose MAC verifies."""
    out = []
    for r in conn.execute("SELECT * FROM audit WHERE action = ? ORDER BY seq", (action,)).fetchall():
        digest = entry_hash(r["prev_hash"], r["seq"], r["ts"], r["actor"], r["action"], r["grant_id"], r["detail"])
        key = keys.get(r["key_id"] or "")
        if digest == r["hash"] and key is not None and key.check(digest, r["mac"]):
            out.append(r)
    return out


@register_keyed_migration
def _mac_legacy_rows(conn: sqlite3.Connection, keyring: MacKeyring) -> None:
    legacy = conn.execute("SELECT token_hash, user, scope, revoked_at FROM tokens WHERE mac IS NULL").fetchall()
    if not legacy:
        return
    keys = keyring.all()
    created: dict[str, dict[str, str]] = {}
    for r in _verified_events(conn, keys, "token.created"):
        d = json.loads(r["detail"])
        created[str(d.get("token_sha256"))] = {"user": d.get("user"), "scope": d.get("scope", "api")}
    revoked: dict[str, str] = {}
    for r in _verified_events(conn, keys, "token.revoked"):
        for digest in json.loads(r["detail"]).get("token_sha256") or []:
            revoked.setdefault(str(digest), r["ts"])
    key = keyring.current()
    for digest, user, scope, revoked_at in legacy:
        event = created.get(digest)
        if event is None or event != {"user": user, "scope": scope}:
            continue  # no verified token.created for this row: it stays un-MACed, hence refused
        when = revoked.get(digest) or revoked_at
        conn.execute("UPDATE tokens SET revoked_at = ?, key_id = ?, mac = ? WHERE token_hash = ?",
                     (when, key.id, key.mac(row_message(digest, user, scope, when is not None)), digest))


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
        self._keys: dict[str, MacKey] = {}
        self.follower = LogFollower(db)  # the log as this process has checked it, and what it revoked

    def revoked_in_log(self, digest: str) -> bool:
        """Whether an entry of the log revoked this token hash (or the log cannot be trusted). A revoked
        row restored from an older copy of the state still carries a valid MAC; the log remembers."""
        return self.follower.revoked(digest)

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
            mac = work.key.mac(row_message(digest, user, scope, False))
            work.execute("INSERT INTO tokens (token_hash, user, created_at, scope, key_id, mac)"
                         " VALUES (?, ?, ?, ?, ?, ?)", (digest, user, _now(), scope, work.key.id, mac))
            work.record(AuditEvent(actor, "token.created", None,
                                   {"user": user, "scope": scope, "token_sha256": digest}))

    def user_for(self, token: str, scope: str = "api") -> str | None:
        if len(token) > 256:
            return None
        digest = token_hash(token)
        rows = self.db.read(
            "SELECT user, key_id, mac FROM tokens WHERE token_hash = ? AND revoked_at IS NULL AND scope = ?",
            (digest, scope),
        )
        if not rows or not self._row_ok(digest, rows[0]["user"], scope, False, rows[0]["key_id"], rows[0]["mac"]):
            return None
        if self.revoked_in_log(digest):
            return None
        return str(rows[0]["user"])

    def _key(self, key_id: str | None) -> MacKey | None:
        if not key_id:
            return None
        if key_id not in self._keys:
            self._keys = self.db.keyring.all()
        return self._keys.get(key_id)

    def _row_ok(self, digest: str, user: str, scope: str, revoked: bool, key_id: str | None,
                mac: str | None) -> bool:
        """Whether a row's MAC verifies under the keyring: a row the gateway did not write does not."""
        key = self._key(key_id)
        return key is not None and key.check(row_message(digest, user, scope, revoked), mac)

    def admin_for(self, token: str) -> str | None:
        return self.user_for(token, scope="admin")

    def known(self, token: str) -> bool:
        """Whether this token was ever issued: a row, or a ``token.created`` entry of the log that
        verifies (deleting a revoked credential's row does not make it new again)."""
        digest = token_hash(token)
        if self.db.read("SELECT 1 FROM tokens WHERE token_hash = ?", (digest,)):
            return True
        keys = self.db.keyring.all()
        conn = self.db.conn
        for r in _verified_events(conn, keys, "token.created"):
            if '"token_sha256":"' + digest + '"' in r["detail"]:
                return True
        return False

    def has_admin(self) -> bool:
        """Whether a live admin credential the gateway wrote exists (a planted row does not count)."""
        rows = self.db.read("SELECT token_hash, user, key_id, mac FROM tokens"
                            " WHERE scope = 'admin' AND revoked_at IS NULL")
        return any(self._row_ok(r["token_hash"], r["user"], "admin", False, r["key_id"], r["mac"])
                   and not self.revoked_in_log(r["token_hash"]) for r in rows)

    def revoke_user(self, user: str, actor: str = "gateway", scope: str | None = None) -> int:
        """Revoke every live token of ``user`` (of one scope, or all), audited as ``token.revoked``."""
        with self.db.work() as work:
            sql = "SELECT token_hash FROM tokens WHERE user = ? AND revoked_at IS NULL"
            params: tuple[str, ...] = (user,)
            if scope is not None:
                sql += " AND scope = ?"
                params = (user, scope)
            rows = work.execute(sql.replace("SELECT token_hash", "SELECT token_hash, scope"), params).fetchall()
            hashes = [r["token_hash"] for r in rows]
            if not hashes:
                return 0
            now = _now()
            for r in rows:
                work.execute("UPDATE tokens SET revoked_at = ?, key_id = ?, mac = ? WHERE token_hash = ?",
                             (now, work.key.id, work.key.mac(row_message(r["token_hash"], user, r["scope"], True)),
                              r["token_hash"]))
            work.record(AuditEvent(actor, "token.revoked", None, {"user": user, "token_sha256": hashes}))
        return len(hashes)

    def records(self) -> list[TokenRecord]:
        return [
            TokenRecord(r["token_hash"], r["user"], r["scope"], r["created_at"], r["revoked_at"])
            for r in self.db.read("SELECT * FROM tokens ORDER BY created_at, token_hash")
        ]
