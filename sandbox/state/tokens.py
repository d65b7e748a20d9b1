"""Embedded-mode API tokens, stored only as SHA-256 hashes."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sandbox.state.db import StateDB, register_schema

register_schema(
    """
    CREATE TABLE IF NOT EXISTS tokens (
        token_hash TEXT PRIMARY KEY,
        user TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    )
    """
)

PREFIX = "sbx_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    def __init__(self, db: StateDB) -> None:
        self.db = db

    def create(self, user: str) -> str:
        token = PREFIX + secrets.token_urlsafe(32)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO tokens (token_hash, user, created_at) VALUES (?, ?, ?)",
                (_hash(token), user, now),
            )
        return token

    def user_for(self, token: str) -> str | None:
        if len(token) > 256:
            return None
        rows = self.db.read(
            "SELECT user FROM tokens WHERE token_hash = ? AND revoked_at IS NULL", (_hash(token),)
        )
        return rows[0]["user"] if rows else None

    def revoke_user(self, user: str) -> int:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        with self.db.write() as conn:
            cur = conn.execute(
                "UPDATE tokens SET revoked_at = ? WHERE user = ? AND revoked_at IS NULL", (now, user)
            )
        return cur.rowcount
